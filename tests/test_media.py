"""Image URL fetching: address checks, pinning, redirects, allow-list, limits, file:// paths.

Every fetch goes to the loopback image server. Names that should look public are resolved by a
stubbed resolver to 127.0.0.1; names and literals that must be refused (10.0.0.1, 169.254.169.254)
are refused before any connection, and the stub makes sure no DNS query leaves the machine.
"""

from __future__ import annotations

import asyncio
import ipaddress
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import vlmserve.images.fetch as media
from tests.image_server import ImageServer, image_server, png_bytes
from vlmserve.api.errors import BadRequestError
from vlmserve.images.fetch import MediaFetcher, MediaPolicy, domain_allowed, is_public_address

PARAM = "messages[0].content[1].image_url"
LOOPBACK = ipaddress.ip_address("127.0.0.1")


@pytest.fixture(scope="module")
def images() -> Iterator[ImageServer]:
    with image_server() as server:
        yield server


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """A stub resolver: names map to the given addresses; any other name fails (no real DNS)."""
    table: dict[str, list[str]] = {}
    calls: list[str] = []

    async def resolve(host: str, port: int) -> list[media.IPAddress]:
        calls.append(host)
        try:
            return [ipaddress.ip_address(host)]
        except ValueError:
            pass
        if host not in table:
            raise OSError("unknown host")
        return [ipaddress.ip_address(a) for a in table[host]]

    monkeypatch.setattr(media, "resolve", resolve)
    table["__calls__"] = calls  # type: ignore[assignment]
    return table


@pytest.fixture
def loopback_is_public(monkeypatch: pytest.MonkeyPatch) -> None:
    """Treat 127.0.0.1 as public, so a "public" host can be played by the loopback server."""
    real = media.is_public_address
    monkeypatch.setattr(media, "is_public_address", lambda ip: ip == LOOPBACK or real(ip))


def fetcher(**overrides: object) -> MediaFetcher:
    policy: dict[str, object] = {"max_bytes": 1_000_000, "timeout": 2.0}
    return MediaFetcher(MediaPolicy(**{**policy, **overrides}))  # type: ignore[arg-type]


def refused(fetch: MediaFetcher, url: str) -> BadRequestError:
    with pytest.raises(BadRequestError) as err:
        asyncio.run(fetch.fetch(url, PARAM))
    assert err.value.param == PARAM
    return err.value


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "240.0.0.1",
        "255.255.255.255",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "64:ff9b::a00:1",
        "2002:a00:1::1",
    ],
)
def test_non_public_addresses_are_recognised(address: str) -> None:
    assert not is_public_address(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700::1111"])
def test_public_addresses_are_recognised(address: str) -> None:
    assert is_public_address(ipaddress.ip_address(address))


def test_domain_allow_list_matches_host_or_subdomain() -> None:
    allowed = ("example.com",)
    assert domain_allowed("example.com", allowed)
    assert domain_allowed("cdn.example.com", allowed)
    assert domain_allowed("CDN.Example.com.", allowed)
    assert not domain_allowed("evilexample.com", allowed)
    assert not domain_allowed("example.com.evil.net", allowed)
    assert domain_allowed("anything.net", ())


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/image.png",
        "http://[::ffff:169.254.169.254]/",
        "http://0.0.0.0/",
        "http://[::1]/image.png",
    ],
)
def test_private_literals_are_refused_before_connecting(url: str, dns: dict) -> None:
    error = refused(fetcher(), url)
    assert error.code == "image_url_not_allowed"


def test_name_resolving_to_a_private_address_is_refused(images: ImageServer, dns: dict) -> None:
    dns["internal.test"] = ["93.184.216.34", "10.0.0.1"]  # one bad address is enough
    error = refused(fetcher(), f"http://internal.test:{images.port}/image.png")
    assert "private" in error.message
    dns["loop.test"] = ["127.0.0.1"]
    refused(fetcher(), f"http://loop.test:{images.port}/image.png")
    assert images.seen.requests == []


def test_public_name_is_fetched_from_the_checked_address(
    images: ImageServer, dns: dict, loopback_is_public: None
) -> None:
    """The connection goes to the address that was checked; Host still names the host."""
    dns["images.example"] = ["127.0.0.1"]
    images.seen.requests.clear()
    data = asyncio.run(
        fetcher().fetch(f"http://images.example:{images.port}/image.png?w=10&h=7", PARAM)
    )
    assert data == png_bytes(10, 7)
    assert images.seen.requests == [("/image.png", f"images.example:{images.port}")]
    assert dns["__calls__"].count("images.example") == 1


