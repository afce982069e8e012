"""Fetching a document named by URL (a ``file`` input whose agent allows ``url``), safely.

- Only ``http`` and ``https``.
- Private, loopback, link-local, multicast and reserved addresses are refused, unless the
  host or the address is in the configured allow-list. The check runs on every redirect
  hop *and* inside the connector's resolver, so a name that resolves to a public address
  when checked and to a private one when connecting (DNS rebinding) is still refused.
- Size-limited while reading (a ``Content-Length`` over the limit is refused before the
  body is read) and time-limited as a whole.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from copydesk.errors import CopydeskError

MAX_REDIRECTS = 5
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class FetchFailed(CopydeskError):
    """The URL could not be fetched; the message says why (refused, too large, timed out)."""


@dataclass(frozen=True)
class Fetched:
    url: str  # after redirects
    data: bytes
    content_type: str  # without parameters, lower case ("" when the server sent none)
    filename: str  # the last path segment, decoded ("" when the path has none)


class AddressPolicy:
    """Which addresses may be fetched: public ones, plus an allow-list of hosts/networks."""

    def __init__(self, allow: list[str]) -> None:
        self._hosts: set[str] = set()
        self._networks: list[IPNetwork] = []
        for entry in allow:
            entry = entry.strip()
            if not entry:
                continue
            try:
                self._networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                self._hosts.add(entry.lower().rstrip("."))

    def host_allowed(self, host: str) -> bool:
        return host.lower().rstrip(".") in self._hosts

    def address_allowed(self, host: str, address: str) -> bool:
        if self.host_allowed(host):
            return True
        ip = _ip(address)
        if ip is None:
            return False
        if any(ip in net for net in self._networks):
            return True
        return _public(ip)


def _ip(text: str) -> IPAddress | None:
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _public(ip: IPAddress) -> bool:
    return ip.is_global and not (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
    )


class RefusedAddress(OSError):
    pass


class GuardedResolver(AbstractResolver):
    """aiohttp's resolver, keeping only the addresses the policy allows."""

    def __init__(self, policy: AddressPolicy) -> None:
        self._policy = policy
        self._inner = aiohttp.ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        allowed = [r for r in found if self._policy.address_allowed(host, r["host"])]
        if not allowed:
            raise RefusedAddress(f"{host} resolves only to private or reserved addresses")
        return allowed

    async def close(self) -> None:
        await self._inner.close()


def check_url_syntax(url: str) -> str | None:
    """Why ``url`` cannot be fetched without looking it up (None when it may be)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "is not a valid URL"
    if parts.scheme not in ("http", "https"):
        return "must be an http:// or https:// URL"
    if not parts.hostname:
        return "has no host"
    return None


_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def looks_like_url(value: str) -> bool:
    """A value written as a URL (any scheme: an unsupported one is then refused clearly)."""
    return bool(_SCHEME.match(value))


def refusal(policy: AddressPolicy, url: str) -> str | None:
    """A reason to refuse ``url`` under ``policy`` known without DNS (bad syntax, a private
    IP literal); None when it may be tried (the resolver still checks the names)."""
    problem = check_url_syntax(url)
    if problem:
        return problem
    host = urlsplit(url).hostname or ""
    if _ip(host) is not None and not policy.address_allowed(host, host):
        return f"points at a private or reserved address ({host}), which is not allowed"
    return None


class UrlFetcher:
    def __init__(self, allow: list[str], timeout_s: float) -> None:
        self.policy = AddressPolicy(allow)
        self._timeout_s = timeout_s

    def refusal(self, url: str) -> str | None:
        """A reason to refuse ``url`` known without DNS (bad syntax, a private IP literal)."""
        return refusal(self.policy, url)

    async def fetch(self, url: str, max_bytes: int) -> Fetched:
        try:
            async with asyncio.timeout(self._timeout_s):
                return await self._fetch(url, max_bytes)
        except TimeoutError:
            raise FetchFailed(f"{url}: no complete answer within {self._timeout_s:g}s") from None

    async def _fetch(self, url: str, max_bytes: int) -> Fetched:
        connector = aiohttp.TCPConnector(resolver=GuardedResolver(self.policy), limit=1)
        async with aiohttp.ClientSession(connector=connector, trust_env=False) as session:
            current = url
            for _ in range(MAX_REDIRECTS + 1):
                await self._check_hop(current)
                try:
                    async with session.get(
                        current, allow_redirects=False, headers={"Accept": "*/*"}
                    ) as response:
                        if response.status in (301, 302, 303, 307, 308):
                            location = response.headers.get("Location")
                            if not location:
                                raise FetchFailed(f"{current}: redirect without a Location")
                            current = urljoin(current, location)
                            continue
                        if response.status >= 400:
                            raise FetchFailed(f"{current}: the server answered {response.status}")
                        data = await _read_limited(response, max_bytes, current)
                        content_type = response.headers.get("Content-Type", "")
                        path = urlsplit(str(response.url)).path
                        return Fetched(
                            url=str(response.url),
                            data=data,
                            content_type=content_type.split(";", 1)[0].strip().lower(),
                            filename=unquote(path.rsplit("/", 1)[-1]),
                        )
                except aiohttp.ClientConnectorError as exc:
                    if isinstance(exc.os_error, RefusedAddress):
                        raise FetchFailed(f"{current}: {exc.os_error}") from None
                    raise FetchFailed(f"{current}: could not connect ({exc.os_error})") from None
                except aiohttp.ClientError as exc:
                    raise FetchFailed(f"{current}: {type(exc).__name__}: {exc}") from None
            raise FetchFailed(f"{url}: more than {MAX_REDIRECTS} redirects")

    async def _check_hop(self, url: str) -> None:
        reason = self.refusal(url)
        if reason:
            raise FetchFailed(f"{url} {reason}")
        host = urlsplit(url).hostname or ""
        if _ip(host) is not None or self.policy.host_allowed(host):
            return
        loop = asyncio.get_running_loop()
        try:
            infos: list[Any] = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise FetchFailed(f"{url}: the host could not be resolved ({exc})") from None
        for info in infos:
            address = str(info[4][0])
            if not self.policy.address_allowed(host, address):
                raise FetchFailed(
                    f"{url}: {host} resolves to a private or reserved address ({address}), "
                    "which is not allowed (see COPYDESK_URL_FETCH_ALLOW)"
                )


async def _read_limited(response: aiohttp.ClientResponse, max_bytes: int, url: str) -> bytes:
    declared = response.content_length
    if declared is not None and declared > max_bytes:
        raise FetchFailed(
            f"{url}: the document is {declared} bytes, over the {max_bytes}-byte limit"
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > max_bytes:
            raise FetchFailed(f"{url}: the document is over the {max_bytes}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)
