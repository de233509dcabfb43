"""The SSRF guard: which addresses are refused, URL vetting, and dial-time checks on real sockets.

No database: the servers here are real HTTP(S) servers on loopback, and host names under
``example.test`` are answered by a stand-in resolver (every other name goes to the real one).
"""

from __future__ import annotations

import datetime
import ipaddress
import pickle
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from common.netguard import BlockedAddress, blocked_reason, guarded_session, parse_networks, vet_url

LOOPBACK = parse_networks("127.0.0.0/8,::1/128")
HOOK_HOST = "hooks.example.test"


# --- blocked_reason ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "a loopback address"),
        ("10.0.0.1", "a private address"),
        ("172.16.0.1", "a private address"),
        ("192.168.1.1", "a private address"),
        ("169.254.169.254", "a link-local address"),
        ("100.64.0.1", "a shared (CGNAT) address"),
        ("0.0.0.0", "the unspecified address"),
        ("224.0.0.1", "a multicast address"),
        ("240.0.0.1", "a reserved address"),
        ("255.255.255.255", "a reserved address"),
        ("192.0.2.1", "a private address"),  # documentation; the stdlib files it as private
        ("198.18.0.1", "a private address"),  # benchmarking
        ("::1", "a loopback address"),
        ("::", "the unspecified address"),
        ("fe80::1", "a link-local address"),
        ("fc00::1", "a unique-local address"),
        ("fec0::1", "a site-local address"),
        ("ff02::1", "a multicast address"),
        ("2001:db8::1", "a private address"),
        ("::ffff:127.0.0.1", "the IPv4-mapped form of 127.0.0.1, a loopback address"),
        ("::ffff:10.0.0.1", "the IPv4-mapped form of 10.0.0.1, a private address"),
        ("64:ff9b::a00:1", "the NAT64 form of 10.0.0.1, a private address"),
        ("64:ff9b:1::a9fe:a9fe", "the NAT64 form of 169.254.169.254, a link-local address"),
        ("2002:a00:1::", "the 6to4 form of 10.0.0.1, a private address"),
        ("::a00:1", "the IPv4-compatible form of 10.0.0.1, a private address"),
    ],
)
def test_non_global_address_is_refused_with_its_class(address: str, reason: str) -> None:
    assert blocked_reason(address) == reason
    assert blocked_reason(ipaddress.ip_address(address)) == reason


@pytest.mark.parametrize(
    "address",
    [
        "8.8.8.8",
        "2606:4700::1111",
        "::ffff:8.8.8.8",  # the socket connects to 8.8.8.8 itself
        "64:ff9b::808:808",  # a DNS64 answer for 8.8.8.8 on an IPv6-only network
        "2002:808:808::",
    ],
)
def test_globally_reachable_address_is_allowed(address: str) -> None:
    assert blocked_reason(address) is None


def test_allowed_networks_are_the_only_way_to_reach_loopback() -> None:
    assert blocked_reason("127.0.0.1", LOOPBACK) is None
    assert blocked_reason("127.8.9.10", LOOPBACK) is None
    assert blocked_reason("::1", LOOPBACK) is None
    assert blocked_reason("::ffff:127.0.0.1", LOOPBACK) is None  # the same socket destination
    assert blocked_reason("10.0.0.1", LOOPBACK) == "a private address"
    assert blocked_reason("169.254.169.254", LOOPBACK) == "a link-local address"


def test_parse_networks_reads_a_comma_separated_list() -> None:
    assert parse_networks("") == ()
    assert parse_networks(" 127.0.0.0/8 , ::1/128 ,") == (
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )
    assert parse_networks("10.1.2.3") == (ipaddress.ip_network("10.1.2.3/32"),)


@pytest.mark.parametrize("text", ["localhost", "127.0.0.0/33", "10.0.0.1/8", "127.0.0.0/8,nope"])
def test_parse_networks_rejects_a_bad_item(text: str) -> None:
    with pytest.raises(ValueError, match="not a network in CIDR notation"):
        parse_networks(text)


