"""Fetch and SSRF guard against a real local HTTP server (pytest-httpserver, threaded).

Tests talk to 127.0.0.1, so they set ``allow_private_addresses=True`` explicitly; the
guard tests at the bottom turn it off and prove that nothing is ever sent.
"""

from __future__ import annotations

import asyncio
import gzip
import socket
import time
import zlib
from collections.abc import Iterator
from email.utils import formatdate
from pathlib import Path
from typing import Any

import httpx
import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from pipeline import netguard
from pipeline.config import FetchSettings
from pipeline.fetch import Fetcher, parse_retry_after, read_feed_file
from pipeline.models import FetchResult
from pipeline.netguard import AddressPolicy, BlockedAddress, classify_address, guarded_transport

FIXTURES = Path(__file__).parent / "fixtures" / "feeds"
FEED = (FIXTURES / "eastern-europe-wire.rss.xml").read_bytes()


def settings(**overrides: Any) -> FetchSettings:
    base: dict[str, Any] = {
        "allow_private_addresses": True,  # the test server is on loopback
        "connect_timeout_s": 1.0,
        "read_timeout_s": 1.0,
        "total_timeout_s": 5.0,
        "max_retries": 2,
        "retry_backoff_s": 0.05,
        "max_retry_after_s": 2.0,
    }
    base.update(overrides)
    return FetchSettings(**base)


def wait_for_log(server: HTTPServer, entries: int, timeout: float = 3.0) -> None:
    """Let handlers that the client abandoned finish, so their late log entries do not
    land in the next test's log."""
    deadline = time.monotonic() + timeout
    while len(server.log) < entries and time.monotonic() < deadline:
        time.sleep(0.05)


def fetch(url: str, s: FetchSettings | None = None, **kwargs: Any) -> FetchResult:
    async def go() -> FetchResult:
        async with Fetcher(s or settings()) as fetcher:
            return await fetcher.fetch_feed("test-feed", url, **kwargs)

    return asyncio.run(go())


# --------------------------------------------------------------------------- success


def test_200_returns_body_validators_and_sends_user_agent(server: HTTPServer) -> None:
    server.expect_request("/feed.xml").respond_with_data(
        FEED,
        content_type="application/rss+xml; charset=utf-8",
        headers={"ETag": '"v1"', "Last-Modified": "Tue, 05 Mar 2024 09:41:07 GMT"},
    )
    result = fetch(server.url_for("/feed.xml"))
    assert result.ok and result.status == 200
    assert result.content == FEED
    assert result.etag == '"v1"'
    assert result.last_modified == "Tue, 05 Mar 2024 09:41:07 GMT"
    assert result.declared_encoding == "utf-8"
    request = server.log[0][0]
    assert request.headers["User-Agent"].startswith("Stancewatch/")
    assert "gzip" in request.headers["Accept-Encoding"]
    assert "application/rss+xml" in request.headers["Accept"]


def test_304_with_etag_and_last_modified(server: HTTPServer) -> None:
    seen: list[dict[str, str | None]] = []

    def handler(request: Request) -> Response:
        seen.append(
            {
                "etag": request.headers.get("If-None-Match"),
                "since": request.headers.get("If-Modified-Since"),
            }
        )
        if request.headers.get("If-None-Match") == '"v1"':
            return Response(status=304, headers={"ETag": '"v1"'})
        return Response(
            FEED, headers={"ETag": '"v1"', "Last-Modified": "Tue, 05 Mar 2024 09:41:07 GMT"}
        )

    server.expect_request("/feed.xml").respond_with_handler(handler)
    first = fetch(server.url_for("/feed.xml"))
    second = fetch(server.url_for("/feed.xml"), etag=first.etag, last_modified=first.last_modified)
    assert first.status == 200 and not first.not_modified
    assert second.ok and second.status == 304 and second.not_modified
    assert second.content is None
    assert seen[1] == {"etag": '"v1"', "since": "Tue, 05 Mar 2024 09:41:07 GMT"}


def test_gzip_and_deflate_are_decoded(server: HTTPServer) -> None:
    server.expect_request("/gz").respond_with_data(
        gzip.compress(FEED), headers={"Content-Encoding": "gzip"}, content_type="text/xml"
    )
    server.expect_request("/deflate").respond_with_data(
        zlib.compress(FEED), headers={"Content-Encoding": "deflate"}, content_type="text/xml"
    )
    raw = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    raw_deflate = raw.compress(FEED) + raw.flush()
    server.expect_request("/raw-deflate").respond_with_data(
        raw_deflate, headers={"Content-Encoding": "deflate"}, content_type="text/xml"
    )
    # A .xml.gz served without Content-Encoding (static hosting does this).
    server.expect_request("/feed.xml.gz").respond_with_data(
        gzip.compress(FEED), content_type="application/octet-stream"
    )
    for path in ("/gz", "/deflate", "/raw-deflate", "/feed.xml.gz"):
        result = fetch(server.url_for(path))
        assert result.ok, (path, result.error)
        assert result.content == FEED, path


