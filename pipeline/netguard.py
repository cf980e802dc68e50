"""SSRF guard: feed and article URLs must not reach into our own network.

A feed is untrusted input. Its item links (fetched for full text), its redirects and even a
feed URL that someone pasted into ``feeds.yaml`` can point at ``127.0.0.1``, a private
address, or a cloud metadata service (``169.254.169.254``) that hands out credentials.
Two layers keep those out:

1. :func:`check_url` resolves the host before a request (and before each redirect hop) and
   refuses with a clear reason ("resolves to 10.0.0.5, a private address").
2. :class:`GuardedBackend` is the network backend of every HTTP client we build
   (:func:`guarded_transport`). It resolves the host again *at connect time*, checks every
   address, and connects to the vetted IP itself, so a DNS answer that changes between the
   check and the connection (DNS rebinding) still cannot reach a forbidden address.

``settings.fetch.allow_private_addresses`` (tests, feeds served on the local network)
allows loopback, private, shared (CGNAT) and link-local addresses. Cloud metadata
addresses, multicast, unspecified (``0.0.0.0``) and reserved addresses stay refused even
then: nothing legitimate serves a feed there.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
import ssl
import typing
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpcore
import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: Instance-metadata endpoints of the big clouds (AWS/GCP/Azure/OpenStack, AWS IPv6,
#: Alibaba). Always refused, whatever the settings say.
METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200")
)

_ALLOWED_SCHEMES = ("http", "https")


class BlockedAddress(Exception):
    """A URL was refused by the SSRF guard; the message says which address and why."""


@dataclass(frozen=True)
class AddressPolicy:
    """What the guard allows. Built from ``FetchSettings.allow_private_addresses``."""

    allow_private: bool = False


def classify_address(ip: IPAddress) -> str | None:
    """Why an address is not a public one ("loopback", "private", ...), or None if public.

    The order matters: the most specific reason wins, so the message a user reads says
    "cloud metadata" rather than "link-local".
    """
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip in METADATA_ADDRESSES:
        return "cloud metadata"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_multicast:
        return "multicast"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_private:
        return "private"
    if ip in ipaddress.ip_network("100.64.0.0/10"):
        return "shared (carrier-grade NAT)"
    if ip.is_reserved:
        return "reserved"
    if not ip.is_global:
        return "not globally routable"
    return None


_ALLOWABLE_WITH_PRIVATE = frozenset(
    {"loopback", "link-local", "private", "shared (carrier-grade NAT)", "not globally routable"}
)


def refusal_reason(ip: IPAddress, policy: AddressPolicy) -> str | None:
    """None when ``policy`` lets us connect to ``ip``; otherwise the kind of address."""
    kind = classify_address(ip)
    if kind is None:
        return None
    if policy.allow_private and kind in _ALLOWABLE_WITH_PRIVATE:
        return None
    return kind


def _literal_ip(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return None


class ResolutionError(Exception):
    """DNS gave no usable answer. Hard for a feed (the host does not exist) unless the
    resolver said "try again" (``temporary``)."""

    def __init__(self, message: str, *, temporary: bool = False) -> None:
        super().__init__(message)
        self.temporary = temporary


async def resolve(host: str, port: int) -> list[IPAddress]:
    """All addresses ``host`` resolves to (the system resolver, without blocking the loop)."""
    literal = _literal_ip(host)
    if literal is not None:
        return [literal]
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        # EAI_AGAIN is a resolver hiccup; "no such name" means the feed URL is wrong.
        temporary = exc.errno == socket.EAI_AGAIN
        raise ResolutionError(
            f"cannot resolve host '{host}' ({exc.strerror or exc})", temporary=temporary
        ) from None
    out: list[IPAddress] = []
    for _family, _type, _proto, _canon, sockaddr in infos:
        ip = _literal_ip(str(sockaddr[0]))
        if ip is not None and ip not in out:
            out.append(ip)
    if not out:
        raise ResolutionError(f"cannot resolve host '{host}' (no addresses)")
    return out


async def vetted_addresses(host: str, port: int, policy: AddressPolicy) -> list[IPAddress]:
    """Resolve ``host`` and refuse if *any* address is forbidden.

    Any, not all: a name that answers with one public and one private address is either
    misconfigured or an attack, and a client that picks "the first allowed one" can be
    steered by the order of the answer.
    """
    addresses = await resolve(host, port)
    for ip in addresses:
        reason = refusal_reason(ip, policy)
        if reason is not None:
            shown = host if _literal_ip(host) is not None else f"{host} ({ip})"
            raise BlockedAddress(f"refused to connect to {shown}: {reason} address")
    return addresses


async def check_url(url: str, policy: AddressPolicy) -> None:
    """Refuse URLs we must never fetch: other schemes, and hosts with forbidden addresses.

    Raises :class:`BlockedAddress` or :class:`ResolutionError`.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _ALLOWED_SCHEMES:
        raise BlockedAddress(f"refused URL scheme '{scheme or '(none)'}' in {url!r}")
    host = parts.hostname
    if not host:
        raise BlockedAddress(f"URL without a host: {url!r}")
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError:
        raise BlockedAddress(f"URL with an invalid port: {url!r}") from None
    await vetted_addresses(host, port, policy)


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore network backend that vets the address it actually connects to."""

    def __init__(self, policy: AddressPolicy) -> None:
        self.policy = policy
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        # BlockedAddress / ResolutionError pass through httpx unchanged (it only maps
        # httpcore's own exceptions), so the caller sees the guard's reason as it is.
        addresses = await vetted_addresses(host, port, self.policy)
        last_error: Exception | None = None
        for ip in addresses:
            try:
                # TLS still verifies the certificate against the host name: httpcore passes
                # the request's host as server_hostname when it starts TLS on this stream.
                return await self._inner.connect_tcp(
                    str(ip),
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last_error = exc
        assert last_error is not None
        raise last_error

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise BlockedAddress("unix sockets are never used for feeds")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


@functools.cache
def shared_ssl_context() -> ssl.SSLContext:
    """One verified TLS context for every pool: loading the CA bundle takes ~40 ms, and a
    run may open pools for hundreds of hosts."""
    try:
        import certifi

        return ssl.create_default_context(cafile=certifi.where())
    except ImportError:  # pragma: no cover - certifi comes with httpx
        return ssl.create_default_context()


def guarded_transport(
    policy: AddressPolicy, limits: httpx.Limits, ssl_context: ssl.SSLContext | None = None
) -> httpx.AsyncHTTPTransport:
    """An httpx transport whose every connection goes through :class:`GuardedBackend`.

    httpx does not take a network backend as an argument, so the connection pool it made
    is replaced by an identical one that has our backend. tests/test_fetch.py checks that
    this replacement still takes effect, so an httpx upgrade that changes it fails loudly.
    Environment proxies are not used: through a proxy we could not vet the target address.
    """
    context = ssl_context or shared_ssl_context()
    transport = httpx.AsyncHTTPTransport(verify=context, limits=limits, trust_env=False)
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=context,
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        http1=True,
        http2=False,
        network_backend=GuardedBackend(policy),
    )
    return transport
