"""`umedpt-fl certs`: file modes, no overwrite, names in the certificate, a chain that verifies."""

from __future__ import annotations

import ipaddress
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from typer.testing import CliRunner

from federation import certs
from umedpt_fl.cli import app


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def run(*args: str):
    return CliRunner().invoke(app, list(args))


def test_ca_and_coordinator_cert_chain_and_name_the_hosts(tmp_path) -> None:
    folder = tmp_path / "pki"
    assert run("certs", "init", str(folder)).exit_code == 0
    result = run("certs", "coordinator", str(folder), "--host", "fed.example.org",
                 "--host", "10.0.0.7", "--host", "::1")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert mode(folder) == 0o700
    assert mode(folder / "ca.key") == 0o600 and mode(folder / "coordinator.key") == 0o600
    assert mode(folder / "ca.crt") == 0o644 and mode(folder / "coordinator.pem") == 0o644
    assert "PRIVATE" not in result.output

    ca = x509.load_pem_x509_certificate((folder / "ca.crt").read_bytes())
    cert = x509.load_pem_x509_certificate((folder / "coordinator.pem").read_bytes())
    cert.verify_directly_issued_by(ca)  # raises if the signature or issuer is wrong
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["fed.example.org"]
    assert names.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.0.0.7"), ipaddress.ip_address("::1"),
    ]  # fmt: skip
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_existing_keys_are_never_overwritten(tmp_path) -> None:
    certs.init_ca(tmp_path)
    before = (tmp_path / "ca.key").read_bytes()
    result = run("certs", "init", str(tmp_path))
    assert result.exit_code == 2
    assert "ca.key already exists" in " ".join(result.output.split())
    assert (tmp_path / "ca.key").read_bytes() == before

    (tmp_path / "coordinator.key").write_text("someone's key")
    result = run("certs", "coordinator", str(tmp_path), "--host", "localhost")
    assert result.exit_code == 2 and "coordinator.key" in result.output
    assert not (tmp_path / "coordinator.pem").exists()  # nothing half-written


def test_bad_hosts_and_a_missing_ca_are_named(tmp_path) -> None:
    result = run("certs", "coordinator", str(tmp_path), "--host", "localhost")
    assert result.exit_code == 2 and "ca.crt not found" in " ".join(result.output.split())
    certs.init_ca(tmp_path)
    result = run("certs", "coordinator", str(tmp_path), "--host", "bad host!")
    assert result.exit_code == 2 and "'bad host!'" in result.output
    result = run("certs", "site", str(tmp_path), "site-a\n")  # no newline in a file name
    assert result.exit_code == 2 and not list(tmp_path.glob("site-a*"))


def test_site_keys_are_openssh_ecdsa_for_flower(tmp_path) -> None:
    result = run("certs", "site", str(tmp_path), "hospital-a")
    assert result.exit_code == 0, result.output
    private, public = tmp_path / "hospital-a.key", tmp_path / "hospital-a.pub"
    assert mode(private) == 0o600 and mode(public) == 0o644
    assert "OPENSSH PRIVATE KEY" not in result.output
    key = serialization.load_ssh_private_key(private.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
    loaded = serialization.load_ssh_public_key(public.read_bytes())
    assert loaded.public_numbers() == key.public_key().public_numbers()
    assert public.read_text().split()[2] == "hospital-a"  # the name `sites register` uses

    assert run("certs", "site", str(tmp_path), "hospital-a").exit_code == 2
    assert run("certs", "site", str(tmp_path), "../escape").exit_code == 2


def test_loopback_tls_trusts_nothing_else(tmp_path) -> None:
    ca, cert, key = certs.loopback_tls(tmp_path / "lb")
    assert mode(key) == 0o600 and not (tmp_path / "lb" / "ca.key").exists()
    leaf = x509.load_pem_x509_certificate(cert.read_bytes())
    leaf.verify_directly_issued_by(x509.load_pem_x509_certificate(ca.read_bytes()))
    with pytest.raises(certs.KeyExistsError):
        certs.loopback_tls(tmp_path / "lb")


def test_registering_a_file_that_is_no_public_key_names_it(tmp_path) -> None:
    not_a_key = tmp_path / "site.toml"
    not_a_key.write_text('# a site file\nname = "a"\n')
    (tmp_path / "fed").mkdir()
    result = run("sites", "register", str(not_a_key), "--out", str(tmp_path / "fed"))
    assert result.exit_code == 2
    assert "is not an OpenSSH public key" in " ".join(result.output.split())
