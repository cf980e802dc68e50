"""``stancewatch run`` and ``stancewatch ingest``: the monitoring cycle from the command line."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from pipeline.commands.options import CONFIG_OPTION, NOW_OPTION, parse_now
from pipeline.config import AppConfig, ConfigError

console = Console()
err = Console(stderr=True)


def print_summary(summary: object, *, title: str) -> None:
    """The run summary people read after every cycle."""
    from pipeline.runner import RunSummary

    assert isinstance(summary, RunSummary)
    s = summary
    took = (s.finished_at - s.started_at).total_seconds() if s.finished_at else 0.0
    console.rule(f"[bold]{title}[/]")
    if s.feeds_total or s.feed_reports:
        failed = [r for r in s.feed_reports if not r.get("ok")]
        problems = [r for r in s.feed_reports if r.get("ok") and r.get("problems")]
        console.print(
            f"Feeds: [green]{s.feeds_ok} ok[/] ({s.feeds_not_modified} not modified), "
            f"[red]{s.feeds_failed} failed[/], {s.feeds_skipped_not_due} not due"
            f" — of {s.feeds_total}"
        )
        if failed or problems:
            table = Table("feed", "status", "reason", show_header=True, header_style="bold")
            for r in failed:
                table.add_row(r["feed_id"], str(r.get("status") or "-"), str(r.get("error")))
            for r in problems:
                table.add_row(r["feed_id"], "partial", "; ".join(r["problems"])[:200])
            console.print(table)
    p = s.process
    console.print(
        f"Articles: [bold]{p.articles_new}[/] new, {p.articles_updated} updated, "
        f"{s.articles_unchanged} unchanged (skipped)"
    )
    console.print(
        f"Relevant: [bold]{p.relevant}[/]   Stance mentions: [bold]{p.stance_mentions}[/]"
        + (f"   ({p.model}, {p.classify_seconds} s)" if p.model else "")
    )
    console.print(
        f"Documents written: {p.documents_written}, spooled: {p.documents_spooled}, "
        f"failed: {p.documents_failed}"
        + (f", replayed from spool: {s.spool_replayed}" if s.spool_replayed else "")
    )
    for failure in p.failures[:5]:
        console.print(f"  [red]not written[/] {failure}", highlight=False)
    a = s.alerts
    if a.ran:
        console.print(
            f"Alerts: {a.detected_new} new ({a.stance_shifts} stance shifts, "
            f"{a.coverage_spikes} coverage spikes, {a.suppressed} outside the horizon); "
            f"sent {a.sent}, failed {a.failed}, pending {a.pending}"
            + (f" via {a.delivery}" if a.delivery else "")
        )
        for subject in a.subjects:
            console.print(f"  [magenta]✉[/] {subject}", highlight=False)
    else:
        console.print(f"Alerts: not run ({a.skipped_reason})")
    for warning in s.warnings:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)
    console.print("Where to look:")
    state = "up" if s.store_available else "[red]unavailable[/]"
    from pipeline.config import Environment

    env = Environment.from_environ()
    console.print(
        f"  Elasticsearch {env.es_url} ({state}) — indices: " + ", ".join(s.indices.values())
    )
    if s.outbox:
        console.print(f"  Alert e-mails (no SMTP configured): {s.outbox}")
    console.print(f"Done in {took:.1f} s.")


def register(app: typer.Typer) -> None:
    @app.command()
    def run(
        once: bool = typer.Option(False, "--once", help="Run one cycle and exit."),
        config_dir: Path | None = CONFIG_OPTION,
        feed: list[str] = typer.Option(
            [], "--feed", "-f", help="Only this feed id (repeatable).", show_default=False
        ),
        all_feeds: bool = typer.Option(
            False, "--all-feeds", help="Poll every feed now, even those not yet due."
        ),
        interval: int = typer.Option(
            15, "--interval", min=1, help="Minutes between cycles when not --once."
        ),
        no_alerts: bool = typer.Option(
            False, "--no-deliver", help="Detect alerts but send nothing."
        ),
        now: str | None = NOW_OPTION,
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
        as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    ) -> None:
        """Fetch the configured feeds, classify, index, detect and deliver alerts.

        With --once: one cycle, a summary, exit 0 when the run did its job (bad feeds are
        reported, not fatal); exit 2 on bad configuration, 1 when nothing could be written.
        Without --once: repeat every --interval minutes until interrupted (for hosts without
        Airflow).
        """
        from pipeline.runner import RunFailed, run_once

        clock = parse_now(now)  # usage errors before any file is read
        config = AppConfig(config_dir).validate()
        while True:
            try:
                summary = run_once(
                    config,
                    now=clock,
                    feed_ids=feed or None,
                    only_due=not all_feeds,
                    deliver=not no_alerts,
                    progress=not quiet and not as_json,
                )
            except RunFailed as exc:
                err.print(f"[bold red]run failed:[/] {exc}", highlight=False)
                raise typer.Exit(1) from None
            if as_json:
                typer.echo(summary.model_dump_json(indent=2))
            else:
                print_summary(summary, title="Stancewatch run")
            if once:
                return
            time.sleep(interval * 60)

    @app.command()
    def ingest(
        path: str = typer.Argument(
            ...,
            help="JSON Lines file ('-' = stdin): {url, title, text|summary, published[, id, source, language]}.",
        ),
        config_dir: Path | None = CONFIG_OPTION,
        no_alerts: bool = typer.Option(
            False, "--no-deliver", help="Detect alerts but send nothing."
        ),
        now: str | None = NOW_OPTION,
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
        as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    ) -> None:
        """Classify, index and alert on articles from a JSON Lines file (backfills, imports).

        The article id comes from the canonical URL, as for fetched items, so importing the
        same file twice updates instead of duplicating.
        """
        from pipeline.runner import RunFailed, ingest_file

        if path != "-" and not Path(path).is_file():
            raise typer.BadParameter(f"no such file: {path}", param_hint="PATH")
        config = AppConfig(config_dir).validate(need_feeds=False)
        try:
            summary = ingest_file(
                config,
                path,
                now=parse_now(now),
                deliver=not no_alerts,
                progress=not quiet and not as_json,
            )
        except RunFailed as exc:
            err.print(f"[bold red]ingest failed:[/] {exc}", highlight=False)
            raise typer.Exit(1) from None
        except ConfigError:
            raise
        if as_json:
            typer.echo(summary.model_dump_json(indent=2))
        else:
            print_summary(summary, title="Stancewatch ingest")