def test_blocked_address_names_host_address_and_reason_and_survives_pickling() -> None:
    exc = BlockedAddress(HOOK_HOST, "10.0.0.7", "a private address")
    assert isinstance(exc, ValueError)
    assert str(exc) == "hooks.example.test resolves to 10.0.0.7, a private address"
    assert str(BlockedAddress("10.0.0.1", "10.0.0.1", "a private address")) == (
        "10.0.0.1 is a private address"
    )
    copy = pickle.loads(pickle.dumps(exc))
    assert (copy.host, copy.address, copy.reason, str(copy)) == (
        exc.host, exc.address, exc.reason, str(exc)
    )


# --- a resolver that answers for example.test names ------------------------------------------


class FakeDNS:
    """Answers for names set here, successive answers for successive queries (the last repeats)."""

    def __init__(self) -> None:
        self.zones: dict[str, list[list[str]]] = {}
        self.queries: list[str] = []
        self.answered: list[str] = []  # every address handed out, in order
        self._real = socket.getaddrinfo

    def set(self, host: str, *answers: list[str]) -> None:
        self.zones[host] = list(answers)

    def getaddrinfo(
        self, host: Any, port: Any, family: int = 0, type: int = 0, proto: int = 0, flags: int = 0
    ) -> list[Any]:
        if host not in self.zones:
            return self._real(host, port, family, type, proto, flags)
        if flags & socket.AI_NUMERICHOST:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        self.queries.append(host)
        answers = self.zones[host]
        addresses = answers.pop(0) if len(answers) > 1 else answers[0]
        if not addresses:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        self.answered.extend(addresses)
        return [_addrinfo(address, int(port)) for address in addresses]


def _addrinfo(address: str, port: int) -> tuple[Any, ...]:
    if ipaddress.ip_address(address).version == 4:
        return (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, port))
    return (socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, port, 0, 0))


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> FakeDNS:
    fake = FakeDNS()
    monkeypatch.setattr(socket, "getaddrinfo", fake.getaddrinfo)
    return fake


