"""The SSRF guard for outgoing HTTP to customer-supplied URLs (webhook endpoints, HTTP channels).

A customer who can choose where we send requests must not be able to point us at ourselves:
loopback, the private network, the cloud metadata service at 169.254.169.254, and every other
address that is not globally reachable. ``vet_url`` refuses such URLs when they are configured;
``guarded_session`` refuses them again on every new connection, resolving the host itself and
connecting to the very address it vetted, so a DNS answer that changes between the check and the
connect (DNS rebinding) cannot slip through. Loopback or private addresses are reachable only
when explicitly configured as ``allowed`` networks (tests, local runs).
"""

from __future__ import annotations

import ipaddress
import socket
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import DEFAULT_POOLBLOCK, HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.poolmanager import PoolManager
from urllib3.util.connection import allowed_gai_family

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_AddrInfo = tuple[socket.AddressFamily, socket.SocketKind, int, str, tuple[Any, ...]]

_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")  # RFC 6598 shared address space
_UNIQUE_LOCAL = ipaddress.IPv6Network("fc00::/7")
_SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")
_NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052, globally reachable
_NAT64_LOCAL_USE = ipaddress.IPv6Network("64:ff9b:1::/48")  # RFC 8215, /96 layout assumed
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")  # deprecated ::a.b.c.d


class BlockedAddress(ValueError):
    """A URL whose host is, or resolves to, an address outgoing requests must not reach."""

    def __init__(self, host: str, address: str, reason: str) -> None:
        super().__init__(host, address, reason)  # all three, so the exception pickles
        self.host = host
        self.address = address
        self.reason = reason

    def __str__(self) -> str:
        if self.host == self.address:
            return f"{self.address} is {self.reason}"
        return f"{self.host} resolves to {self.address}, {self.reason}"


def parse_networks(text: str) -> tuple[Network, ...]:
    """The networks in a comma-separated list of CIDRs, e.g. ``"127.0.0.0/8,::1/128"``.

    Raises
    ------
    ValueError
        An item is not a network; host bits set (``10.0.0.1/8``) count as a mistake.
    """
    networks: list[Network] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item))
        except ValueError as exc:
            raise ValueError(f"{item!r} is not a network in CIDR notation: {exc}") from None
    return tuple(networks)


def blocked_reason(address: str | IPAddress, allowed: Sequence[Network] = ()) -> str | None:
    """Why outgoing requests must not reach ``address``, or None if they may.

    An address inside one of ``allowed`` may always be reached; that is the only way to reach
    loopback or private addresses. An IPv4-mapped address is judged as the IPv4 address it is;
    the IPv4 address embedded in a 6to4, NAT64 or IPv4-compatible address is judged too.

    Returns
    -------
    A phrase that completes "<address> is ...", e.g. "a private address".

    Raises
    ------
    ValueError
        ``address`` is not an IP address.
    """
    ip = address if isinstance(address, IPAddress) else ipaddress.ip_address(address)
    if any(ip in network for network in allowed):
        return None
    if isinstance(ip, ipaddress.IPv4Address):
        return _own_reason(ip)
    if ip.ipv4_mapped is not None:  # the kernel connects to the IPv4 address itself
        reason = blocked_reason(ip.ipv4_mapped, allowed)
        return None if reason is None else f"the IPv4-mapped form of {ip.ipv4_mapped}, {reason}"
    embedded = _embedded_ipv4(ip)
    if embedded is not None:
        form, ipv4 = embedded
        reason = _own_reason(ipv4)
        if reason is not None:
            return f"the {form} form of {ipv4}, {reason}"
        if ip in _NAT64_WELL_KNOWN:  # stdlib counts all of ::/8 as reserved; IANA: reachable
            return None
    return _own_reason(ip)


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> tuple[str, ipaddress.IPv4Address] | None:
    """The IPv4 address a translation or tunnelling form of IPv6 stands for, and the form."""
    if ip.sixtofour is not None:
        return "6to4", ip.sixtofour
    low32 = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in _NAT64_WELL_KNOWN or ip in _NAT64_LOCAL_USE:
        return "NAT64", low32
    if ip in _IPV4_COMPATIBLE and int(ip) > 1:  # not :: or ::1
        return "IPv4-compatible", low32
    return None


