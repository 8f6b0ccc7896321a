"""TLS and node-authentication material for a deployment, made with `cryptography`.

    DIR/ca.pem, ca.key          a certificate authority (self-signed)
    DIR/server.pem, server.key  the SuperLink's certificate, signed by the CA, with the
                                server's names and addresses (and 127.0.0.1, where the
                                server command reaches its own Control API) as subject
                                alternative names
    DIR/client-<i>.key, .pub    one EC key pair per SuperNode (OpenSSH format, as Flower's
                                node authentication reads them); the server registers the .pub

Copy ca.pem and client-<i>.key to client machine i; ca.key never leaves the server.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

LOOPBACK = "127.0.0.1"
# Flower accepts NIST curves for node keys; SECP384R1 is what its own examples use.
VALID_DAYS = 365


@dataclass(frozen=True)
class CertPaths:
    """Where the files of one certificate directory are."""

    root: Path

    @property
    def ca(self) -> Path:
        return self.root / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca.key"

    @property
    def server(self) -> Path:
        return self.root / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.root / "server.key"

    def client_key(self, i: int) -> Path:
        return self.root / f"client-{i}.key"

    def client_pub(self, i: int) -> Path:
        return self.root / f"client-{i}.pub"

    def client_pubs(self) -> list[Path]:
        return sorted(self.root.glob("client-*.pub"), key=lambda p: int(p.stem.split("-")[1]))


def parse_server_names(text: str) -> list[str]:
    """'host,10.0.0.5' -> ['host', '10.0.0.5']; ValueError for an empty list or a name
    that is neither a DNS name nor an IP address."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ValueError("--server-names needs at least one host name or IP address")
    for name in names:
        if not (is_ip(name) or is_dns_name(name)):
            raise ValueError(f"--server-names: {name!r} is neither a host name nor an IP address")
    return names


def is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def is_dns_name(name: str) -> bool:
    labels = name.rstrip(".").split(".")
    return len(name) <= 253 and all(
        0 < len(label) <= 63
        and label.replace("-", "").isalnum()
        and label.isascii()
        and not label.startswith("-")
        for label in labels
    )


def make_certs(out: Path, server_names: list[str], clients: int, force: bool = False) -> CertPaths:
    """Write a CA, a server certificate for `server_names` and `clients` node key pairs.
    Refuses (ValueError) to overwrite existing material unless `force`."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

    if clients < 1:
        raise ValueError(f"--clients must be >= 1 (got {clients})")
    paths = CertPaths(Path(out))
    if paths.ca.exists() and not force:
        raise ValueError(f"{paths.ca} exists; use another --out or --force to replace it")
    paths.root.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca = build_cert(x509, "distlab deployment CA", ca_key.public_key(), ca_key, None, is_ca=True)
    server_key = ec.generate_private_key(ec.SECP384R1())
    server = build_cert(
        x509, server_names[0], server_key.public_key(), ca_key, ca, sans=with_loopback(server_names)
    )
    write_private(paths.ca_key, pem_key(ca_key))
    write_private(paths.server_key, pem_key(server_key))
    paths.ca.write_bytes(pem_cert(ca))
    paths.server.write_bytes(pem_cert(server))
    for i in range(clients):
        write_node_keys(paths, i)
    return paths


def with_loopback(names: list[str]) -> list[str]:
    """The server's names and LOOPBACK: the server command reaches its own Control API
    (which listens on loopback only) over TLS with this certificate."""
    return names if LOOPBACK in names else [*names, LOOPBACK]


def write_node_keys(paths: CertPaths, i: int) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    write_private(paths.client_key(i), private)
    paths.client_pub(i).write_bytes(public + f" distlab-client-{i}\n".encode())


def build_cert(x509, common_name, public_key, signer, issuer_cert, is_ca=False, sans=()):
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_cert.subject if issuer_cert is not None else name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
    )
    if sans:
        alt = [
            x509.IPAddress(ipaddress.ip_address(n)) if is_ip(n) else x509.DNSName(n) for n in sans
        ]
        builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
    if is_ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
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
        )
    return builder.sign(signer, hashes.SHA256())


def pem_key(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def pem_cert(cert) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return cert.public_bytes(serialization.Encoding.PEM)


def write_private(path: Path, data: bytes) -> None:
    """A private key, readable by its owner only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


# --- checks before anything starts --------------------------------------------------------------


def check_server_certs(root: Path) -> CertPaths:
    """The server's material: CA, server certificate and key exist, parse, and the server
    certificate is signed by the CA and matches its key. ValueError names the file."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    # Absolute: Flower's processes and its connection file are not read from this directory.
    paths = CertPaths(Path(root).absolute())
    if not paths.root.is_dir():
        raise ValueError(f"--certs {root}: no such directory (make one with distlab deploy certs)")
    for path in (paths.ca, paths.server, paths.server_key):
        if not path.is_file():
            raise ValueError(f"--certs {root}: {path.name} is missing")
    ca = load_cert(x509, paths.ca)
    server = load_cert(x509, paths.server)
    try:
        key = serialization.load_pem_private_key(paths.server_key.read_bytes(), None)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{paths.server_key}: not a PEM private key ({exc})") from None
    if key.public_key().public_numbers() != server.public_key().public_numbers():
        raise ValueError(f"{paths.server_key} does not belong to {paths.server}")
    check_signed_by(server, ca, paths)
    check_names_loopback(x509, server, paths)
    return paths


def check_names_loopback(x509, server, paths: CertPaths) -> None:
    """The server certificate must name LOOPBACK: the server command's own calls to its
    Control API dial it there, over TLS."""
    try:
        names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        names = None
    ips = [] if names is None else [str(ip) for ip in names.get_values_for_type(x509.IPAddress)]
    if LOOPBACK not in ips:
        raise ValueError(
            f"{paths.server} does not name {LOOPBACK}, where the server reaches its own "
            "Control API: remake it with distlab deploy certs (which adds it)"
        )


def check_signed_by(cert, ca, paths: CertPaths) -> None:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, Exception) as exc:  # InvalidSignature is not a ValueError
        raise ValueError(
            f"{paths.server} is not signed by {paths.ca}: the certificates do not match"
        ) from exc


def load_cert(x509, path: Path):
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except ValueError:
        raise ValueError(f"{path}: not a PEM certificate") from None


def check_ca(path: Path) -> Path:
    """A client's CA file exists and is a PEM certificate."""
    from cryptography import x509

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--ca {path}: no such file")
    load_cert(x509, path)
    return path


def check_node_key(path: Path) -> Path:
    """A SuperNode's private key: an EC key in OpenSSH format (what `distlab deploy certs`
    writes, or `ssh-keygen -t ecdsa -b 384`)."""
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--key {path}: no such file")
    try:
        key = load_ssh_private_key(path.read_bytes(), None)
    except (ValueError, TypeError, Exception):
        raise ValueError(
            f"--key {path}: not an EC private key in OpenSSH format (make one with "
            "distlab deploy certs or ssh-keygen -t ecdsa -b 384)"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(
            f"--key {path}: a {type(key).__name__.lstrip('_')} key, not an EC key; Flower's node "
            "authentication needs an EC key (ssh-keygen -t ecdsa -b 384)"
        )
    return path


def check_node_pub(path: Path) -> Path:
    """A SuperNode's public key to register: an EC key in OpenSSH format."""
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_ssh_public_key

    path = Path(path)
    try:
        key = load_ssh_public_key(path.read_bytes())
    except (ValueError, OSError, Exception):
        raise ValueError(f"{path}: not a public key in OpenSSH format") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError(f"{path}: not an EC public key")
    return path
