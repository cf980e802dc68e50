"""Fetch: polite, bounded, SSRF-guarded HTTP for feeds (and, through :meth:`Fetcher.get`,
for the article pages and robots.txt files that enrichment reads).

What a demanding operator expects from a poller of hundreds of feeds, and why:

- **Conditional GET** (``If-None-Match`` / ``If-Modified-Since``): most polls of a feed find
  nothing new; a 304 costs the outlet and us almost nothing.
- **Global and per-host limits**: many feeds of one outlet share a host; hammering it gets us
  blocked. A task waits for its host's slot *before* it takes a global one, so feeds of a
  busy host never hold global slots idle.
- **Timeouts** for connect and read, and a total deadline per feed across retries and
  redirects, so one slow server cannot stall a run.
- **A size cap checked while streaming**, after decompression (we decompress ourselves with
  a bounded zlib call: a 10 KB gzip bomb cannot become 10 GB in memory).
- **Redirects followed by hand**: each hop is counted, checked for loops, and re-checked by
  the SSRF guard; a permanent redirect is reported so the user can update ``feeds.yaml``.
- **Back-off on 429/503** honouring ``Retry-After`` up to ``max_retry_after_s``; a longer
  wait is not slept inside the run but handed to the feed state (next poll after it).
- **file:// URLs** for bundled demo feeds, read from disk with the same size cap and a
  Last-Modified from the file's mtime, so conditional polling works for them too.

Every outcome is a :class:`~pipeline.models.FetchResult`; nothing here raises for a bad feed.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
import zlib
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit
from urllib.request import url2pathname

import httpx

from pipeline.config import FetchSettings
from pipeline.models import FailureKind, FetchResult
from pipeline.netguard import (
    AddressPolicy,
    BlockedAddress,
    ResolutionError,
    check_url,
    guarded_transport,
)

log = logging.getLogger(__name__)

FEED_ACCEPT = (
    "application/rss+xml, application/atom+xml, application/rdf+xml;q=0.9, "
    "application/xml;q=0.9, text/xml;q=0.9, */*;q=0.5"
)
PAGE_ACCEPT = "text/html, application/xhtml+xml;q=0.9, */*;q=0.5"
_REDIRECTS = (301, 302, 303, 307, 308)
_PERMANENT = (301, 308)
_GZIP_MAGIC = b"\x1f\x8b"
#: How long a host that passed the SSRF pre-check is not checked again (see _precheck).
PRECHECK_TTL_S = 60.0


class FetchFailure(Exception):
    """One failed request, already graded for the feed state."""

    def __init__(
        self,
        message: str,
        kind: FailureKind,
        *,
        status: int | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.kind: FailureKind = kind
        self.status = status
        self.retry_after_s = retry_after_s


@dataclass
class HttpResult:
    """The outcome of :meth:`Fetcher.get`, whether it worked or not."""

    url: str
    final_url: str | None = None
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    content: bytes | None = None
    moved_to: str | None = None
    attempts: int = 0
    elapsed_s: float = 0.0
    error: str | None = None
    failure_kind: FailureKind | None = None
    retry_after_s: float | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = now if now is not None else time.time()
    return max(0.0, when.timestamp() - current)


def content_charset(content_type: str | None) -> str | None:
    """The ``charset`` parameter of a Content-Type header, lower-cased."""
    if not content_type:
        return None
    for part in content_type.split(";")[1:]:
        key, _, value = part.strip().partition("=")
        if key.strip().lower() == "charset" and value.strip():
            return value.strip().strip("\"'").lower()
    return None


class _BodyDecoder:
    """Bounded gzip/deflate decoding: never produces more than the cap allows."""

    def __init__(self, content_encoding: str | None) -> None:
        codings = [
            c.strip().lower()
            for c in (content_encoding or "").split(",")
            if c.strip() and c.strip().lower() != "identity"
        ]
        if len(codings) > 1:
            raise FetchFailure(f"unsupported Content-Encoding '{content_encoding}'", "soft")
        self.coding = codings[0] if codings else None
        self._zlib: zlib._Decompress | None = None
        self._sniff = self.coding is None
        if self.coding in ("gzip", "x-gzip"):
            self._zlib = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif self.coding == "deflate":
            # RFC says zlib-wrapped; some servers send raw deflate. Try zlib first.
            self._zlib = zlib.decompressobj(zlib.MAX_WBITS)
            self._deflate_raw_tried = False
        elif self.coding is not None:
            raise FetchFailure(f"unsupported Content-Encoding '{self.coding}'", "soft")

    def decode(self, chunk: bytes, room: int) -> bytes:
        """Decode ``chunk``; at most ``room + 1`` bytes come out (one more means: too big)."""
        if self._sniff:
            self._sniff = False
            # A .xml.gz served without Content-Encoding (static hosting does this).
            if chunk.startswith(_GZIP_MAGIC):
                self._zlib = zlib.decompressobj(16 + zlib.MAX_WBITS)
        if self._zlib is None:
            return chunk
        try:
            return self._zlib.decompress(chunk, room + 1)
        except zlib.error as exc:
            if self.coding == "deflate" and not self._deflate_raw_tried:
                self._deflate_raw_tried = True
                self._zlib = zlib.decompressobj(-zlib.MAX_WBITS)
                return self.decode(chunk, room)
            raise FetchFailure(f"cannot decompress response ({exc})", "soft") from None

    def flush(self, room: int) -> bytes:
        if self._zlib is None:
            return b""
        # A truncated gzip stream still gives us what it had; the parser reports the rest.
        try:
            return self._zlib.decompress(b"", room + 1) if self._zlib.unconsumed_tail else b""
        except zlib.error:
            return b""


def _too_large(max_bytes: int) -> FetchFailure:
    return FetchFailure(f"response larger than the {max_bytes:,}-byte cap", "soft")


def _grade_status(status: int) -> FailureKind:
    if status in (408, 429, 503):
        return "temporary"
    if status >= 500:
        return "soft"
    return "hard"


_STATUS_WORDS = {
    401: "authentication required",
    403: "forbidden",
    404: "not found",
    410: "gone",
    429: "too many requests",
    500: "server error",
    502: "bad gateway",
    503: "service unavailable",
    504: "gateway timeout",
}


class Fetcher:
    """HTTP for a whole run, with the limits of :class:`FetchSettings`.

    One small connection pool per host rather than one big pool: httpcore assigns queued
    requests to connections by scanning the whole pool, which made 1,000 feeds through one
    116-connection pool spend most of its CPU in that scan (benchmarks/bench_fetch.py).
    Per-host pools also make the per-host limit a property of the pool itself.

    Use as ``async with Fetcher(settings) as fetcher: await fetcher.fetch_feed(...)``.
    """

    def __init__(self, settings: FetchSettings) -> None:
        self.settings = settings
        self.policy = AddressPolicy(allow_private=settings.allow_private_addresses)
        self._transports: dict[str, httpx.AsyncHTTPTransport] = {}
        # What an httpx client sent by default, with our User-Agent and codings.
        self._headers = {
            "Accept": "*/*",
            "Accept-Encoding": "gzip, deflate",
            "Connection": "keep-alive",
            "User-Agent": settings.user_agent,
        }
        self._timeout = httpx.Timeout(
            connect=settings.connect_timeout_s,
            read=settings.read_timeout_s,
            write=settings.read_timeout_s,
            pool=settings.total_timeout_s,
        ).as_dict()
        self._global: asyncio.Semaphore | None = None
        self._hosts: dict[str, asyncio.Semaphore] = {}
        self._checked: dict[str, float] = {}  # host:port -> when its pre-check expires

    async def __aenter__(self) -> Fetcher:
        self._global = asyncio.Semaphore(self.settings.concurrency)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        transports, self._transports = list(self._transports.values()), {}
        for transport in transports:
            await transport.aclose()

    def _transport_for(self, url: str) -> httpx.AsyncHTTPTransport:
        """The host's connection pool (created on first use).

        Requests go to the transport directly, not through an ``httpx.AsyncClient``: we
        follow redirects, decompress and cap bodies ourselves and want no cookies, so the
        client layer (request building, header merging, cookie extraction, auth and
        redirect machinery) was a quarter of the fetch CPU and did nothing for us.
        """
        parts = urlsplit(url)
        key = f"{parts.scheme.lower()}://{(parts.hostname or '').lower()}:{parts.port or ''}"
        transport = self._transports.get(key)
        if transport is None:
            s = self.settings
            limits = httpx.Limits(
                max_connections=s.per_host,
                max_keepalive_connections=s.per_host,
                keepalive_expiry=30.0,
            )
            transport = self._transports[key] = guarded_transport(self.policy, limits)
        return transport

    # ------------------------------------------------------------------ feeds

    async def fetch_feed(
        self,
        feed_id: str,
        url: str,
        *,
        etag: str | None = None,
        last_modified: str | None = None,
    ) -> FetchResult:
        """Conditional GET of one feed (http, https or file URL)."""
        try:
            scheme = urlsplit(url).scheme.lower()
        except ValueError:
            scheme = ""  # get() reports the malformed URL
        if scheme == "file":
            return await asyncio.to_thread(
                read_feed_file, feed_id, url, self.settings.max_bytes, last_modified
            )
        headers = {"Accept": FEED_ACCEPT}
        if etag:
            headers["If-None-Match"] = etag
        if last_modified:
            headers["If-Modified-Since"] = last_modified
        res = await self.get(url, headers=headers, max_bytes=self.settings.max_bytes)
        content_type = res.headers.get("content-type")
        result = FetchResult(
            feed_id=feed_id,
            url=url,
            final_url=res.final_url,
            status=res.status,
            not_modified=res.ok and res.status == 304,
            content=res.content if res.ok and res.status != 304 else None,
            content_type=content_type,
            declared_encoding=content_charset(content_type),
            etag=res.headers.get("etag"),
            last_modified=res.headers.get("last-modified"),
            elapsed_s=res.elapsed_s,
            attempts=res.attempts,
            error=res.error,
            failure_kind=res.failure_kind,
            retry_after_s=res.retry_after_s,
            moved_to=res.moved_to,
        )
        return result

    # ---------------------------------------------------------------- generic

    def _host_semaphore(self, url: str) -> asyncio.Semaphore:
        parts = urlsplit(url)
        key = f"{parts.hostname}:{parts.port or ''}"
        sem = self._hosts.get(key)
        if sem is None:
            sem = self._hosts[key] = asyncio.Semaphore(self.settings.per_host)
        return sem

    async def get(
        self,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        max_bytes: int | None = None,
        total_timeout_s: float | None = None,
        max_retries: int | None = None,
        accept_statuses: tuple[int, ...] = (200, 304),
    ) -> HttpResult:
        """GET ``url`` within the limits; never raises for network or server trouble.

        ``accept_statuses`` are returned as success with their body (robots.txt wants 404s
        back as an answer, not as a failure).
        """
        s = self.settings
        cap = max_bytes if max_bytes is not None else s.max_bytes
        total = total_timeout_s if total_timeout_s is not None else s.total_timeout_s
        retries = s.max_retries if max_retries is None else max_retries
        result = HttpResult(url=url)
        # The clock starts when the first slot is ours: time spent queueing behind other
        # feeds is not this server's fault.
        started: float | None = None
        deadline = float("inf")
        try:
            host_sem = self._host_semaphore(url)
        except ValueError as exc:
            result.error, result.failure_kind = f"invalid URL ({exc})", "hard"
            return result
        assert self._global is not None, "use Fetcher as an async context manager"
        while True:
            result.attempts += 1
            wait: float | None = None
            try:
                async with host_sem, self._global:
                    if started is None:
                        started = time.monotonic()
                        deadline = started + total
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise TimeoutError
                    async with asyncio.timeout(remaining):
                        await self._attempt(url, headers or {}, cap, accept_statuses, result)
                result.error = result.failure_kind = None
                break
            except FetchFailure as exc:
                result.error, result.failure_kind = str(exc), exc.kind
                result.status = exc.status if exc.status is not None else result.status
                result.retry_after_s = exc.retry_after_s
                if exc.status in (429, 503) or exc.kind == "temporary":
                    wait = self._retry_wait(exc.retry_after_s, result.attempts)
            except TimeoutError:
                result.error = f"timed out after {total:g} s"
                result.failure_kind = "temporary"
                break  # the total deadline is spent: no point in retrying
            except httpx.TimeoutException as exc:
                result.error = f"{_timeout_phase(exc)} timed out"
                result.failure_kind = "temporary"
                wait = self._retry_wait(None, result.attempts)
            except BlockedAddress as exc:
                result.error, result.failure_kind = str(exc), "hard"
                break
            except ResolutionError as exc:
                result.error = str(exc)
                result.failure_kind = "temporary" if exc.temporary else "hard"
                wait = self._retry_wait(None, result.attempts) if exc.temporary else None
            except httpx.HTTPError as exc:
                result.error = f"connection failed ({type(exc).__name__}: {exc or 'no detail'})"
                result.failure_kind = "temporary"
                wait = self._retry_wait(None, result.attempts)
            except (httpx.InvalidURL, ValueError, UnicodeError) as exc:
                # A malformed URL or redirect target ("http://[broken", a bad port).
                result.error, result.failure_kind = f"invalid URL ({exc})", "hard"
                break
            except Exception as exc:  # one feed must never take the run down
                log.exception("unexpected error fetching %s", url)
                result.error = f"unexpected error ({type(exc).__name__}: {exc})"
                result.failure_kind = "soft"
                break
            if wait is None or result.attempts > retries:
                break
            if time.monotonic() + wait >= deadline:
                break
            log.debug("retrying %s in %.2f s (%s)", url, wait, result.error)
            await asyncio.sleep(wait)
        result.elapsed_s = round(time.monotonic() - started, 3) if started else 0.0
        if not result.ok:
            result.content = None
        return result

    async def _precheck(self, url: str) -> None:
        """The SSRF pre-check, with a short memory of hosts that passed.

        Twenty feeds of one outlet need one DNS answer, not twenty. Safe to remember: the
        connect-time check in the transport vets the address actually used every time.
        """
        parts = urlsplit(url)
        key = f"{parts.scheme.lower()}://{(parts.hostname or '').lower()}:{parts.port or ''}"
        now = time.monotonic()
        if self._checked.get(key, 0.0) > now:
            return
        await check_url(url, self.policy)
        self._checked[key] = now + PRECHECK_TTL_S

    def _retry_wait(self, retry_after: float | None, attempt: int) -> float | None:
        """How long to wait before the next try, or None when the server asks too much."""
        if retry_after is not None:
            if retry_after > self.settings.max_retry_after_s:
                return None  # honoured by the feed state, not by sleeping in this run
            return retry_after
        return self.settings.retry_backoff_s * (2 ** (attempt - 1))

    async def _attempt(
        self,
        url: str,
        headers: dict[str, str],
        cap: int,
        accept_statuses: tuple[int, ...],
        result: HttpResult,
    ) -> None:
        current = url
        seen = {url}
        moved_to: str | None = None
        all_permanent = True
        for hop in range(self.settings.max_redirects + 1):
            await self._precheck(current)
            request = httpx.Request(
                "GET",
                current,
                headers={**self._headers, **headers},
                extensions={"timeout": self._timeout},
            )
            resp = await self._transport_for(current).handle_async_request(request)
            try:
                status = resp.status_code
                result.status = status
                result.final_url = current
                result.headers = {k.lower(): v for k, v in resp.headers.items()}
                if status in _REDIRECTS:
                    location = resp.headers.get("location")
                    if not location:
                        raise FetchFailure(
                            f"HTTP {status} without a Location", "hard", status=status
                        )
                    target = urljoin(current, location.strip())
                    all_permanent = all_permanent and status in _PERMANENT
                    if all_permanent:
                        moved_to = target
                    if target in seen:
                        raise FetchFailure(f"redirect loop at {target}", "hard", status=status)
                    if hop == self.settings.max_redirects:
                        raise FetchFailure(
                            f"more than {self.settings.max_redirects} redirects",
                            "hard",
                            status=status,
                        )
                    seen.add(target)
                    current = target
                    continue
                if status not in accept_statuses:
                    retry_after = parse_retry_after(resp.headers.get("retry-after"))
                    word = _STATUS_WORDS.get(status, resp.reason_phrase or "")
                    raise FetchFailure(
                        f"HTTP {status}{' ' + word if word else ''}",
                        _grade_status(status),
                        status=status,
                        retry_after_s=retry_after,
                    )
                result.content = await _read_capped(resp, cap) if status != 304 else None
                result.moved_to = moved_to if moved_to != url else None
                return
            finally:
                await resp.aclose()
        raise AssertionError("unreachable")  # pragma: no cover


def _timeout_phase(exc: httpx.TimeoutException) -> str:
    if isinstance(exc, httpx.ConnectTimeout):
        return "connect"
    if isinstance(exc, httpx.ReadTimeout):
        return "read"
    if isinstance(exc, httpx.PoolTimeout):
        return "waiting for a connection"
    return "request"


async def _read_capped(resp: httpx.Response, cap: int) -> bytes:
    """Read the body, decompressing with a bound; stop as soon as it passes ``cap``."""
    length = resp.headers.get("content-length")
    if (
        length
        and length.isdigit()
        and int(length) > cap
        and not resp.headers.get("content-encoding")
    ):
        raise _too_large(cap)
    decoder = _BodyDecoder(resp.headers.get("content-encoding"))
    body = bytearray()
    async for chunk in resp.aiter_raw():
        body += decoder.decode(chunk, cap - len(body))
        if len(body) > cap:
            raise _too_large(cap)
    body += decoder.flush(cap - len(body))
    if len(body) > cap:
        raise _too_large(cap)
    return bytes(body)


def read_feed_file(
    feed_id: str, url: str, max_bytes: int, last_modified: str | None = None
) -> FetchResult:
    """A bundled feed on disk (``file://``), with the same cap and a conditional check."""
    started = time.monotonic()
    path = Path(url2pathname(unquote(urlsplit(url).path)))
    base = FetchResult(feed_id=feed_id, url=url, final_url=url)
    try:
        stat = path.stat()
        mtime = email.utils.formatdate(stat.st_mtime, usegmt=True)
        if last_modified and last_modified == mtime:
            return base.model_copy(
                update={"status": 304, "not_modified": True, "last_modified": mtime}
            )
        if stat.st_size > max_bytes:
            raise _too_large(max_bytes)
        with path.open("rb") as handle:
            raw = handle.read(max_bytes + 1)
        if raw.startswith(_GZIP_MAGIC):
            decoder = _BodyDecoder("gzip")
            raw = decoder.decode(raw, max_bytes)
        if len(raw) > max_bytes:
            raise _too_large(max_bytes)
    except FileNotFoundError:
        return base.model_copy(update={"error": f"file not found: {path}", "failure_kind": "hard"})
    except IsADirectoryError:
        return base.model_copy(update={"error": f"not a file: {path}", "failure_kind": "hard"})
    except PermissionError:
        return base.model_copy(
            update={"error": f"permission denied: {path}", "failure_kind": "hard"}
        )
    except FetchFailure as exc:
        return base.model_copy(update={"error": str(exc), "failure_kind": exc.kind})
    except OSError as exc:
        return base.model_copy(
            update={"error": f"cannot read {path}: {exc.strerror or exc}", "failure_kind": "soft"}
        )
    return base.model_copy(
        update={
            "status": 200,
            "content": raw,
            "last_modified": mtime,
            "elapsed_s": round(time.monotonic() - started, 4),
        }
    )


__all__ = [
    "FEED_ACCEPT",
    "PAGE_ACCEPT",
    "FetchFailure",
    "Fetcher",
    "HttpResult",
    "content_charset",
    "parse_retry_after",
    "read_feed_file",
]