# ------------------------------------------------------------------ failures, graded


def test_429_with_retry_after_is_honoured_then_succeeds(server: HTTPServer) -> None:
    server.expect_oneshot_request("/busy").respond_with_data(
        "slow down", status=429, headers={"Retry-After": "1"}
    )
    server.expect_request("/busy").respond_with_data(FEED)
    started = time.monotonic()
    result = fetch(server.url_for("/busy"))
    assert result.ok and result.status == 200
    assert result.attempts == 2
    assert time.monotonic() - started >= 0.9  # it waited as asked


def test_429_with_long_retry_after_is_left_to_the_feed_state(server: HTTPServer) -> None:
    server.expect_request("/busy").respond_with_data(
        "slow down", status=429, headers={"Retry-After": "3600"}
    )
    started = time.monotonic()
    result = fetch(server.url_for("/busy"))
    assert time.monotonic() - started < 1.5  # did not sleep an hour (nor retry)
    assert not result.ok and result.status == 429
    assert result.failure_kind == "temporary"
    assert result.retry_after_s == 3600
    assert "429" in (result.error or "")
    assert len(server.log) == 1


def test_503_with_http_date_retry_after(server: HTTPServer) -> None:
    when = formatdate(time.time() + 600, usegmt=True)
    server.expect_request("/down").respond_with_data(
        "maintenance", status=503, headers={"Retry-After": when}
    )
    result = fetch(server.url_for("/down"))
    assert result.failure_kind == "temporary" and result.status == 503
    assert result.retry_after_s is not None and 590 <= result.retry_after_s <= 601


def test_503_without_retry_after_backs_off_and_gives_up(server: HTTPServer) -> None:
    server.expect_request("/down").respond_with_data("maintenance", status=503)
    result = fetch(server.url_for("/down"), settings(max_retries=2))
    assert result.attempts == 3 and len(server.log) == 3
    assert result.failure_kind == "temporary"


def test_500_is_soft_and_not_retried(server: HTTPServer) -> None:
    server.expect_request("/broken").respond_with_data("oops", status=500)
    result = fetch(server.url_for("/broken"))
    assert not result.ok and result.status == 500
    assert result.failure_kind == "soft"
    assert result.error == "HTTP 500 server error"
    assert len(server.log) == 1


@pytest.mark.parametrize(("status", "word"), [(404, "not found"), (410, "gone")])
def test_404_and_410_are_hard(server: HTTPServer, status: int, word: str) -> None:
    server.expect_request("/gone").respond_with_data("", status=status)
    result = fetch(server.url_for("/gone"))
    assert result.failure_kind == "hard"
    assert result.error == f"HTTP {status} {word}"


def test_read_timeout_is_temporary_and_retried(server: HTTPServer) -> None:
    def slow(request: Request) -> Response:
        time.sleep(1.0)
        return Response(FEED)  # arrives in the log after the client gave up

    server.expect_request("/slow").respond_with_handler(slow)
    started = time.monotonic()
    result = fetch(server.url_for("/slow"), settings(read_timeout_s=0.2, max_retries=1))
    assert time.monotonic() - started < 1.5
    assert not result.ok and result.failure_kind == "temporary"
    assert result.error == "read timed out"
    assert result.attempts == 2
    wait_for_log(server, 2)  # the abandoned handlers finish before the next test starts


def test_total_deadline_caps_retries(server: HTTPServer) -> None:
    def slow(request: Request) -> Response:
        time.sleep(0.8)
        return Response(FEED)

    server.expect_request("/slow").respond_with_handler(slow)
    started = time.monotonic()
    result = fetch(
        server.url_for("/slow"),
        settings(read_timeout_s=5.0, total_timeout_s=0.3, max_retries=5),
    )
    assert time.monotonic() - started < 1.0
    assert result.error == "timed out after 0.3 s" and result.failure_kind == "temporary"
    wait_for_log(server, 1)


def test_connection_refused_is_temporary() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Nothing listens on the port any more.
    result = fetch(f"http://127.0.0.1:{port}/feed.xml", settings(max_retries=0))
    assert not result.ok and result.failure_kind == "temporary"
    assert "connection failed" in (result.error or "")


def test_unknown_host_is_hard() -> None:
    result = fetch("http://no-such-outlet.invalid/feed.xml", settings(max_retries=0))
    assert result.failure_kind == "hard"
    assert "cannot resolve host 'no-such-outlet.invalid'" in (result.error or "")