# --- vet_url -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://127.0.0.1:8080/x", "127.0.0.1 is a loopback address"),
        ("http://[::ffff:127.0.0.1]/", "::ffff:127.0.0.1 is the IPv4-mapped form of 127.0.0.1"),
        ("http://169.254.169.254/latest", "169.254.169.254 is a link-local address"),
        ("https://[fd00::1]:8443/hook", "fd00::1 is a unique-local address"),
        ("http://2130706433/", "2130706433 resolves to 127.0.0.1, a loopback address"),
        ("http://0x7f.1/", "0x7f.1 resolves to 127.0.0.1, a loopback address"),
    ],
)
def test_vet_url_refuses_an_ip_literal_even_without_dns(url: str, message: str) -> None:
    for resolve in (True, False):
        with pytest.raises(BlockedAddress) as caught:
            vet_url(url, resolve=resolve)
        assert str(caught.value).startswith(message)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://x", "scheme must be http or https, not 'ftp'"),
        ("file:///etc/passwd", "scheme must be http or https"),
        ("http://user:pw@8.8.8.8/", r"credentials \(user:password@\) are not allowed"),
        ("http://@8.8.8.8/", "credentials"),
        ("http:///path", "has no host"),
        ("http://", "has no host"),
        ("http://8.8.8.8:0/", "port 0"),
        ("http://8.8.8.8:65536/", "not a valid URL"),
        ("http://8.8.8.8:http/", "not a valid URL"),
        ("http://[::1/", "not a valid URL"),
    ],
)
def test_vet_url_rejects_a_malformed_url_before_any_lookup(
    dns: FakeDNS, url: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        vet_url(url)
    assert not isinstance(caught.value, BlockedAddress)
    assert dns.queries == []


def test_vet_url_accepts_a_public_address_and_an_allowed_one() -> None:
    vet_url("https://8.8.8.8/hook")
    vet_url("http://[2606:4700::1111]:8080/hook")
    vet_url("http://127.0.0.1:8080/x", LOOPBACK)
    vet_url("http://[::1]:8080/x", LOOPBACK)


def test_vet_url_refuses_a_name_resolving_to_a_private_address(dns: FakeDNS) -> None:
    dns.set(HOOK_HOST, ["10.0.0.7"])
    with pytest.raises(BlockedAddress) as caught:
        vet_url(f"https://{HOOK_HOST}/hook")
    assert str(caught.value) == "hooks.example.test resolves to 10.0.0.7, a private address"


def test_vet_url_refuses_a_name_if_any_of_its_addresses_is_refused(dns: FakeDNS) -> None:
    dns.set(HOOK_HOST, ["8.8.8.8", "2606:4700::1111", "169.254.169.254"])
    with pytest.raises(BlockedAddress, match="169.254.169.254, a link-local address"):
        vet_url(f"https://{HOOK_HOST}/hook")


def test_vet_url_accepts_a_name_with_only_public_addresses(dns: FakeDNS) -> None:
    dns.set(HOOK_HOST, ["8.8.8.8", "2606:4700::1111"])
    vet_url(f"https://{HOOK_HOST}/hook")
    assert dns.queries == [HOOK_HOST]


def test_vet_url_reports_a_name_that_does_not_resolve(dns: FakeDNS) -> None:
    dns.set(HOOK_HOST, [])
    with pytest.raises(ValueError, match="'hooks.example.test' does not resolve") as caught:
        vet_url(f"https://{HOOK_HOST}/hook")
    assert not isinstance(caught.value, BlockedAddress)


def test_vet_url_without_resolve_does_not_look_a_name_up(dns: FakeDNS) -> None:
    dns.set(HOOK_HOST, ["127.0.0.1"])
    vet_url(f"https://{HOOK_HOST}/hook", resolve=False)
    assert dns.queries == []


# --- guarded_session against real servers on loopback ----------------------------------------


class RecordingServer(ThreadingHTTPServer):
    """Records every accepted connection's peer and every request's path and Host header."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], context: ssl.SSLContext | None = None) -> None:
        self.peers: list[tuple[str, int]] = []
        self.requests: list[dict[str, Any]] = []
        self.server_names: list[str | None] = []  # TLS SNI, per handshake
        super().__init__(address, RecordingHandler)
        if context is not None:
            context.sni_callback = lambda _sock, name, _ctx: self.server_names.append(name)
            self.socket = context.wrap_socket(self.socket, server_side=True)

    def verify_request(self, request: Any, client_address: Any) -> bool:
        self.peers.append(client_address)
        return True

    @property
    def port(self) -> int:
        return int(self.server_address[1])


class RecordingHandler(BaseHTTPRequestHandler):
    server: RecordingServer

    def do_GET(self) -> None:
        self.server.requests.append(
            {"path": self.path, "host": self.headers["Host"], "local": self.connection.getsockname()}
        )
        body = b"delivered"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _serve(server: RecordingServer) -> Iterator[RecordingServer]:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def server() -> Iterator[RecordingServer]:
    yield from _serve(RecordingServer(("127.0.0.1", 0)))


def test_allowed_loopback_is_reached(server: RecordingServer) -> None:
    with guarded_session(LOOPBACK) as session:
        response = session.get(f"http://127.0.0.1:{server.port}/hook", timeout=5)
    assert (response.status_code, response.text) == (200, "delivered")
    assert [r["path"] for r in server.requests] == ["/hook"]


def test_loopback_is_refused_without_connecting(server: RecordingServer) -> None:
    with guarded_session() as session, pytest.raises(BlockedAddress) as caught:
        session.get(f"http://127.0.0.1:{server.port}/hook", timeout=5)
    assert type(caught.value) is BlockedAddress  # not wrapped in requests.ConnectionError
    assert str(caught.value) == "127.0.0.1 is a loopback address"
    assert server.peers == [] and server.requests == []


def test_name_resolving_to_loopback_is_refused_at_dial_time(
    server: RecordingServer, dns: FakeDNS
) -> None:
    dns.set(HOOK_HOST, ["127.0.0.1"])
    with guarded_session() as session, pytest.raises(BlockedAddress) as caught:
        session.get(f"http://{HOOK_HOST}:{server.port}/hook", timeout=5)
    assert str(caught.value) == "hooks.example.test resolves to 127.0.0.1, a loopback address"
    assert server.peers == []


def test_name_resolving_to_allowed_loopback_is_reached_with_its_host_header(
    server: RecordingServer, dns: FakeDNS
) -> None:
    dns.set(HOOK_HOST, ["127.0.0.1"])
    with guarded_session(LOOPBACK) as session:
        response = session.get(f"http://{HOOK_HOST}:{server.port}/hook", timeout=5)
    assert response.status_code == 200
    assert server.requests == [
        {"path": "/hook", "host": f"{HOOK_HOST}:{server.port}", "local": ("127.0.0.1", server.port)}
    ]


def test_one_refused_address_among_allowed_ones_refuses_the_host(
    server: RecordingServer, dns: FakeDNS
) -> None:
    dns.set(HOOK_HOST, ["127.0.0.1", "10.0.0.7"])
    with guarded_session(LOOPBACK) as session, pytest.raises(BlockedAddress, match="10.0.0.7"):
        session.get(f"http://{HOOK_HOST}:{server.port}/hook", timeout=5)
    assert server.peers == []


def test_rebinding_after_creation_time_check_is_refused_at_dial_time(
    server: RecordingServer, dns: FakeDNS
) -> None:
    # Given a name that resolved to a public address when the endpoint was configured ...
    dns.set(HOOK_HOST, ["93.184.215.14"], ["127.0.0.1"])
    url = f"http://{HOOK_HOST}:{server.port}/hook"
    vet_url(url)
    # ... when it answers loopback at delivery time, then the delivery never connects.
    with guarded_session() as session, pytest.raises(BlockedAddress, match="127.0.0.1"):
        session.get(url, timeout=5)
    assert server.peers == []


@pytest.fixture
def internal_server(server: RecordingServer) -> Iterator[RecordingServer]:
    """A second server on the same port at 127.0.0.2: the "internal" target of a rebinding."""
    yield from _serve(RecordingServer(("127.0.0.2", server.port)))


def test_connection_goes_to_the_very_address_that_was_vetted(
    server: RecordingServer, internal_server: RecordingServer, dns: FakeDNS
) -> None:
    # Given a resolver whose first answer is allowed and every later answer is not: a guard
    # that vetted one answer and then let the connection resolve again would reach 127.0.0.2.
    dns.set(HOOK_HOST, ["127.0.0.1"], ["127.0.0.2"])
    with guarded_session(parse_networks("127.0.0.1/32")) as session:
        response = session.get(f"http://{HOOK_HOST}:{server.port}/hook", timeout=5)
    assert response.status_code == 200
    assert dns.answered == ["127.0.0.1"]  # one lookup per connection ...
    assert [r["local"] for r in server.requests] == [("127.0.0.1", server.port)]  # ... used
    assert internal_server.peers == []


def test_each_new_connection_is_vetted_again(server: RecordingServer, dns: FakeDNS) -> None:
    dns.set(HOOK_HOST, ["127.0.0.1"], ["10.0.0.7"])
    url = f"http://{HOOK_HOST}:{server.port}/hook"
    with guarded_session(LOOPBACK) as session:
        assert session.get(url, timeout=5, headers={"Connection": "close"}).status_code == 200
        with pytest.raises(BlockedAddress, match="10.0.0.7"):
            session.get(url, timeout=5)
    assert len(server.requests) == 1


def test_proxies_from_the_environment_are_not_used(
    server: RecordingServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    with guarded_session(LOOPBACK) as session:
        response = session.get(f"http://127.0.0.1:{server.port}/hook", timeout=5)
        assert response.status_code == 200
        with pytest.raises(ValueError, match="does not send requests through a proxy"):
            session.get(
                f"http://127.0.0.1:{server.port}/hook",
                proxies={"http": f"http://127.0.0.1:{server.port}"},
                timeout=5,
            )
    assert len(server.requests) == 1


def test_connection_failures_stay_requests_errors() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with guarded_session(LOOPBACK) as session, pytest.raises(requests.ConnectionError):
        session.get(f"http://127.0.0.1:{port}/hook", timeout=5)


def test_connect_timeout_from_the_request_applies() -> None:
    # Given a listener whose accept queue is full, so that a further connect hangs ...
    with socket.socket() as listener, socket.socket() as filler:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        filler.connect(listener.getsockname())
        started = time.monotonic()
        with guarded_session(LOOPBACK) as session, pytest.raises(requests.ConnectTimeout):
            session.get(f"http://127.0.0.1:{listener.getsockname()[1]}/", timeout=(0.3, 5))
        assert time.monotonic() - started < 3


# --- https: the vetted address is dialled, the host name is verified -------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA and a certificate for hooks.example.test only (no IP address in it)."""
    now = datetime.datetime.now(datetime.UTC)
    validity = (now - datetime.timedelta(hours=1), now + datetime.timedelta(days=1))

    def issue(subject: str, key: Any, issuer: x509.Name, issuer_key: Any, ca: bool) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(validity[0])
            .not_valid_after(validity[1])
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                critical=False,
            )
        )
        if ca:
            builder = builder.add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )
        else:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(HOOK_HOST)]), critical=False
            ).add_extension(x509.ExtendedKeyUsage([x509.OID_SERVER_AUTH]), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "postroom test CA")])
    ca_cert = issue("postroom test CA", ca_key, ca_name, ca_key, ca=True)
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf_cert = issue(HOOK_HOST, leaf_key, ca_name, ca_key, ca=False)

    base = tmp_path_factory.mktemp("tls")
    files = {"ca": base / "ca.pem", "cert": base / "cert.pem", "key": base / "key.pem"}
    files["ca"].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files["cert"].write_bytes(leaf_cert.public_bytes(serialization.Encoding.PEM))
    files["key"].write_bytes(
        leaf_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return files


@pytest.fixture
def tls_server(tls_files: dict[str, Path]) -> Iterator[RecordingServer]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls_files["cert"], tls_files["key"])
    yield from _serve(RecordingServer(("127.0.0.1", 0), context))


