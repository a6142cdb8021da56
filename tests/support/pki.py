"""Throw-away certificates for TLS tests: a CA, a server certificate for localhost/127.0.0.1, a
client certificate signed by the CA, and a second ("rogue") CA with a client certificate of its own.

Made with the `cryptography` package when it is installed, else with the openssl CLI (as the client's
unit tests do); skips the test when neither is available.
"""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

NAMES = ("ca", "server", "client", "rogue-ca", "rogue-client")


@dataclass(frozen=True)
class Pki:
    """PEM files in `directory`: NAME.pem (certificate) and NAME.key (private key) for each of NAMES."""

    directory: Path

    def cert(self, name: str) -> Path:
        return self.directory / f"{name}.pem"

    def key(self, name: str) -> Path:
        return self.directory / f"{name}.key"

    def read(self, path: Path) -> bytes:
        return path.read_bytes()

    @property
    def ca(self) -> bytes:
        return self.cert("ca").read_bytes()


def make_pki(directory: Path) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    try:
        import cryptography  # noqa: F401
    except ImportError:
        _with_openssl(directory)
    else:
        _with_cryptography(directory)
    return Pki(directory)


def _with_cryptography(directory: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def name(common_name: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

    def write(stem: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        (directory / f"{stem}.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        (directory / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    def builder(subject: str, issuer: x509.Name, key: ec.EllipticCurvePrivateKey) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(name(subject))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
        )

    for prefix in ("", "rogue-"):
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_cert = (
            builder(f"bertserve test {prefix}CA", name(f"bertserve test {prefix}CA"), ca_key)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256())
        )
        write(f"{prefix}ca", ca_key, ca_cert)
        client_key = ec.generate_private_key(ec.SECP256R1())
        write(
            f"{prefix}client",
            client_key,
            builder(f"bertserve test {prefix}client", ca_cert.subject, client_key).sign(
                ca_key, hashes.SHA256()
            ),
        )
        if not prefix:
            server_key = ec.generate_private_key(ec.SECP256R1())
            san = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            server_cert = (
                builder("localhost", ca_cert.subject, server_key)
                .add_extension(x509.SubjectAlternativeName(san), critical=False)
                .sign(ca_key, hashes.SHA256())
            )
            write("server", server_key, server_cert)


def _with_openssl(directory: Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("neither the cryptography package nor the openssl CLI is available")

    def sh(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=directory, check=True, capture_output=True)

    new_key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    (directory / "server.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for prefix in ("", "rogue-"):
        ca = f"{prefix}ca"
        sh(
            "req",
            "-x509",
            *new_key,
            "-days",
            "1",
            "-subj",
            f"/CN=bertserve test {ca}",
            "-keyout",
            f"{ca}.key",
            "-out",
            f"{ca}.pem",
        )
        leaves = [f"{prefix}client"] + ([] if prefix else ["server"])
        for leaf in leaves:
            subject = "/CN=localhost" if leaf == "server" else f"/CN=bertserve test {leaf}"
            sh("req", *new_key, "-subj", subject, "-keyout", f"{leaf}.key", "-out", f"{leaf}.csr")
            extfile = ["-extfile", "server.ext"] if leaf == "server" else []
            sh(
                "x509",
                "-req",
                "-in",
                f"{leaf}.csr",
                "-CA",
                f"{ca}.pem",
                "-CAkey",
                f"{ca}.key",
                "-CAcreateserial",
                "-out",
                f"{leaf}.pem",
                "-days",
                "1",
                *extfile,
            )
