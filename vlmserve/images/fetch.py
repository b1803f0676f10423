"""Fetching image URLs safely: ``http(s)`` with an address check, ``file://`` under one folder.

An image URL is a request the server makes on a client's behalf, so it must not reach what the
client cannot (cloud metadata at 169.254.169.254, services on loopback or the private network).
The host is resolved once, every address it resolves to is checked, and the connection goes to
the checked address with the hostname kept for the ``Host`` header and TLS (SNI and the
certificate check): a DNS answer that changes between check and connect cannot redirect it.
Redirects are followed by hand and each hop is checked again. Timeouts and a byte cap, enforced
while the body streams in, keep a slow or endless URL from holding the server.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import httpx

from vlmserve.api.errors import BadRequestError
from vlmserve.config import Settings

logger = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
MAX_REDIRECTS = 3
_REDIRECTS = {301, 302, 303, 307, 308}
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


@dataclass(frozen=True)
class MediaPolicy:
    """Where image URLs may point, and how long and how big a fetch may be."""

    max_bytes: int
    timeout: float
    allowed_domains: tuple[str, ...] = ()
    allow_private: bool = False
    local_root: Path | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> MediaPolicy:
        """The policy the settings describe."""
        domains = tuple(
            d.strip().lower().rstrip(".")
            for d in (settings.allowed_media_domains or "").split(",")
            if d.strip()
        )
        root = settings.allowed_local_media_path
        return cls(
            max_bytes=settings.max_image_bytes,
            timeout=settings.media_fetch_timeout_seconds,
            allowed_domains=domains,
            allow_private=settings.allow_private_media_urls,
            local_root=root.resolve() if root is not None else None,
        )


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, 6to4, Teredo, NAT64), if any."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def is_public_address(ip: IPAddress) -> bool:
    """Whether ``ip`` is a global unicast address (not loopback, private, link-local, ...)."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            return is_public_address(embedded)
    return ip.is_global and not (
        ip.is_multicast
        or ip.is_reserved
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_private
        or ip.is_unspecified
    )


async def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to (an IP literal resolves to itself, without DNS)."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    # Scope ids ("fe80::1%eth0") are dropped: the address itself is what gets checked.
    return [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]


def domain_allowed(host: str, allowed: tuple[str, ...]) -> bool:
    """Whether ``host`` is one of ``allowed`` or a subdomain of one (an empty list allows all)."""
    host = host.lower().rstrip(".")
    return not allowed or any(host == d or host.endswith("." + d) for d in allowed)