def test_https_dials_the_vetted_address_and_verifies_the_host_name(
    tls_server: RecordingServer, tls_files: dict[str, Path], dns: FakeDNS
) -> None:
    dns.set(HOOK_HOST, ["127.0.0.1"])
    with guarded_session(LOOPBACK) as session:
        response = session.get(
            f"https://{HOOK_HOST}:{tls_server.port}/hook", verify=str(tls_files["ca"]), timeout=5
        )
    assert (response.status_code, response.text) == (200, "delivered")
    assert tls_server.server_names == [HOOK_HOST]  # SNI names the host, not 127.0.0.1
    assert tls_server.requests[0]["host"] == f"{HOOK_HOST}:{tls_server.port}"


def test_https_certificate_for_another_name_is_rejected(
    tls_server: RecordingServer, tls_files: dict[str, Path], dns: FakeDNS
) -> None:
    dns.set("other.example.test", ["127.0.0.1"])
    with guarded_session(LOOPBACK) as session, pytest.raises(requests.exceptions.SSLError):
        session.get(
            f"https://other.example.test:{tls_server.port}/hook",
            verify=str(tls_files["ca"]),
            timeout=5,
        )
    assert tls_server.requests == []


def test_https_to_a_refused_name_never_starts_a_handshake(
    tls_server: RecordingServer, tls_files: dict[str, Path], dns: FakeDNS
) -> None:
    dns.set(HOOK_HOST, ["127.0.0.1"])
    with guarded_session() as session, pytest.raises(BlockedAddress):
        session.get(
            f"https://{HOOK_HOST}:{tls_server.port}/hook", verify=str(tls_files["ca"]), timeout=5
        )
    assert tls_server.peers == [] and tls_server.server_names == []
