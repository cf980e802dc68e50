"""``stancewatch alerts``: list, show, re-send, and detect (+ deliver) stance-shift and
coverage-spike alerts.

Every sub-command that needs Elasticsearch prints one line naming the URL and exits with
code 1 when the cluster is down; configuration problems exit with code 2 (pipeline.cli).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pipeline.commands.options import CONFIG_OPTION, JSON_OPTION, NOW_OPTION
from pipeline.commands.options import parse_now as parse_iso
from pipeline.config import AppConfig

if TYPE_CHECKING:
    from pipeline.models import Alert
    from pipeline.store import Store

console = Console()
err = Console(stderr=True)

STATUSES = ("pending", "sent", "failed", "suppressed")

alerts_app = typer.Typer(
    help="Stance-shift and coverage-spike alerts: list them and their delivery state, show "
    "one, re-send one, or run detection (and delivery) now.",
    no_args_is_help=True,
)


def _fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


@contextmanager
def _store(config: AppConfig) -> Iterator[Store]:
    """A Store for one command; an unreachable cluster becomes one line and exit code 1."""
    from pipeline.store import Store, StoreSetupError, StoreUnavailable

    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        # The client logs every failed try; the one error line below says it all.
        logging.getLogger("elastic_transport").setLevel(logging.ERROR)
    store = Store.from_config(config)
    try:
        yield store
    except (StoreUnavailable, StoreSetupError) as exc:
        raise _fail(str(exc)) from None
    finally:
        store.close()


def parse_since(value: str | None, *, now: datetime) -> datetime | None:
    """'7d', '36h', '2w' back from now, or an ISO 8601 date / date-time."""
    if not value:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*([hdw])\s*", value)
    if match:
        amount, unit = int(match.group(1)), match.group(2)
        hours = {"h": 1, "d": 24, "w": 24 * 7}[unit] * amount
        return now - timedelta(hours=hours)
    from pipeline.notify import parse_when

    try:
        return parse_when(value)
    except ValueError:
        raise typer.BadParameter(
            f"'{value}' is neither a duration like 7d / 36h nor an ISO 8601 date",
            param_hint="--since",
        ) from None


def parse_now(value: str | None) -> datetime:
    """--now, defaulting to the current time."""
    return parse_iso(value) or datetime.now(UTC)


SHORT_ID = 12


def resolve_id(store: Store, given: str) -> str:
    """The full alert id for an id or a unique prefix of one (lists show 12 characters)."""
    given = given.strip()
    if given and store.get_many("alerts", [given], fields=[]):
        return given
    if len(given) >= 6:
        matches = [
            i for i, _ in store.scan("alerts", {"match_all": {}}, fields=[]) if i.startswith(given)
        ]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise _fail(f"'{given}' matches {len(matches)} alerts; give more of the id")
    raise _fail(f"no alert with id '{given}' (see: stancewatch alerts list)")


def _load(store: Store, alert_id: str) -> Alert:
    from pipeline.notify import alert_from_document

    full = resolve_id(store, alert_id)
    return alert_from_document(full, store.get_many("alerts", [full])[full])


def _state(alert: Alert, max_attempts: int) -> str:
    if alert.status == "failed":
        retry = "will retry" if alert.attempts < max_attempts else "gave up; use resend"
        return f"failed ({alert.attempts}/{max_attempts}, {retry})"
    return alert.status


def _when(dt: datetime | None) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%d %H:%M") if dt else ""


def list_alerts(
    status: list[str] = typer.Option(
        None,
        "--status",
        "-s",
        help="Only these states (pending, sent, failed, suppressed); repeatable.",
    ),
    since: str | None = typer.Option(
        None, "--since", help="Only alerts whose window ended since: 7d, 36h, 2w or an ISO date."
    ),
    kind: str | None = typer.Option(
        None, "--kind", help="stance_shift or coverage_spike (default: both)."
    ),
    limit: int = typer.Option(50, "--limit", "-n", min=1, max=10_000, help="Most recent N."),
    as_json: bool = JSON_OPTION,
    config_dir: Path | None = CONFIG_OPTION,
) -> None:
    """List recent alerts, newest first, with their delivery state."""
    from pipeline.notify import ALERT_KINDS, alert_from_document, subject_for

    for value in status or []:
        if value not in STATUSES:
            raise typer.BadParameter(
                f"'{value}' is not one of {', '.join(STATUSES)}", param_hint="--status"
            )
    if kind is not None and kind not in ALERT_KINDS:
        raise typer.BadParameter(
            f"'{kind}' is not one of {', '.join(ALERT_KINDS)}", param_hint="--kind"
        )
    config = AppConfig(config_dir)
    config.validate(need_feeds=False)
    now = datetime.now(UTC)
    filters: list[dict[str, Any]] = [{"terms": {"kind": [kind] if kind else list(ALERT_KINDS)}}]
    if status:
        filters.append({"terms": {"status": status}})
    start = parse_since(since, now=now)
    if start is not None:
        filters.append({"range": {"window_end": {"gte": start.isoformat()}}})
    body = {
        "size": limit,
        "query": {"bool": {"filter": filters}},
        "sort": [{"window_end": {"order": "desc"}}, {"detected_at": {"order": "desc"}}],
    }
    with _store(config) as store:
        response = store.search("alerts", body)
    hits = response.get("hits", {}).get("hits", [])
    alerts = [alert_from_document(h["_id"], h.get("_source") or {}) for h in hits]
    if as_json:
        typer.echo(json.dumps([{"id": a.id, **a.to_document()} for a in alerts], indent=2))
        return
    if not alerts:
        console.print("No alerts match.")
        return
    table = Table(title=f"Alerts ({len(alerts)} shown, newest first)", show_lines=False)
    table.add_column("ID", no_wrap=True)
    table.add_column("Window end (UTC)")
    table.add_column("What changed")
    table.add_column("State")
    table.add_column("Sent / reason")
    max_attempts = config.alerts.max_attempts
    for alert in alerts:
        state = _state(alert, max_attempts)
        style = {"sent": "green", "pending": "yellow", "suppressed": "dim"}.get(alert.status, "red")
        detail = _when(alert.sent_at) if alert.status == "sent" else (alert.status_reason or "")
        if alert.status == "sent" and alert.recipients:
            detail += f" to {', '.join(alert.recipients)}"
        table.add_row(
            alert.id[:SHORT_ID],
            _when(alert.window_end),
            escape(alert.subject or subject_for(alert)),
            f"[{style}]{escape(state)}[/]",
            escape(detail),
        )
    console.print(table)


def show(
    alert_id: str = typer.Argument(
        ..., help="The alert id, or its first characters (from `stancewatch alerts list`)."
    ),
    email: bool = typer.Option(False, "--email", help="Print the e-mail's text part as sent."),
    as_json: bool = JSON_OPTION,
    config_dir: Path | None = CONFIG_OPTION,
) -> None:
    """Show one alert: what changed, the numbers, the evidence and its delivery state."""
    from pipeline.notify import kibana_url, recipients_for, render_alert, subject_for

    config = AppConfig(config_dir)
    config.validate(need_feeds=False)
    with _store(config) as store:
        alert = _load(store, alert_id)
    if as_json:
        typer.echo(json.dumps({"id": alert.id, **alert.to_document()}, indent=2))
        return
    if email:
        typer.echo(render_alert(alert, config.alerts, config.env).text)
        return
    settings = config.alerts
    table = Table(show_header=False, title=escape(alert.subject or subject_for(alert)))
    table.add_column("key", style="bold", no_wrap=True)
    table.add_column("value")
    rows: list[tuple[str, str]] = [
        ("id", alert.id),
        ("kind", alert.kind),
        ("topic", alert.topic),
    ]
    if alert.kind == "stance_shift":
        stats = alert.stats
        rows += [
            ("actor", alert.actor or ""),
            ("change", f"{alert.from_stance} -> {alert.to_stance}"),
            (
                "baseline",
                f"{_when(alert.baseline_start)} - {_when(alert.baseline_end)}: "
                f"{_counts(stats.get('baseline') or {})}",
            ),
            (
                "recent",
                f"{_when(alert.window_start)} - {_when(alert.window_end)}: "
                f"{_counts(stats.get('recent') or {})}",
            ),
            ("p-value", str(stats.get("p_value"))),
        ]
    else:
        stats = alert.stats
        rows += [
            ("window", f"{_when(alert.window_start)} - {_when(alert.window_end)}"),
            ("articles", str(stats.get("articles"))),
            ("baseline mean", str(stats.get("baseline_mean"))),
            ("ratio / z", f"{stats.get('ratio')} / {stats.get('z')}"),
        ]
    rows += [
        ("detected", _when(alert.detected_at)),
        ("state", _state(alert, settings.max_attempts)),
        ("reason", alert.status_reason or ""),
        ("sent", f"{_when(alert.sent_at)} {', '.join(alert.recipients)}".strip()),
        (
            "would go to",
            ", ".join(recipients_for(alert, settings.routes, config.env.alert_to))
            or "(nobody: set STANCEWATCH_ALERT_TO)",
        ),
    ]
    link = kibana_url(alert, config.env.kibana_url, settings)
    if link:
        rows.append(("kibana", link))
    for key, value in rows:
        table.add_row(key, escape(value))
    console.print(table)
    for e in alert.evidence:
        console.print(
            f"[bold]{e.period}[/] {escape(e.stance or '')} {_when(e.published)} "
            f"{escape(e.source)}: {escape(e.sentence or e.title)}\n    {escape(e.url)}",
            highlight=False,
        )


def _counts(window: dict[str, Any]) -> str:
    counts = window.get("counts") or {}
    shares = window.get("shares") or {}
    parts = [f"{k} {counts.get(k, 0)} ({float(shares.get(k, 0)) * 100:.0f}%)" for k in counts]
    return f"{window.get('mentions', 0)} reports: " + ", ".join(parts)


def resend(
    alert_id: str = typer.Argument(
        ..., help="The alert id, or its first characters (from `stancewatch alerts list`)."
    ),
    now: str | None = NOW_OPTION,
    config_dir: Path | None = CONFIG_OPTION,
) -> None:
    """Deliver one alert again, whatever its state (the only way an alert is sent twice)."""
    from pipeline.notify import DeliveryError, open_channel
    from pipeline.notify import resend as resend_alert

    config = AppConfig(config_dir)
    config.validate(need_feeds=False)
    when = parse_now(now)
    with _store(config) as store:
        full = resolve_id(store, alert_id)
        try:
            sent = resend_alert(store, config, full, now=when)
        except KeyError:
            raise _fail(f"no alert with id '{alert_id}' (see: stancewatch alerts list)") from None
        except DeliveryError as exc:
            raise _fail(f"not sent: {exc}") from None
    channel = open_channel(config.env).description
    console.print(
        f"Sent [bold]{escape(sent.subject or '')}[/] via {escape(channel)}"
        + (f" to {escape(', '.join(sent.recipients))}" if sent.recipients else ""),
        highlight=False,
    )


def detect_command(
    now: str | None = typer.Option(
        None,
        "--now",
        help="Fix the clock (ISO 8601, e.g. 2025-03-15T12:00:00Z): replays and tests see only "
        "data published before it.",
        show_default=False,
    ),
    no_deliver: bool = typer.Option(
        False, "--no-deliver", help="Store new alerts but send nothing (they stay pending)."
    ),
    as_json: bool = JSON_OPTION,
    config_dir: Path | None = CONFIG_OPTION,
) -> None:
    """Run stance-shift and coverage-spike detection now, then deliver due alerts."""
    from pipeline.detect import detect
    from pipeline.notify import deliver

    config = AppConfig(config_dir)
    config.validate(need_feeds=False)
    when = parse_now(now)
    with _store(config) as store:
        store.check()
        store.setup()
        store.refresh()
        found = detect(store, config, now=when)
        delivered = deliver(store, config, now=when) if not no_deliver else None
    if as_json:
        out: dict[str, Any] = {"detect": found.model_dump(mode="json")}
        if delivered is not None:
            out["deliver"] = delivered.model_dump(mode="json")
        typer.echo(json.dumps(out, indent=2))
        return
    console.print(
        f"Detection at {_when(found.now)} UTC over {found.stance_mentions} stance mentions and "
        f"{found.articles} relevant articles: {found.found} events in the history, "
        f"{len(found.new)} new, {found.existing} already stored."
    )
    if found.new:
        from pipeline.notify import subject_for

        table = Table(title="New alerts")
        table.add_column("ID", no_wrap=True)
        table.add_column("Window end (UTC)")
        table.add_column("What changed")
        table.add_column("State")
        for alert in found.new:
            table.add_row(
                alert.id[:SHORT_ID],
                _when(alert.window_end),
                escape(subject_for(alert)),
                alert.status + (f" ({alert.status_reason})" if alert.status_reason else ""),
            )
        console.print(table)
    if delivered is None:
        console.print("Delivery skipped (--no-deliver).")
        return
    console.print(
        f"Delivery via {escape(delivered.channel)}: {delivered.sent} sent, "
        f"{delivered.failed} failed, {delivered.pending} still due, "
        f"{delivered.suppressed} suppressed (outside horizon)."
    )
    for subject in delivered.subjects:
        console.print(f"  sent: {escape(subject)}", highlight=False)
    for error in delivered.errors:
        err.print(f"  [red]failed:[/] {escape(error)}", highlight=False)
    if delivered.digest:
        console.print(f"  digest: {escape(delivered.digest)}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add ``stancewatch alerts ...`` to the root app."""
    alerts_app.command("list")(list_alerts)
    alerts_app.command("show")(show)
    alerts_app.command("resend")(resend)
    alerts_app.command("detect")(detect_command)
    app.add_typer(alerts_app, name="alerts")
