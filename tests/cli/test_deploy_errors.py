"""`distlab deploy`: bad input is one line, exit 2, before any Flower process starts, and
nothing is written; the certificates `deploy certs` makes are what Flower needs."""

from __future__ import annotations

import socket
import ssl
import threading
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
    load_ssh_public_key,
)
from tests.conftest import cli

from distlab.deploy.certs import (
    build_cert,
    check_node_key,
    check_server_certs,
    make_certs,
    parse_server_names,
    pem_cert,
    pem_key,
)


def one_line_error(proc, *parts: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for part in parts:
        assert part in lines[0], (part, lines[0])


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("certs"), ["localhost", "127.0.0.1"], 2)


def test_server_certificate_names_the_hosts_and_is_signed_by_the_ca(certs):
    ca = x509.load_pem_x509_certificate(certs.ca.read_bytes())
    server = x509.load_pem_x509_certificate(certs.server.read_bytes())
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    server.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert check_server_certs(certs.root) == certs
    assert oct(certs.ca_key.stat().st_mode & 0o777) == "0o600"


def test_node_keys_are_ec_pairs_flower_reads(certs):
    for i in range(2):
        check_node_key(certs.client_key(i))
        public = load_ssh_public_key(certs.client_pub(i).read_bytes())
        assert public.curve.name == "secp384r1"
    assert certs.client_pubs() == [certs.client_pub(0), certs.client_pub(1)]


def test_certs_refuses_to_overwrite_and_bad_names(tmp_path, certs):
    with pytest.raises(ValueError, match="exists"):
        make_certs(certs.root, ["localhost"], 1)
    with pytest.raises(ValueError, match="neither a host name nor an IP"):
        parse_server_names("good.host,bad host")
    done = cli("deploy", "certs", "--out", str(tmp_path / "c"), "--server-names", ",")
    one_line_error(done, "--server-names")
    assert not (tmp_path / "c").exists()


def test_certs_command_writes_everything(tmp_path):
    done = cli("deploy", "certs", "--out", str(tmp_path / "c"), "--server-names",
               "server.lan,10.0.0.5", "--clients", "2")  # fmt: skip
    assert done.returncode == 0, done.stderr
    names = sorted(p.name for p in (tmp_path / "c").iterdir())
    assert names == ["ca.key", "ca.pem", "client-0.key", "client-0.pub", "client-1.key",
                     "client-1.pub", "server.key", "server.pem"]  # fmt: skip


def server(tmp_path, *args):
    return cli("deploy", "server", "--out-dir", str(tmp_path / "runs"), "--clients", "2", *args,
               cwd=tmp_path)  # fmt: skip


def test_server_without_certificates(tmp_path):
    one_line_error(server(tmp_path), "--certs")
    one_line_error(server(tmp_path, "--certs", str(tmp_path / "none")), "no such directory")
    assert not (tmp_path / "runs").exists()


def test_server_with_mismatched_certificates(tmp_path, certs):
    other = make_certs(tmp_path / "other", ["localhost"], 2)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for name in ("server.pem", "server.key", "client-0.pub", "client-1.pub"):
        (mixed / name).write_bytes((certs.root / name).read_bytes())
    (mixed / "ca.pem").write_bytes(other.ca.read_bytes())
    one_line_error(server(tmp_path, "--certs", str(mixed)), "not signed by", "ca.pem")
    (mixed / "ca.pem").write_bytes(certs.ca.read_bytes())
    (mixed / "server.key").write_bytes(other.server_key.read_bytes())
    one_line_error(server(tmp_path, "--certs", str(mixed)), "does not belong to")
    assert not (tmp_path / "runs").exists()


def test_server_needs_a_key_per_client(tmp_path, certs):
    done = server(tmp_path, "--certs", str(certs.root), "--keys", str(certs.client_pub(0)))
    one_line_error(done, "1 key(s) for 2 clients")


def test_server_refuses_other_strategies_and_busy_ports(tmp_path, certs):
    one_line_error(server(tmp_path, "--certs", str(certs.root), "--strategy", "allreduce"),
                   "federated family", "'allreduce'")  # fmt: skip
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        done = server(tmp_path, "--certs", str(certs.root), "--host", "127.0.0.1", "--port", port)
    one_line_error(done, f"port {port}", "in use")
    assert not (tmp_path / "runs").exists()


def client(tmp_path, *args):
    return cli("deploy", "client", "--num-partitions", "2", *args, cwd=tmp_path)


def test_client_partition_outside_the_federation(tmp_path, certs):
    done = client(tmp_path, "--server", "127.0.0.1:9", "--partition-id", "2", "--ca",
                  str(certs.ca), "--key", str(certs.client_key(0)))  # fmt: skip
    one_line_error(done, "--partition-id 2", "0..1")