def _own_reason(ip: IPAddress) -> str | None:
    """The address's own special-purpose class, most specific first; None if globally routable."""
    if ip.is_unspecified:
        return "the unspecified address"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_multicast:  # checked explicitly: Python before 3.12 calls 224/4 "global"
        return "a multicast address"
    if ip in _CGNAT:
        return "a shared (CGNAT) address"
    if isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local:
        return "a site-local address"
    if ip in _UNIQUE_LOCAL:
        return "a unique-local address"
    if ip.is_reserved:
        return "a reserved address"
    if ip.is_private:
        return "a private address"
    if not ip.is_global:
        return "not a globally reachable address"
    return None


def _vetted_addresses(
    host: str,
    port: int,
    allowed: Sequence[Network],
    family: int = socket.AF_UNSPEC,
    flags: int = 0,
) -> Sequence[_AddrInfo]:
    """Every address ``host`` resolves to, all of them allowed, in the resolver's order.

    One refused address refuses the whole host: whoever controls its DNS may mix answers.

    Raises
    ------
    BlockedAddress
        An address must not be reached.
    socket.gaierror
        The host does not resolve (also for an empty answer).
    """
    infos = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM, 0, flags)
    if not infos:
        raise socket.gaierror(socket.EAI_NONAME, "the resolver returned no addresses")
    for info in infos:
        address = str(info[4][0])
        reason = blocked_reason(address, allowed)
        if reason is not None:
            raise BlockedAddress(host, address, reason)
    return infos


def vet_url(url: str, allowed: Sequence[Network] = (), *, resolve: bool = True) -> None:
    """Check a customer-supplied URL when it is configured.

    Parameters
    ----------
    url
        http or https, with a host, without credentials, with a port (if any) in 1–65535.
    allowed
        Networks that may be reached although they are not global (see ``blocked_reason``).
    resolve
        Resolve a host name and check all its addresses. Without, only an IP literal (in any
        form the resolver accepts, e.g. ``127.1``) is checked.

    Raises
    ------
    BlockedAddress
        The host is, or resolves to, an address that must not be reached.
    ValueError
        The URL is malformed, or its host name does not resolve.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{url!r} is not a valid URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise ValueError(f"{url!r}: the scheme must be http or https, not {parts.scheme!r}")
    if "@" in parts.netloc:
        raise ValueError(f"{url!r}: credentials (user:password@) are not allowed in the URL")
    host = parts.hostname
    if not host:
        raise ValueError(f"{url!r} has no host")
    if port == 0:
        raise ValueError(f"{url!r}: port 0 cannot be connected to")
    port = port or (443 if scheme == "https" else 80)
    try:
        # A numeric host is a literal whatever ``resolve`` says: the resolver reads it without DNS.
        _vetted_addresses(host, port, allowed, flags=socket.AI_NUMERICHOST)
        return
    except socket.gaierror:
        pass  # a name, not a literal
    if not resolve:
        return
    try:
        _vetted_addresses(host, port, allowed)
    except socket.gaierror as exc:
        raise ValueError(f"{url!r}: the host {host!r} does not resolve: {exc}") from None


class _GuardedHTTPConnection(HTTPConnection):
    """Resolves the host itself, vets every address, and connects to a vetted one."""

    def __init__(self, *args: Any, allowed: Sequence[Network] = (), **kwargs: Any) -> None:
        self._allowed = tuple(allowed)
        super().__init__(*args, **kwargs)

    def _new_conn(self) -> socket.socket:
        # Mirrors urllib3's create_connection and _new_conn, except that the addresses come from
        # _vetted_addresses and BlockedAddress is not an OSError, so nothing retries or wraps it.
        host = self._dns_host.strip("[]")
        try:
            infos = _vetted_addresses(host, self.port, self._allowed, allowed_gai_family())
        except socket.gaierror as exc:
            raise NameResolutionError(self.host, self, exc) from exc
        error: OSError | None = None
        for family, kind, proto, _, sockaddr in infos:
            sock = socket.socket(family, kind, proto)
            try:
                for option in self.socket_options or ():
                    sock.setsockopt(*option)
                if self.timeout is None or isinstance(self.timeout, int | float):
                    sock.settimeout(self.timeout)  # else the default: socket.getdefaulttimeout()
                if self.source_address:
                    sock.bind(self.source_address)
                sock.connect(sockaddr)
            except OSError as exc:
                sock.close()
                error = exc
                continue
            sys.audit("http.client.connect", self, self.host, self.port)
            return sock
        if isinstance(error, TimeoutError):
            raise ConnectTimeoutError(
                self, f"Connection to {self.host} timed out. (connect timeout={self.timeout})"
            ) from error
        raise NewConnectionError(self, f"Failed to establish a new connection: {error}") from error


class _GuardedHTTPSConnection(_GuardedHTTPConnection, HTTPSConnection):
    """As for http; TLS still uses the URL's host name for SNI and certificate verification."""


