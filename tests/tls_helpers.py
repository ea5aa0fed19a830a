"""Throwaway CAs and certificates for the TLS tests (trustme; nothing is committed).

pki = Pki(tmp_path)
api = pki.server("api.example.test")                 # Files(cert, key) on disk
client = pki.client("alice", uri="spiffe://x/alice")  # a client certificate
ctx = pki.client_context(client)                       # an ssl context trusting the CA
"""

from __future__ import annotations

import datetime
import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Files:
    cert: Path
    key: Path

    def pair(self) -> dict[str, str]:
        return {"cert": str(self.cert), "key": str(self.key)}


class Pki:
    def __init__(self, folder: Path, name: str = "ca") -> None:
        self.folder = folder
        self.name = name
        self.ca = trustme.CA()
        self.ca_file = folder / f"{name}.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self.count = 0

    def _files(self, cert: trustme.LeafCert, stem: str) -> Files:
        self.count += 1
        files = Files(
            self.folder / f"{self.name}-{stem}-{self.count}.pem",
            self.folder / f"{self.name}-{stem}-{self.count}-key.pem",
        )
        cert.private_key_pem.write_to_path(str(files.key))
        files.cert.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
        return files

    def server(self, *names: str, days: int = 365) -> Files:
        not_after = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=days)
        return self._files(self.ca.issue_cert(*names, not_after=not_after), names[0])

    def client(self, common_name: str, uri: str | None = None, expired: bool = False) -> Files:
        """A client certificate (clientAuth) with a URI SAN and a DNS SAN, signed by the CA."""
        now = datetime.datetime.now(datetime.UTC)
        key = ec.generate_private_key(ec.SECP256R1())
        issuer = x509.load_pem_x509_certificate(self.ca.cert_pem.bytes())
        ca_key = serialization.load_pem_private_key(self.ca.private_key_pem.bytes(), None)
        sans: list[x509.GeneralName] = [x509.DNSName(f"{common_name}.clients.test")]
        if uri is not None:
            sans.insert(0, x509.UniformResourceIdentifier(uri))
        start = now - datetime.timedelta(days=30 if expired else 1)
        end = now - datetime.timedelta(days=1) if expired else now + datetime.timedelta(days=30)
        cert = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name(
                    [
                        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example, Inc."),
                        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                    ]
                )
            )
            .issuer_name(issuer.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
        )
        self.count += 1
        files = Files(
            self.folder / f"{self.name}-client-{self.count}.pem",
            self.folder / f"{self.name}-client-{self.count}-key.pem",
        )
        files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        files.key.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return files

    def client_context(self, client: Files | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        if client is not None:
            context.load_cert_chain(str(client.cert), str(client.key))
        return context


def peer_names(sslobj: ssl.SSLObject | ssl.SSLSocket) -> list[str]:
    """The DNS names of the certificate the server presented."""
    cert = x509.load_der_x509_certificate(sslobj.getpeercert(binary_form=True) or b"")
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return san.get_values_for_type(x509.DNSName)
