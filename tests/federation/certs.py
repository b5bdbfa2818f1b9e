"""A throwaway certificate authority and server certificate for loopback TLS tests.

Built with :mod:`federation.certs`, the code behind `umedpt-fl certs`; only the file
names differ (several CAs share one temporary folder here).
"""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from federation.certs import make_ca_certificate, make_server_certificate


def make_ca(folder: Path, name: str = "test-ca") -> tuple[Path, ec.EllipticCurvePrivateKey]:
    """A self-signed CA certificate (``<name>.crt``) and its key."""
    cert, key = make_ca_certificate(name, days=1)
    path = folder / f"{name}.crt"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path, key


def make_server_cert(
    folder: Path, ca_cert: Path, ca_key: ec.EllipticCurvePrivateKey
) -> tuple[Path, Path]:
    """``server.pem`` and ``server.key`` for localhost and 127.0.0.1, signed by the CA."""
    issuer = x509.load_pem_x509_certificate(ca_cert.read_bytes())
    cert, key = make_server_certificate(["localhost", "127.0.0.1"], issuer, ca_key, days=1)
    cert_path, key_path = folder / "server.pem", folder / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path