class _GuardedHTTPConnectionPool(HTTPConnectionPool):
    ConnectionCls = _GuardedHTTPConnection


class _GuardedHTTPSConnectionPool(HTTPSConnectionPool):
    ConnectionCls = _GuardedHTTPSConnection


class _GuardedPoolManager(PoolManager):
    """Hands every pool it creates the allowed networks, which its connections vet against."""

    def __init__(self, allowed: Sequence[Network], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pool_classes_by_scheme = {
            "http": _GuardedHTTPConnectionPool,
            "https": _GuardedHTTPSConnectionPool,
        }
        self._allowed = tuple(allowed)

    def _new_pool(
        self,
        scheme: str,
        host: str,
        port: int,
        request_context: dict[str, Any] | None = None,
    ) -> HTTPConnectionPool:
        # After the pool key is made (it has no field for this), as a connection keyword.
        context = dict(self.connection_pool_kw if request_context is None else request_context)
        context["allowed"] = self._allowed
        return super()._new_pool(scheme, host, port, context)


class _GuardedAdapter(HTTPAdapter):
    __attrs__ = [*HTTPAdapter.__attrs__, "_allowed"]

    def __init__(self, allowed: Sequence[Network], *, pool_maxsize: int) -> None:
        self._allowed = tuple(allowed)  # before super().__init__, which makes the pool manager
        super().__init__(pool_maxsize=pool_maxsize, max_retries=0)

    def init_poolmanager(
        self, connections: int, maxsize: int, block: bool = DEFAULT_POOLBLOCK, **pool_kwargs: Any
    ) -> None:
        self._pool_connections = connections
        self._pool_maxsize = maxsize
        self._pool_block = block
        self.poolmanager = _GuardedPoolManager(
            self._allowed, num_pools=connections, maxsize=maxsize, block=block, **pool_kwargs
        )

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        # Through a proxy the guard would vet the proxy's address, not the customer's.
        raise ValueError("a guarded session does not send requests through a proxy")


def guarded_pool(allowed: Sequence[Network] = (), *, maxsize: int = 10) -> PoolManager:
    """A urllib3 pool manager with the same guard as ``guarded_session``, for hot paths where
    requests' per-call overhead shows (webhook deliveries). Pass ``retries=False`` and
    ``redirect=False`` to its ``request``; a refused host raises ``BlockedAddress`` as is."""
    # A pool per customer host: keep many, or a process serving many endpoints reconnects for each.
    return _GuardedPoolManager(allowed, num_pools=2000, maxsize=maxsize, block=False, retries=False)


def guarded_session(allowed: Sequence[Network] = (), *, pool_maxsize: int = 10) -> requests.Session:
    """A requests session for customer-supplied URLs.

    Every new connection resolves the host, refuses it if any address is refused by
    ``blocked_reason`` (with ``allowed``), and connects to one of the vetted addresses. Proxies
    from the environment are ignored (``trust_env`` is off) and explicit proxies are refused.
    Requests are not retried; pass ``allow_redirects=False`` (a followed redirect would be
    guarded all the same).

    Raises
    ------
    BlockedAddress
        From ``session.request`` when the host is, or resolves to, a refused address; it is
        raised as is, not wrapped in ``requests.ConnectionError``.
    """
    session = requests.Session()
    session.trust_env = False
    adapter = _GuardedAdapter(allowed, pool_maxsize=pool_maxsize)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


_shared: dict[tuple[str, str, int], Any] = {}
_shared_lock = threading.Lock()


def _built_once(kind: str, allowed_networks: str, size: int, build: Callable[[tuple[Network, ...]], Any]) -> Any:
    key = (kind, allowed_networks, size)
    with _shared_lock:
        if key not in _shared:
            _shared[key] = build(parse_networks(allowed_networks))
        return _shared[key]


def shared_session(allowed_networks: str, pool_maxsize: int) -> requests.Session:
    """The process's guarded session for this allow-list (``parse_networks`` text), built once so
    its connection pools are reused by every caller (the http channel)."""
    session: requests.Session = _built_once("session", allowed_networks, pool_maxsize,
                                            lambda nets: guarded_session(nets, pool_maxsize=pool_maxsize))
    return session


def shared_pool(allowed_networks: str, maxsize: int) -> PoolManager:
    """The process's guarded pool manager for this allow-list, built once (webhook deliveries)."""
    pool: PoolManager = _built_once("pool", allowed_networks, maxsize, lambda nets: guarded_pool(nets, maxsize=maxsize))
    return pool