def test_client_key_that_is_not_an_ec_key(tmp_path, certs):
    rsa_key = tmp_path / "rsa.key"
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa_key.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.OpenSSH, NoEncryption()))
    garbage = tmp_path / "garbage.key"
    garbage.write_text("not a key\n")
    for path, said in ((rsa_key, "not an EC key"), (garbage, "not an EC private key")):
        done = client(tmp_path, "--server", "127.0.0.1:9", "--partition-id", "0", "--ca",
                      str(certs.ca), "--key", str(path))  # fmt: skip
        one_line_error(done, str(path), said)


def test_client_with_a_ca_that_is_not_a_certificate(tmp_path, certs):
    done = client(tmp_path, "--server", "127.0.0.1:9", "--partition-id", "0", "--ca",
                  str(certs.client_pub(0)), "--key", str(certs.client_key(0)))  # fmt: skip
    one_line_error(done, "not a PEM certificate")


def test_unreachable_server_fails_within_the_timeout(tmp_path, certs):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, never listening: connections are refused
        begin = time.monotonic()
        done = client(tmp_path, "--server", f"127.0.0.1:{port}", "--partition-id", "0",
                      "--ca", str(certs.ca), "--key", str(certs.client_key(0)),
                      "--join-timeout", "3")  # fmt: skip
    one_line_error(done, "cannot reach the server", f"127.0.0.1:{port}", "within 3 s")
    assert time.monotonic() - begin < 30


def test_client_port_in_use(tmp_path, certs):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        done = client(
            tmp_path,
            "--server",
            "127.0.0.1:9",
            "--partition-id",
            "0",
            "--ca",
            str(certs.ca),
            "--key",
            str(certs.client_key(0)),
            "--port",
            port,
        )
    one_line_error(done, f"port {port}", "in use")


def test_flower_executor_is_refused_by_run(tmp_path):
    done = cli("run", "--strategy", "fedavg", "--set", "strategy.executor=flower",
               "--out-dir", str(tmp_path / "runs"))  # fmt: skip
    one_line_error(done, "distlab deploy local")
    assert not (tmp_path / "runs").exists()


def test_certs_name_loopback_for_the_servers_own_control_calls(tmp_path, certs):
    """The server reaches its own Control API on 127.0.0.1 over TLS: `deploy certs` adds that
    address to any names, and a server certificate made without it is refused before start."""
    done = cli("deploy", "certs", "--out", str(tmp_path / "c"), "--server-names",
               "hosta,10.77.0.1", "--clients", "1")  # fmt: skip
    assert done.returncode == 0, done.stderr
    server_pem = x509.load_pem_x509_certificate((tmp_path / "c" / "server.pem").read_bytes())
    names = server_pem.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["hosta"]
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == [
        "10.77.0.1",
        "127.0.0.1",
    ]

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for name in ("ca.pem", "client-0.pub", "client-1.pub"):
        (elsewhere / name).write_bytes((certs.root / name).read_bytes())
    key = ec.generate_private_key(ec.SECP384R1())
    ca_key = load_pem_private_key(certs.ca_key.read_bytes(), None)
    ca = x509.load_pem_x509_certificate(certs.ca.read_bytes())
    cert = build_cert(x509, "hosta", key.public_key(), ca_key, ca, sans=["hosta"])
    (elsewhere / "server.pem").write_bytes(pem_cert(cert))
    (elsewhere / "server.key").write_bytes(pem_key(key))
    one_line_error(server(tmp_path, "--certs", str(elsewhere)), "does not name 127.0.0.1")
    assert not (tmp_path / "runs").exists()


class TlsServer:
    """A TLS listener with the deployment's server certificate that completes handshakes
    (ALPN h2, as gRPC's), standing in for a SuperLink's Fleet API in the client's check."""

    def __init__(self, certs, host: str) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(certs.server, certs.server_key)
        self.context.set_alpn_protocols(["h2"])
        self.sock = socket.create_server((host, 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                try:
                    self.context.wrap_socket(conn, server_side=True).close()
                except (ssl.SSLError, OSError):
                    pass


def test_client_checks_the_servers_certificate_before_it_starts(tmp_path, certs):
    """A client whose --ca did not sign the server's certificate, or that dials an address
    the certificate does not name, ends in one line at once, not after --join-timeout."""
    other = make_certs(tmp_path / "other", ["localhost"], 1)
    tls = TlsServer(certs, "127.0.0.2")  # all of 127/8 is loopback; the certificate names .1
    try:
        begin = time.monotonic()
        common = ("--partition-id", "0", "--key", str(certs.client_key(0)), "--port", "0")
        done = client(tmp_path, "--server", f"127.0.0.2:{tls.port}", "--ca", str(certs.ca),
                      *common)  # fmt: skip
        one_line_error(done, "does not name 127.0.0.2", "--server-names 127.0.0.2")
        done = client(tmp_path, "--server", f"127.0.0.2:{tls.port}", "--ca", str(other.ca),
                      *common)  # fmt: skip
        one_line_error(done, "not signed by --ca", str(other.ca))
        assert time.monotonic() - begin < 30  # the join timeout is 60 s
    finally:
        tls.sock.close()
    assert not (tmp_path / ".distlab-client").exists()
