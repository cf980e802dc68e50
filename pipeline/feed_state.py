"""Feed state: what one poll did to a feed's health and when to poll it next.

Pure functions, no I/O: the runner loads states from and saves them to the store.

Failures are graded (after Media Cloud's rss-fetcher):

- **hard** — the URL itself is wrong: 404/410 and other 4xx, not a feed (an HTML page),
  a host that does not resolve, a refused (SSRF-guarded) address, redirect loops, hostile
  XML. Backs off fastest: polling a dead URL every 15 minutes helps nobody.
- **soft** — the server or the document is broken: 5xx other than 503, unparseable XML,
  an empty or oversized response.
- **temporary** — likely gone by the next poll: timeouts, connection errors, 429, 503.
  The first retry comes at the normal interval.

A failing feed is slowed down exponentially up to ``max_backoff_hours`` (24 h by default)
and is **never disabled**: a feed that comes back is picked up within a day, and its state
(with the last error) stays visible in the feed-health views the whole time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime, timedelta

from pipeline.config import FeedConfig, FetchSettings
from pipeline.models import FailureKind, FeedProblem, FeedState, FetchResult
from pipeline.parse import FATAL_KINDS

#: Problem kinds that say the URL does not point at a feed at all.
_HARD_PROBLEMS = frozenset({"not_a_feed", "hostile_xml"})
#: Growth of the wait per consecutive failure, by grade.
BACKOFF_BASE: dict[FailureKind, float] = {"temporary": 2.0, "soft": 2.0, "hard": 4.0}
#: Exponent offset: temporary failures retry at the normal interval first.
BACKOFF_OFFSET: dict[FailureKind, int] = {"temporary": -1, "soft": 0, "hard": 0}


def is_due(state: FeedState | None, now: datetime) -> bool:
    """A feed without a state, or whose next due time has come, is polled."""
    return state is None or state.next_due is None or state.next_due <= now


def failure_of(
    result: FetchResult, problems: Sequence[FeedProblem], items: int
) -> tuple[FailureKind, str] | None:
    """The grade and reason of a failed poll, or None when the poll worked.

    A feed that yielded items is a success even with problems (they are recorded, and the
    state is shown as unhealthy, but polling goes on at the normal pace).
    """
    if result.error is not None:
        return result.failure_kind or "soft", result.error
    if result.not_modified or items:
        return None
    fatal = [p for p in problems if p.kind in FATAL_KINDS]
    if not fatal:
        return None
    first = fatal[0]
    kind: FailureKind = "hard" if first.kind in _HARD_PROBLEMS else "soft"
    return kind, f"{first.kind}: {first.message}"


def _jitter(feed_id: str) -> float:
    """0-10 % extra wait, fixed per feed, so feeds that failed together (an outage)
    do not all come back in the same second."""
    digest = hashlib.sha256(feed_id.encode("utf-8")).digest()
    return 1.0 + (int.from_bytes(digest[:2], "big") % 1000) / 10_000


def backoff_delay(
    poll_minutes: int,
    failures: int,
    kind: FailureKind,
    *,
    max_backoff_hours: float,
    feed_id: str = "",
) -> timedelta:
    """Wait before the next poll after ``failures`` consecutive failures of this grade."""
    exponent = max(0, failures + BACKOFF_OFFSET[kind])
    minutes = poll_minutes * BACKOFF_BASE[kind] ** min(exponent, 32)
    minutes *= _jitter(feed_id)
    cap = max_backoff_hours * 60
    return timedelta(minutes=max(poll_minutes, min(minutes, cap)))


def update_state(
    state: FeedState | None,
    feed: FeedConfig,
    url: str,
    result: FetchResult,
    problems: Sequence[FeedProblem],
    items: int,
    *,
    now: datetime,
    settings: FetchSettings,
) -> FeedState:
    """The feed's state after this poll."""
    previous = state or FeedState(feed_id=feed.id, url=url)
    same_url = previous.url == url
    update: dict[str, object] = {
        "url": url,
        "name": feed.display_name,
        "last_status": result.status,
        "last_attempt": now,
        "items_last_run": items,
        "items_seen": previous.items_seen + items,
        "problems": [f"{p.kind}: {p.message}" for p in problems],
    }
    if not same_url:
        # Validators belong to the old URL; never send them to a new one.
        update.update({"etag": None, "last_modified": None})
    failure = failure_of(result, problems, items)
    if failure is None:
        if not result.not_modified:
            update.update({"etag": result.etag, "last_modified": result.last_modified})
        update.update(
            {
                "last_error": None,
                "failure_kind": None,
                "consecutive_failures": 0,
                "last_success": now,
                "next_due": now + timedelta(minutes=feed.poll_minutes),
            }
        )
    else:
        kind, reason = failure
        failures = previous.consecutive_failures + 1
        delay = backoff_delay(
            feed.poll_minutes,
            failures,
            kind,
            max_backoff_hours=settings.max_backoff_hours,
            feed_id=feed.id,
        )
        if result.retry_after_s:
            # The server told us when to come back: not earlier than that, but not later
            # than the back-off cap either (a week-long Retry-After must not park a feed).
            asked = min(result.retry_after_s, settings.max_backoff_hours * 3600)
            delay = max(delay, timedelta(seconds=asked))
        update.update(
            {
                "last_error": reason,
                "failure_kind": kind,
                "consecutive_failures": failures,
                "next_due": now + delay,
            }
        )
    return previous.model_copy(update=update)
