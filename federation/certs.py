"""A federation's certificates and site keys, written with the `cryptography` package.

Three things a deployment needs, and nothing else:

- a certificate authority (``ca.crt``, ``ca.key``) that the sites trust;
- the coordinator's TLS certificate (``coordinator.pem``, ``coordinator.key``), signed
  by that CA for the names and addresses the sites dial;
- one key pair per site (``<site>.key``, ``<site>.pub``) for Flower's SuperNode
  authentication: ECDSA P-384 keys in OpenSSH format, what ``ssh-keygen -t ecdsa -b 384``
  writes and what ``flower-supernode --auth-supernode-private-key`` and ``flwr supernode
  register`` read.

Every file is created, never replaced (``O_EXCL``): a key that exists is a key someone
may already rely on. Private keys are created with mode 0600 in the same system call that
creates them, so they are never readable by others, not even for a moment. Nothing
secret is returned as text or printed.

This module knows nothing about Flower or the ML code; tests use it for throwaway CAs.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_CERT, CA_KEY = "ca.crt", "ca.key"
COORDINATOR_CERT, COORDINATOR_KEY = "coordinator.pem", "coordinator.key"
SITE_PUBLIC_SUFFIX = ".pub"

PRIVATE_MODE, PUBLIC_MODE = 0o600, 0o644
_DNS_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class CertsError(ValueError):
    """Bad input for a certificate or key (a name, a folder); the message says which."""


class KeyExistsError(CertsError):
    """A file would be overwritten; the message names it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        super().__init__(
            f"{path} already exists and is never overwritten: move it away first if you "
            "really mean to replace it (whoever trusts it must then get the new one)"
        )


@dataclass(frozen=True)
class Issued:
    """Paths of a certificate (or public key) and its private key."""

    cert: Path
    key: Path


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` with ``mode`` and write ``data``; refuse if it exists."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise KeyExistsError(path) from None
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _refuse_existing(paths: Iterable[Path]) -> None:
    """Check every target first, so a refusal leaves no half-written set behind."""
    for path in paths:
        if path.exists() or path.is_symlink():
            raise KeyExistsError(path)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def subject_alt_names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    """DNS names and IP addresses for a certificate; a malformed one is refused."""
    if not hosts:
        raise CertsError("name at least one --host: the DNS name or IP address sites dial")
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
            continue
        except ValueError:
            pass
        labels = host.rstrip(".").split(".")
        if host.startswith("*."):  # a wildcard is allowed as the leftmost label only
            labels = labels[1:]
        if not labels or not all(_DNS_LABEL.fullmatch(label) for label in labels):
            raise CertsError(f"--host {host!r} is neither an IP address nor a valid DNS name")
        names.append(x509.DNSName(host.rstrip(".").lower()))
    return names


def make_ca_certificate(
    common_name: str, *, days: int
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed CA that may sign end-entity certificates only (path length 0)."""
    key = ec.generate_private_key(ec.SECP384R1())
    now = dt.datetime.now(dt.UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))  # tolerate small clock skew
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )  # fmt: skip
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA384())
    )
    return cert, key


def make_server_certificate(
    hosts: Sequence[str],
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    *,
    days: int,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A TLS server certificate for ``hosts`` (its subject alternative names)."""
    names = subject_alt_names(hosts)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    not_after = min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA384())
    )
    return cert, key


def init_ca(
    folder: Path, *, common_name: str = "umedpt-fl federation CA", days: int = 3650
) -> Issued:
    """Write ``ca.crt`` and ``ca.key`` (0600) into ``folder`` (created 0700 if new)."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    cert_path, key_path = folder / CA_CERT, folder / CA_KEY
    _refuse_existing([key_path, cert_path])
    cert, key = make_ca_certificate(common_name, days=days)
    _write_new(key_path, _private_pem(key), PRIVATE_MODE)
    _write_new(cert_path, _cert_pem(cert), PUBLIC_MODE)
    return Issued(cert_path, key_path)


def load_ca(folder: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The CA written by :func:`init_ca` in ``folder``."""
    cert_path, key_path = folder / CA_CERT, folder / CA_KEY
    for path in (cert_path, key_path):
        if not path.is_file():
            raise CertsError(
                f"{path} not found: create the CA first with `umedpt-fl certs init {folder}`"
            )
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertsError(f"{key_path} is not an EC private key")
    if key.public_key().public_numbers() != cert.public_key().public_numbers():  # type: ignore[union-attr]
        raise CertsError(f"{key_path} is not the key of {cert_path}")
    return cert, key


def issue_coordinator_cert(folder: Path, hosts: Sequence[str], *, days: int = 825) -> Issued:
    """Write ``coordinator.pem`` and ``coordinator.key`` (0600), signed by the CA in ``folder``."""
    names = subject_alt_names(hosts)  # a bad --host is named before anything is read
    del names
    ca_cert, ca_key = load_ca(folder)
    cert_path, key_path = folder / COORDINATOR_CERT, folder / COORDINATOR_KEY
    _refuse_existing([key_path, cert_path])
    cert, key = make_server_certificate(hosts, ca_cert, ca_key, days=days)
    _write_new(key_path, _private_pem(key), PRIVATE_MODE)
    _write_new(cert_path, _cert_pem(cert), PUBLIC_MODE)
    return Issued(cert_path, key_path)


def create_site_keys(folder: Path, name: str) -> Issued:
    """Write ``<name>.key`` (0600) and ``<name>.pub``: a site's SuperNode key pair.

    ECDSA on P-384 in OpenSSH format, as Flower's SuperNode and ``flwr supernode
    register`` expect. The private key stays at the site; the coordinator registers the
    public one.
    """
    if not _SITE_NAME.fullmatch(name):
        raise CertsError(
            f"site name {name!r}: use letters, digits, '.', '_' or '-' (at most 64), "
            "starting with a letter or digit"
        )
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    key_path, public_path = folder / f"{name}.key", folder / f"{name}{SITE_PUBLIC_SUFFIX}"
    _refuse_existing([key_path, public_path])
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    _write_new(key_path, private, PRIVATE_MODE)
    _write_new(public_path, public + f" {name}\n".encode(), PUBLIC_MODE)
    return Issued(public_path, key_path)


def loopback_tls(folder: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a certificate for 127.0.0.1/localhost: (ca.crt, cert, key).

    For a process that only listens on loopback: its clients trust this CA alone, the
    CA's key is never written (nothing else can ever be signed by it), and the files go
    into ``folder``, which must be new or empty of them.
    """
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca_cert, ca_key = make_ca_certificate("umedpt-fl loopback CA", days=30)
    cert, key = make_server_certificate(["127.0.0.1", "localhost", "::1"], ca_cert, ca_key, days=30)
    paths = folder / CA_CERT, folder / "loopback.pem", folder / "loopback.key"
    _refuse_existing(paths)
    _write_new(paths[2], _private_pem(key), PRIVATE_MODE)
    _write_new(paths[1], _cert_pem(cert), PUBLIC_MODE)
    _write_new(paths[0], _cert_pem(ca_cert), PUBLIC_MODE)
    return paths
