"""Fetching ``http(s)://`` images without letting clients reach private networks.

A server that fetches URLs for its clients can be turned against the network it sits in (cloud
metadata at 169.254.169.254, services on loopback or the LAN). The guard lives in the connection
itself: the network backend resolves the host, refuses the connection unless EVERY resolved address
is public, and then connects to one of those checked addresses. Checking in the connector (rather
than before the request) also covers redirects, and leaves no window for DNS rebinding between the
check and the connection. TLS still verifies the certificate against the URL's host name.
Environment proxies are ignored on purpose: a proxy would make the address check meaningless.
"""

from __future__ import annotations

import ipaddress
import socket
import time
import typing
from collections.abc import Callable
from urllib.parse import urljoin, urlsplit

import httpcore

from unime.serve.errors import APIError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_MAX_REDIRECTS = 3
_REDIRECTS = (301, 302, 303, 307, 308)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class AddressRefused(Exception):
    """The URL's host resolves to an address outside the public internet."""


def is_public_address(address: IPAddress) -> bool:
    """Whether a connection to ``address`` stays on the public internet.

    IPv6 forms that embed an IPv4 address (IPv4-mapped, 6to4, NAT64) are judged by the embedded
    address, since they route to it; Teredo is refused outright because its client part is not
    checkable.
    """
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        elif address.sixtofour is not None:
            address = address.sixtofour
        elif address in _NAT64:
            address = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        elif address.teredo is not None:
            return False
    return address.is_global and not (
        address.is_multicast
        or address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_reserved
        or address.is_unspecified
    )


def resolve_checked(host: str, port: int, allowed: Callable[[IPAddress], bool]) -> list[str]:
    """Resolve ``host`` and return its addresses, refusing if any one of them is not allowed.

    All addresses must pass, not just the one connected to: a name resolving to both a public and
    a private address is a classic way around a check of the first answer only.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise httpcore.ConnectError(f"cannot resolve {host!r}: {error}") from None
    addresses: list[str] = []
    for info in infos:
        text = str(info[4][0]).split("%", 1)[0]  # drop an IPv6 zone id
        if text not in addresses:
            addresses.append(text)
    for text in addresses:
        if not allowed(ipaddress.ip_address(text)):
            raise AddressRefused(f"host {host!r} resolves to {text}, which is not a public address")
    return addresses


class GuardedBackend(httpcore.SyncBackend):
    """A network backend that connects only to checked addresses of the requested host."""

    def __init__(self, allowed: Callable[[IPAddress], bool]) -> None:
        self._allowed = allowed

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[typing.Any] | None = None,
    ) -> httpcore.NetworkStream:
        last_error: Exception | None = None
        for address in resolve_checked(host, port, self._allowed):
            try:
                return super().connect_tcp(address, port, timeout, local_address, socket_options)
            except httpcore.ConnectError as error:
                last_error = error
        raise last_error or httpcore.ConnectError(f"no address to connect to for {host!r}")


class RemoteImageFetcher:
    """Downloads image bytes from public ``http(s)`` URLs under a size and time limit."""

    def __init__(
        self,
        *,
        max_bytes: int,
        timeout_s: float,
        allowed: Callable[[IPAddress], bool] = is_public_address,
    ) -> None:
        import httpx  # only for its certifi-backed TLS context

        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            max_connections=32,
            network_backend=GuardedBackend(allowed),
        )

    def close(self) -> None:
        self._pool.close()

    def __call__(self, url: str, param: str) -> bytes:
        """Fetch ``url`` (following at most 3 redirects), or raise :class:`APIError` for ``param``."""
        deadline = time.monotonic() + self.timeout_s
        for _ in range(_MAX_REDIRECTS + 1):
            _check_url(url, param)
            try:
                body, location = self._get(url, param, deadline)
            except AddressRefused as error:
                raise APIError(
                    400, f"{param}: refused: {error}", param=param, code="remote_address"
                ) from None
            except httpcore.TimeoutException:
                raise APIError(400, f"{param}: fetching {url} timed out", param=param) from None
            except httpcore.ConnectError as error:
                raise APIError(400, f"{param}: cannot connect for {url}: {error}", param=param) from None
            except httpcore.NetworkError as error:
                raise APIError(400, f"{param}: network error fetching {url}: {error}", param=param) from None
            except httpcore.ProtocolError as error:
                raise APIError(400, f"{param}: bad HTTP response from {url}: {error}", param=param) from None
            if location is None:
                return body
            url = urljoin(url, location)
        raise APIError(400, f"{param}: more than {_MAX_REDIRECTS} redirects", param=param)

    def _get(self, url: str, param: str, deadline: float) -> tuple[bytes, str | None]:
        """One GET: the body, or the redirect target when the response is a redirect."""
        remaining = max(deadline - time.monotonic(), 0.001)
        timeouts = {"connect": remaining, "read": remaining, "write": remaining, "pool": remaining}
        headers = [(b"User-Agent", b"unime-serve"), (b"Accept", b"image/*")]
        with self._pool.stream("GET", url, headers=headers, extensions={"timeout": timeouts}) as response:
            fields = {name.lower(): value for name, value in response.headers}
            if response.status in _REDIRECTS and b"location" in fields:
                return b"", fields[b"location"].decode("latin-1")
            if response.status != 200:
                raise APIError(400, f"{param}: {url} answered HTTP {response.status}", param=param)
            length = fields.get(b"content-length", b"").strip()
            if length.isdigit() and int(length) > self.max_bytes:
                raise _too_large(param, int(length), self.max_bytes)
            chunks: list[bytes] = []
            received = 0
            for chunk in response.iter_stream():
                received += len(chunk)
                if received > self.max_bytes:
                    raise _too_large(param, received, self.max_bytes, at_least=True)
                if time.monotonic() > deadline:
                    raise httpcore.ReadTimeout("total fetch time exceeded")
                chunks.append(chunk)
            return b"".join(chunks), None


def _check_url(url: str, param: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise APIError(400, f"{param}: {url!r} is not an http(s) URL with a host", param=param)
    if parts.username is not None or parts.password is not None:
        raise APIError(400, f"{param}: credentials in image URLs are not accepted", param=param)
    try:
        parts.port  # noqa: B018  (raises ValueError on a malformed port)
    except ValueError:
        raise APIError(400, f"{param}: {url!r} has an invalid port", param=param) from None


def _too_large(param: str, size: int, limit: int, *, at_least: bool = False) -> APIError:
    amount = f"more than {limit}" if at_least else str(size)
    return APIError(
        413,
        f"{param}: the remote image is {amount} bytes; the limit is max_image_bytes={limit}",
        param=param,
        code="max_image_bytes",
    )
