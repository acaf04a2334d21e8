"""Which webhook URLs picserve calls: no server-side request forgery.

A webhook URL must be `http://` or `https://`, at most MAX_URL_CHARS characters, with a host. Every
address its host resolves to must be globally routable: loopback, link-local (the cloud metadata
address 169.254.169.254 among them), private (RFC 1918, ULA fc00::/7 with AWS's fd00:ec2::254),
shared (100.64/10), unspecified, multicast and reserved addresses are refused, as are IPv6 forms that
embed one (IPv4-mapped, 6to4, NAT64). The operator may allow some anyway with PICSERVE_WEBHOOK_ALLOW:
comma-separated CIDRs (an address in one is allowed) and host names (allowed whatever they resolve
to). The check runs when a request names a webhook, and again before each delivery (DNS may have
changed); a delivery then connects to the very address that was checked.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import SplitResult, urlsplit

from picserve import errors

__all__ = [
    "MAX_URL_CHARS",
    "Allow",
    "Refused",
    "Target",
    "Unresolved",
    "check",
    "check_syntax",
    "parse_allow",
    "target",
]

MAX_URL_CHARS = 2048
#: seconds a host name may take to resolve
RESOLVE_TIMEOUT = 5.0

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[list[Address]]]

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class Refused(Exception):
    """The webhook URL's host is an address picserve does not call (its message names the field)."""


class Unresolved(Exception):
    """The webhook URL's host does not resolve (its message names the field)."""


@dataclass(frozen=True)
class Allow:
    """PICSERVE_WEBHOOK_ALLOW: networks and host names allowed although not public."""

    networks: tuple[Network, ...] = ()
    hosts: frozenset[str] = frozenset()

    def allows_host(self, host: str) -> bool:
        return host.lower().rstrip(".") in self.hosts

    def allows_address(self, address: Address) -> bool:
        return any(address in network for network in self.networks)


@lru_cache(maxsize=8)
def parse_allow(text: str | None) -> Allow:
    """`10.0.0.0/8, 127.0.0.1/32, hooks.internal` → Allow; ValueError names a bad entry."""
    networks: list[Network] = []
    hosts: set[str] = set()
    for entry in (part.strip() for part in (text or "").split(",")):
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
            continue
        except ValueError:
            pass
        if "/" in entry or not all(c.isalnum() or c in "-._" for c in entry):
            raise ValueError(f"PICSERVE_WEBHOOK_ALLOW: {entry!r} is neither a CIDR nor a host name")
        hosts.add(entry.lower().rstrip("."))
    return Allow(tuple(networks), frozenset(hosts))


@dataclass(frozen=True)
class Target:
    """A checked webhook URL: its parts, and the addresses a delivery may connect to (empty when its
    host is allowed by name: then it is resolved as usual)."""

    url: str
    parts: SplitResult
    host: str
    port: int
    addresses: tuple[Address, ...]


def check_syntax(url: str, field: str = "Webhook.Url") -> tuple[SplitResult, str, int]:
    """The URL's parts, host and port; ParamError naming `field` when it is not an http(s) URL."""
    if len(url) > MAX_URL_CHARS:
        raise errors.ParamError(f"{field}: must be at most {MAX_URL_CHARS} characters (got {len(url)})")
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        raise errors.ParamError(f"{field}: must not hold spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
        host = parts.hostname
    except ValueError as exc:
        raise errors.ParamError(f"{field}: not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https"):
        raise errors.ParamError(f"{field}: must be an http:// or https:// URL (got {_clip(url)!r})")
    if not host:
        raise errors.ParamError(f"{field}: the URL has no host (got {_clip(url)!r})")
    try:
        host.encode("idna")
    except UnicodeError:
        raise errors.ParamError(f"{field}: {_clip(host)!r} is not a valid host name") from None
    return parts, host, port or (443 if parts.scheme == "https" else 80)


async def check(url: str, allow: Allow, field: str = "Webhook.Url", resolve: Resolver | None = None) -> Target:
    """The URL checked when a request names it: ParamError (RetCode 160) naming `field` when it is
    not an http(s) URL, its host does not resolve or is an address picserve does not call."""
    try:
        return await target(url, allow, field, resolve)
    except (Refused, Unresolved) as exc:
        raise errors.ParamError(str(exc)) from None


async def target(url: str, allow: Allow, field: str = "Webhook.Url", resolve: Resolver | None = None) -> Target:
    """The URL checked (see the module's docstring) before a delivery: Refused for an address
    picserve does not call, Unresolved for a host that does not resolve, ParamError for a URL that is
    not http(s)."""
    parts, host, port = check_syntax(url, field)
    if allow.allows_host(host):
        return Target(url, parts, host, port, ())
    literal = _literal(host)
    addresses = [literal] if literal is not None else await (resolve or _resolve)(host, port)
    if not addresses:
        raise Unresolved(f"{field}: host {_clip(host)!r} does not resolve")
    for address in addresses:
        if _blocked(address) and not allow.allows_address(address):
            what = "is" if literal is not None else f"resolves to {address}, which is"
            raise Refused(
                f"{field}: host {_clip(host)!r} {what} not a public address (loopback, private, link-local, "
                "metadata, multicast or reserved); the operator may allow it with PICSERVE_WEBHOOK_ALLOW"
            )
    return Target(url, parts, host, port, tuple(addresses))


def _literal(host: str) -> Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _blocked(address: Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None and _blocked(embedded):
            return True
    return not address.is_global or address.is_multicast or address.is_reserved or address.is_unspecified


async def _resolve(host: str, port: int) -> list[Address]:
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP), RESOLVE_TIMEOUT
        )
    except (OSError, UnicodeError, ValueError, TimeoutError):
        return []
    found: list[Address] = []
    for family, *_, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6):
            address = ipaddress.ip_address(str(sockaddr[0]).split("%")[0])
            if address not in found:
                found.append(address)
    return found


def _clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else f"{text[:limit]}…"