def test_redirects_are_followed_and_permanent_moves_reported(server: HTTPServer) -> None:
    server.expect_request("/old").respond_with_data("", status=301, headers={"Location": "/new"})
    server.expect_request("/new").respond_with_data(FEED)
    result = fetch(server.url_for("/old"))
    assert result.ok and result.content == FEED
    assert result.final_url == server.url_for("/new")
    assert result.moved_to == server.url_for("/new")


def test_temporary_redirect_is_not_reported_as_moved(server: HTTPServer) -> None:
    server.expect_request("/a").respond_with_data("", status=302, headers={"Location": "/b"})
    server.expect_request("/b").respond_with_data(FEED)
    result = fetch(server.url_for("/a"))
    assert result.ok and result.moved_to is None


def test_redirect_loop_is_detected(server: HTTPServer) -> None:
    server.expect_request("/a").respond_with_data("", status=302, headers={"Location": "/b"})
    server.expect_request("/b").respond_with_data("", status=302, headers={"Location": "/a"})
    result = fetch(server.url_for("/a"))
    assert not result.ok and result.failure_kind == "hard"
    assert result.error == f"redirect loop at {server.url_for('/a')}"
    assert len(server.log) == 2


def test_malformed_url_is_a_clean_failure() -> None:
    # The same path a malformed redirect target takes (werkzeug refuses to send one).
    result = fetch("http://[broken/feed")
    assert not result.ok and result.failure_kind == "hard"
    assert result.error == "invalid URL (Invalid IPv6 URL)"


def test_redirect_limit(server: HTTPServer) -> None:
    for i in range(10):
        server.expect_request(f"/r{i}").respond_with_data(
            "", status=302, headers={"Location": f"/r{i + 1}"}
        )
    result = fetch(server.url_for("/r0"), settings(max_redirects=3))
    assert result.error == "more than 3 redirects"
    assert len(server.log) == 4


# ---------------------------------------------------------------------- size limits


def test_oversized_response_with_content_length(server: HTTPServer) -> None:
    server.expect_request("/big").respond_with_data(b"x" * 100_000)
    result = fetch(server.url_for("/big"), settings(max_bytes=4096))
    assert not result.ok and result.failure_kind == "soft"
    assert result.error == "response larger than the 4,096-byte cap"


def test_oversized_streamed_response_is_cut_while_reading(server: HTTPServer) -> None:
    sent: list[int] = []

    def endless(request: Request) -> Response:
        def chunks() -> Iterator[bytes]:
            for _ in range(2000):  # would be 16 MB
                sent.append(1)
                yield b"<item>" + b"x" * 8186 + b"</item>"

        return Response(chunks(), content_type="application/rss+xml")  # chunked, no length

    server.expect_request("/stream").respond_with_handler(endless)
    result = fetch(server.url_for("/stream"), settings(max_bytes=64 * 1024))
    assert not result.ok and "cap" in (result.error or "")
    assert len(sent) < 2000  # we hung up long before the end


def test_gzip_bomb_is_stopped_at_the_cap(server: HTTPServer) -> None:
    bomb = gzip.compress(b"\0" * 50_000_000)  # 50 MB of zeros in about 50 KB
    assert len(bomb) < 100_000
    server.expect_request("/bomb").respond_with_data(bomb, headers={"Content-Encoding": "gzip"})
    result = fetch(server.url_for("/bomb"), settings(max_bytes=1_000_000))
    assert not result.ok and result.error == "response larger than the 1,000,000-byte cap"


# --------------------------------------------------------------------------- files


def test_file_url_reads_with_cap_and_conditional_check(tmp_path: Path) -> None:
    path = tmp_path / "feed.xml"
    path.write_bytes(FEED)
    first = fetch(path.as_uri())
    assert first.ok and first.status == 200 and first.content == FEED
    assert first.last_modified
    again = fetch(path.as_uri(), last_modified=first.last_modified)
    assert again.not_modified and again.content is None
    too_big = read_feed_file("f", path.as_uri(), max_bytes=1024)
    assert too_big.failure_kind == "soft" and "cap" in (too_big.error or "")
    missing = fetch((tmp_path / "nope.xml").as_uri())
    assert missing.failure_kind == "hard" and "file not found" in (missing.error or "")


def test_parse_retry_after() -> None:
    assert parse_retry_after("120") == 120
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    now = time.time()
    assert parse_retry_after(formatdate(now - 50, usegmt=True), now=now) == 0


def test_per_host_limit_is_respected(server: HTTPServer) -> None:
    active = 0
    peak = 0

    def handler(request: Request) -> Response:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        time.sleep(0.15)
        active -= 1
        return Response(FEED)

    server.expect_request("/feed.xml").respond_with_handler(handler)

    async def go() -> list[FetchResult]:
        async with Fetcher(settings(per_host=2, concurrency=50)) as fetcher:
            return await asyncio.gather(
                *(fetcher.fetch_feed(f"f{i}", server.url_for("/feed.xml")) for i in range(8))
            )

    results = asyncio.run(go())
    assert all(r.ok for r in results)
    assert peak == 2