@pytest.fixture(scope="module")
def tls_images(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ImageServer, Path]]:
    """An HTTPS image server on loopback with a self-signed certificate for images.example."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
        + ["-keyout", str(key), "-out", str(cert), "-subj", "/CN=images.example"]
        + ["-addext", "subjectAltName=DNS:images.example"],
        check=True,
        capture_output=True,
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    with image_server(tls=context) as server:
        yield server, cert


def test_https_is_pinned_and_verified_against_the_hostname(
    tls_images: tuple[ImageServer, Path], dns: dict, loopback_is_public: None
) -> None:
    """Connecting to the checked address keeps TLS honest: SNI and the certificate name the host."""
    server, cert = tls_images
    trust = ssl.create_default_context(cafile=str(cert))
    fetch = MediaFetcher(MediaPolicy(max_bytes=1_000_000, timeout=5.0), tls=trust)
    dns["images.example"] = ["127.0.0.1"]
    dns["other.example"] = ["127.0.0.1"]
    url = f"https://images.example:{server.port}/image.png"
    assert asyncio.run(fetch.fetch(url, PARAM)) == png_bytes()
    assert server.seen.requests[-1] == ("/image.png", f"images.example:{server.port}")
    wrong_name = refused(fetch, f"https://other.example:{server.port}/image.png")
    assert wrong_name.code == "image_fetch_failed"


def test_every_redirect_is_checked_again(
    images: ImageServer, dns: dict, loopback_is_public: None
) -> None:
    dns["images.example"] = ["127.0.0.1"]
    dns["internal.example"] = ["10.0.0.1"]
    start = f"http://images.example:{images.port}/redirect?to="
    for target in ("http://internal.example/", "http://169.254.169.254/"):
        assert refused(fetcher(), start + target).code == "image_url_not_allowed"
    assert refused(fetcher(), start + "file:///etc/passwd").code == "invalid_image_url"
    follows = start + f"http://images.example:{images.port}/image.png"
    assert asyncio.run(fetcher().fetch(follows, PARAM)) == png_bytes()


def test_redirect_outside_the_allow_list_is_refused(images: ImageServer, dns: dict) -> None:
    """The allow-list applies to every hop (the redirect bypass of CVE-2025-6242)."""
    fetch = fetcher(allowed_domains=("127.0.0.1",), allow_private=True)
    assert asyncio.run(fetch.fetch(images.url("/image.png"), PARAM)) == png_bytes()
    images.seen.requests.clear()
    hop = images.url("/redirect?to=" + images.url("/image.png", host="localhost"))
    error = refused(fetch, hop)
    assert error.code == "image_url_not_allowed"
    assert [path for path, _ in images.seen.requests] == ["/redirect"]
    refused(fetch, images.url("/image.png", host="localhost"))


def test_redirects_stop_after_three(images: ImageServer) -> None:
    fetch = fetcher(allow_private=True)
    url = images.url("/image.png")
    for _ in range(3):
        url = images.url("/redirect?to=") + url
    assert asyncio.run(fetch.fetch(url, PARAM)) == png_bytes()
    error = refused(fetch, images.url("/redirect?to=") + url)
    assert "redirected more than 3" in error.message


def test_byte_cap_is_enforced_while_streaming(images: ImageServer) -> None:
    error = refused(fetcher(allow_private=True, max_bytes=200_000), images.url("/endless"))
    assert error.code == "image_too_large"
    small = fetcher(allow_private=True, max_bytes=100)
    assert refused(small, images.url("/image.png")).code == "image_too_large"


def test_a_stalled_url_times_out(images: ImageServer) -> None:
    error = refused(fetcher(allow_private=True, timeout=0.5), images.url("/stall"))
    assert error.code == "image_fetch_timeout"


def test_malformed_urls_are_refused(images: ImageServer, dns: dict) -> None:
    for url in ("http://[::1", "http://\u2603\u2603..com/", "http://", "http://127.0.0.1:99999/"):
        assert refused(fetcher(allow_private=True), url).code == "invalid_image_url"
    refused(fetcher(allow_private=True), images.url("/redirect?to=http://[::1"))


def test_other_schemes_are_refused() -> None:
    for url in ("ftp://example.com/a.png", "gopher://127.0.0.1/", "file:///etc/passwd"):
        refused(fetcher(), url)


def test_file_urls_only_under_the_allowed_folder(tmp_path: Path) -> None:
    root = tmp_path / "media"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "cat.png").write_bytes(png_bytes())
    (tmp_path / "secret.png").write_bytes(png_bytes())
    (root / "link.png").symlink_to(tmp_path / "secret.png")
    fetch = fetcher(local_root=root.resolve())
    assert asyncio.run(fetch.fetch(f"file://{root}/sub/cat.png", PARAM)) == png_bytes()
    for url in (
        f"file://{root}/sub/../../secret.png",
        f"file://{root}/sub/%2e%2e/%2e%2e/secret.png",
        f"file://{root}/link.png",
        f"file://{root}/sub",
        f"file://{root}/missing.png",
        f"file://otherhost{root}/sub/cat.png",
        "file://[::1",
    ):
        refused(fetch, url)
    assert refused(fetcher(), f"file://{root}/sub/cat.png").code == "image_url_not_allowed"