class MediaFetcher:
    """Turns ``http(s)://`` and ``file://`` image URLs into bytes, or a 400 naming ``param``."""

    def __init__(self, policy: MediaPolicy, tls: ssl.SSLContext | None = None) -> None:
        self.policy = policy
        self._tls = tls or ssl.create_default_context()

    async def fetch(self, url: str, param: str) -> bytes:
        """The bytes behind ``url``; any refusal or failure is a :class:`BadRequestError`."""
        scheme = url.partition(":")[0].lower()
        if scheme in ("http", "https"):
            try:
                async with asyncio.timeout(self.policy.timeout):
                    return await self._fetch_http(url, param)
            except httpx.InvalidURL:
                # A malformed URL, or a redirect to one.
                raise _refuse("The image URL is not valid.", param, "invalid_image_url") from None
            except TimeoutError:
                raise _refuse(
                    f"Fetching the image took longer than {self.policy.timeout:g} seconds.",
                    param,
                    "image_fetch_timeout",
                ) from None
        if scheme == "file":
            return await asyncio.to_thread(self._read_file, url, param)
        raise _refuse(
            "Image URLs must be data:, http(s):// or (when enabled) file:// URLs.",
            param,
            "unsupported_image_url",
        )

    async def _fetch_http(self, url: str, param: str) -> bytes:
        target = httpx.URL(url)
        async with httpx.AsyncClient(
            verify=self._tls, trust_env=False, timeout=self.policy.timeout
        ) as client:
            for _ in range(MAX_REDIRECTS + 1):
                ip = await self._checked_address(target, param)
                try:
                    response = await client.send(_pinned_request(client, target, ip), stream=True)
                    try:
                        location = response.headers.get("location")
                        if response.status_code in _REDIRECTS and location:
                            target = target.join(location)
                            continue
                        _check_status(response, target, param)
                        return await self._read_body(response, param)
                    finally:
                        await response.aclose()
                except httpx.TimeoutException:
                    raise TimeoutError from None
                except httpx.HTTPError as exc:
                    logger.info("image fetch from %s failed: %s", target.host, type(exc).__name__)
                    message = f"Could not fetch the image from {target.host}."
                    raise _refuse(message, param, "image_fetch_failed") from None
        raise _refuse(
            f"The image URL redirected more than {MAX_REDIRECTS} times.",
            param,
            "image_fetch_failed",
        )

    async def _checked_address(self, url: httpx.URL, param: str) -> IPAddress:
        """Check a URL's scheme, domain and every address it resolves to; return one to use."""
        host = _host(url)
        if url.scheme not in ("http", "https") or not host:
            message = "Image URLs must be http(s) URLs with a host."
            raise _refuse(message, param, "invalid_image_url")
        if not domain_allowed(host, self.policy.allowed_domains):
            raise _refuse(
                f"Images may not be fetched from {host}: it is not an allowed media domain.",
                param,
                "image_url_not_allowed",
            )
        port = url.port or (443 if url.scheme == "https" else 80)
        if not 0 < port < 65536:
            raise _refuse(f"{port} is not a TCP port.", param, "invalid_image_url")
        try:
            addresses = await resolve(host, port)
        except (OSError, UnicodeError):
            raise _refuse(
                f"Could not resolve the image host {host}.", param, "image_fetch_failed"
            ) from None
        if not addresses:
            raise _refuse(f"The image host {host} has no address.", param, "image_fetch_failed")
        if not self.policy.allow_private and not all(is_public_address(a) for a in addresses):
            raise _refuse(
                f"Images may not be fetched from {host}: it resolves to a private, loopback "
                "or link-local address.",
                param,
                "image_url_not_allowed",
            )
        return addresses[0]

    async def _read_body(self, response: httpx.Response, param: str) -> bytes:
        limit = self.policy.max_bytes
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise too_large(limit, param)
        body = bytearray()
        async for chunk in response.aiter_raw():
            body += chunk
            if len(body) > limit:
                raise too_large(limit, param)
        return bytes(body)

    def _read_file(self, url: str, param: str) -> bytes:
        root = self.policy.local_root
        if root is None:
            raise _refuse("file:// image URLs are not enabled.", param, "image_url_not_allowed")
        try:
            parts = urlsplit(url)
        except ValueError:
            raise _refuse("The image URL is not valid.", param, "invalid_image_url") from None
        if parts.netloc not in ("", "localhost"):
            raise _refuse("file:// URLs must name a local path.", param, "invalid_image_url")
        try:
            # resolve() follows symlinks and "..": the check is on the real file.
            path = Path(unquote(parts.path)).resolve(strict=True)
        except (OSError, RuntimeError):
            raise _refuse("The image file does not exist.", param, "image_not_found") from None
        if not path.is_relative_to(root) or not path.is_file():
            raise _refuse(
                "file:// image URLs must point to a file under the allowed media folder.",
                param,
                "image_url_not_allowed",
            )
        with path.open("rb") as file:
            data = file.read(self.policy.max_bytes + 1)
        if len(data) > self.policy.max_bytes:
            raise too_large(self.policy.max_bytes, param)
        return data


def _pinned_request(client: httpx.AsyncClient, url: httpx.URL, ip: IPAddress) -> httpx.Request:
    """A GET to ``ip`` that still names ``url``'s host (Host header, TLS SNI and certificate)."""
    host = _host(url)
    name = f"[{host}]" if ":" in host else host
    # Identity encoding: the byte cap then counts what arrives, not what a gzip body expands to.
    return client.build_request(
        "GET",
        url.copy_with(host=str(ip)),
        headers={
            "Host": name if url.port is None else f"{name}:{url.port}",
            "Accept": "image/*",
            "Accept-Encoding": "identity",
        },
        extensions={"sni_hostname": host},
    )


def _host(url: httpx.URL) -> str:
    """The URL's host in ASCII (IDNA), lower case, as DNS and the allow-list see it."""
    return url.raw_host.decode("ascii").lower().rstrip(".")


def _check_status(response: httpx.Response, url: httpx.URL, param: str) -> None:
    if response.status_code != 200:
        raise _refuse(
            f"Fetching the image from {url.host} answered HTTP {response.status_code}.",
            param,
            "image_fetch_failed",
        )


def _refuse(message: str, param: str, code: str) -> BadRequestError:
    return BadRequestError(message, param=param, code=code)


def too_large(limit: int, param: str) -> BadRequestError:
    """The 400 for an encoded image over the byte limit, however it arrived."""
    return BadRequestError(
        f"Image is larger than the {limit}-byte limit.", param=param, code="image_too_large"
    )