# ----------------------------------------------------------------------- SSRF guard


def test_guard_refuses_loopback_when_private_addresses_are_not_allowed(
    server: HTTPServer,
) -> None:
    server.expect_request("/feed.xml").respond_with_data(FEED)
    result = fetch(server.url_for("/feed.xml"), settings(allow_private_addresses=False))
    assert not result.ok and result.failure_kind == "hard"
    assert result.error == "refused to connect to 127.0.0.1: loopback address"
    assert server.log == []  # not a single byte reached the server


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://169.254.169.254/latest/meta-data/iam/", "cloud metadata"),
        ("http://10.0.0.5/feed.xml", "private"),
        ("http://192.168.1.1/rss", "private"),
        ("http://172.16.4.4/rss", "private"),
        ("http://[::1]/rss", "loopback"),
        ("http://0.0.0.0/rss", "unspecified"),
        ("http://[::ffff:127.0.0.1]/rss", "loopback"),
        ("http://100.100.100.200/latest/meta-data", "cloud metadata"),
        ("http://224.0.0.1/rss", "multicast"),
    ],
)
def test_guard_refuses_internal_addresses_without_connecting(url: str, reason: str) -> None:
    result = fetch(url, settings(allow_private_addresses=False, max_retries=0))
    assert not result.ok and result.failure_kind == "hard"
    assert result.error is not None and result.error.endswith(f": {reason} address")


def test_metadata_address_refused_even_when_private_addresses_are_allowed(
    server: HTTPServer,
) -> None:
    # Each redirect hop is checked: a local (allowed) server cannot bounce us to metadata.
    server.expect_request("/feed.xml").respond_with_data(
        "", status=302, headers={"Location": "http://169.254.169.254/latest/meta-data/"}
    )
    result = fetch(server.url_for("/feed.xml"), settings(allow_private_addresses=True))
    assert result.failure_kind == "hard"
    assert result.error == "refused to connect to 169.254.169.254: cloud metadata address"


def test_redirect_to_another_scheme_is_refused(server: HTTPServer) -> None:
    server.expect_request("/feed.xml").respond_with_data(
        "", status=302, headers={"Location": "file:///etc/passwd"}
    )
    result = fetch(server.url_for("/feed.xml"))
    assert result.failure_kind == "hard"
    assert result.error == "refused URL scheme 'file' in 'file:///etc/passwd'"


def test_connect_time_guard_stops_dns_rebinding(
    server: HTTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The address is checked again when the socket is opened, against a new answer.

    DNS cannot be served here, so the resolver is the one thing replaced: it answers a
    public address to the pre-check and loopback to the connection, as a rebinding
    attacker's name server would.
    """
    server.expect_request("/feed.xml").respond_with_data(FEED)
    answers = iter(["93.184.216.34", "127.0.0.1"])

    async def rebinding_resolve(host: str, port: int) -> list[Any]:
        import ipaddress

        return [ipaddress.ip_address(next(answers))]

    monkeypatch.setattr(netguard, "resolve", rebinding_resolve)
    port = server.port
    result = fetch(
        f"http://rebind.example:{port}/feed.xml", settings(allow_private_addresses=False)
    )
    assert result.failure_kind == "hard"
    assert result.error == "refused to connect to rebind.example (127.0.0.1): loopback address"
    assert server.log == []


def test_guarded_transport_itself_refuses_loopback(server: HTTPServer) -> None:
    """Without the pre-check: the transport alone keeps the guard (no httpx bypass)."""
    server.expect_request("/feed.xml").respond_with_data(FEED)

    async def go() -> None:
        transport = guarded_transport(AddressPolicy(allow_private=False), httpx.Limits())
        async with httpx.AsyncClient(transport=transport) as client:
            await client.get(server.url_for("/feed.xml"))

    with pytest.raises(BlockedAddress, match="loopback"):
        asyncio.run(go())
    assert server.log == []

    async def allowed() -> int:
        transport = guarded_transport(AddressPolicy(allow_private=True), httpx.Limits())
        async with httpx.AsyncClient(transport=transport) as client:
            return (await client.get(server.url_for("/feed.xml"))).status_code

    assert asyncio.run(allowed()) == 200


def test_classify_address() -> None:
    import ipaddress

    assert classify_address(ipaddress.ip_address("8.8.8.8")) is None
    assert classify_address(ipaddress.ip_address("2001:4860:4860::8888")) is None
    assert classify_address(ipaddress.ip_address("169.254.10.1")) == "link-local"
    assert classify_address(ipaddress.ip_address("fd00:ec2::254")) == "cloud metadata"
    assert classify_address(ipaddress.ip_address("100.64.1.1")) == "shared (carrier-grade NAT)"
