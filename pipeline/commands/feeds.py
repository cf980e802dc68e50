"""Feed commands: ``stancewatch feeds list``, ``feeds check`` and ``feeds health``.

``check`` fetches and parses the configured feeds right now, without Elasticsearch, and
shows what each one gave: status, items, problems. It is how a user validates a new
``feeds.yaml`` before the first real run (exit code 1 when a feed failed, so it also works
in CI). ``health`` reads the state kept across runs in the feeds index: last status, graded
failures, back-off and next poll, last success.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pipeline.commands.options import CONFIG_OPTION
from pipeline.config import AppConfig

console = Console()

feeds_app = typer.Typer(
    help="The configured feeds: list them, check them now, see their health.",
    no_args_is_help=True,
)


@feeds_app.command("list")
def list_feeds(config_dir: Path | None = CONFIG_OPTION) -> None:
    """List the feeds of feeds.yaml (disabled ones greyed out)."""
    config = AppConfig(config_dir)
    feeds = config.feeds
    table = Table(title=f"{len(feeds)} feeds in {config.config_dir / 'feeds.yaml'}")
    for column in ("id", "name", "url", "lang", "country", "full text", "poll"):
        table.add_column(column, overflow="fold")
    for feed in feeds:
        table.add_row(
            escape(feed.id),
            escape(feed.display_name),
            escape(feed.url),
            feed.language or "",
            feed.country or "",
            "yes" if feed.full_text else "",
            f"{feed.poll_minutes} min",
            style=None if feed.enabled else "dim",
        )
    console.print(table)


@feeds_app.command("check")
def check_feeds(
    config_dir: Path | None = CONFIG_OPTION,
    feed: list[str] = typer.Option(
        [], "--feed", "-f", help="Only this feed id (repeatable). Default: all enabled feeds."
    ),
    show_items: int = typer.Option(
        0, "--items", "-n", min=0, help="Also print the first N titles of each feed."
    ),
    as_json: bool = typer.Option(False, "--json", help="One JSON report per feed instead."),
) -> None:
    """Fetch and parse feeds now (no Elasticsearch) and report what each one gave.

    Nothing is stored and no article page is fetched. Exit code 1 when a feed failed.
    """
    from pipeline.collect import collect
    from pipeline.models import utcnow

    config = AppConfig(config_dir)
    config.validate()
    result = collect(
        config,
        states={},
        lookup=None,
        now=utcnow(),
        feed_ids=feed or None,
        progress=not as_json,
        enrich=False,
    )
    if as_json:
        for report in result.feed_reports:
            typer.echo(json.dumps(report.model_dump(mode="json", exclude={"next_due"})))
    else:
        table = Table(title="Feed check")
        for column in ("feed", "result", "HTTP", "items", "time", "problems"):
            table.add_column(column, overflow="fold")
        for report in result.feed_reports:
            if report.ok:
                verdict = "[green]not modified[/]" if report.not_modified else "[green]ok[/]"
            else:
                verdict = f"[red]failed ({report.failure_kind})[/]"
            notes = ([f"[red]{escape(report.error)}[/]"] if report.error else []) + [
                escape(p) for p in report.problems if not report.error or p not in report.error
            ]
            table.add_row(
                escape(report.feed_id),
                verdict,
                str(report.status or ""),
                str(report.items),
                f"{report.elapsed_s:.1f} s",
                "\n".join(notes),
            )
        console.print(table)
        if show_items:
            by_feed: dict[str, list[str]] = {}
            for article in result.articles:
                by_feed.setdefault(article.source.feed_id or "", []).append(article.title)
            for report in result.feed_reports:
                titles = by_feed.get(report.feed_id, [])[:show_items]
                if titles:
                    console.print(f"[bold]{escape(report.feed_id)}[/]")
                    for title in titles:
                        console.print(f"  • {escape(title)}", highlight=False)
        failed = sum(1 for r in result.feed_reports if not r.ok)
        console.print(
            f"{len(result.feed_reports) - failed} ok, {failed} failed; "
            f"{len(result.articles)} articles "
            f"({result.duplicates_in_batch} duplicate URLs across feeds)",
            highlight=False,
        )
    if any(not r.ok for r in result.feed_reports):
        raise typer.Exit(1)


@feeds_app.command("health")
def feed_health(
    config_dir: Path | None = CONFIG_OPTION,
    failing: bool = typer.Option(False, "--failing", help="Only feeds that are failing now."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per feed instead."),
) -> None:
    """Feed health from the feeds index: status, failures, back-off, last success.

    A feed that was never polled shows as 'never polled'. Exit code 1 when Elasticsearch
    cannot be reached.
    """
    from pipeline.models import utcnow
    from pipeline.runner import load_feed_states
    from pipeline.store import Store, StoreUnavailable

    config = AppConfig(config_dir)
    config.validate()
    store = Store.from_config(config)
    try:
        store.check()
        states = load_feed_states(store, True, config)
    except StoreUnavailable as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    finally:
        store.close()
    now = utcnow()
    rows = []
    for feed in config.feeds:
        state = states.get(feed.id)
        if failing and not (state and state.consecutive_failures):
            continue
        rows.append((feed, state))
    if as_json:
        for feed, state in rows:
            doc = state.to_document() if state else {"feed_id": feed.id, "never_polled": True}
            typer.echo(json.dumps(doc, default=str))
        return
    table = Table(title=f"Feed health ({len(rows)} feeds, {store.alias('feeds')})")
    for column in (
        "feed",
        "health",
        "HTTP",
        "failures",
        "last success",
        "next poll",
        "items",
        "last error",
    ):
        table.add_column(column, overflow="fold")
    for feed, state in rows:
        if state is None:
            table.add_row(escape(feed.id), "[dim]never polled[/]", "", "", "", "", "", "")
            continue
        if state.consecutive_failures:
            health = f"[red]failing ({state.failure_kind})[/]"
        elif state.problems:
            health = "[yellow]partial[/]"
        else:
            health = "[green]ok[/]"
        due = state.next_due
        table.add_row(
            escape(feed.id),
            health,
            str(state.last_status or ""),
            str(state.consecutive_failures or ""),
            _ago(now, state.last_success),
            ("now" if due and due <= now else _in(now, due)) if due else "",
            str(state.items_seen),
            escape(state.last_error or "; ".join(state.problems))[:160],
        )
    console.print(table)


def _ago(now: object, when: object) -> str:
    from datetime import datetime

    if not isinstance(when, datetime) or not isinstance(now, datetime):
        return "never"
    minutes = int((now - when).total_seconds() // 60)
    if minutes < 60:
        return f"{minutes} min ago"
    if minutes < 48 * 60:
        return f"{minutes // 60} h ago"
    return f"{minutes // 1440} days ago"


def _in(now: object, when: object) -> str:
    from datetime import datetime

    if not isinstance(when, datetime) or not isinstance(now, datetime):
        return ""
    minutes = int((when - now).total_seconds() // 60)
    return f"in {minutes} min" if minutes < 120 else f"in {minutes // 60} h"


def register(app: typer.Typer) -> None:
    """Add ``stancewatch feeds ...`` to the root app."""
    app.add_typer(feeds_app, name="feeds")
