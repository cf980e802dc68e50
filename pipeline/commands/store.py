"""Store commands: ``setup``, ``search``, ``indices``, ``spool status|replay``, ``kibana``.

When the cluster is down every command that needs it prints one line naming the URL and
exits with code 1.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pipeline.commands.options import CONFIG_OPTION
from pipeline.config import AppConfig

console = Console()
err = Console(stderr=True)

spool_app = typer.Typer(
    help="The local spool of documents written while Elasticsearch was unavailable.",
    no_args_is_help=True,
)
kibana_app = typer.Typer(
    help="Kibana saved objects: data views and the Stancewatch overview dashboard.",
    no_args_is_help=True,
)


def _fail(message: str) -> typer.Exit:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(1)


@contextmanager
def _store(config_dir: Path | None) -> Iterator[object]:
    """A Store for the command; cluster problems become one line and exit code 1."""
    from pipeline.store import Store, StoreSetupError, StoreUnavailable

    # The client logs each failed try as a warning; the one error line below says it all.
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        logging.getLogger("elastic_transport").setLevel(logging.ERROR)
    config = AppConfig(config_dir)
    store = Store.from_config(config)
    try:
        yield store
    except StoreUnavailable as exc:
        raise _fail(str(exc)) from None
    except StoreSetupError as exc:
        raise _fail(str(exc)) from None
    finally:
        store.close()


def setup(config: Path | None = CONFIG_OPTION) -> None:
    """Create or upgrade index templates, aliases and lifecycle policies (idempotent)."""
    from pipeline.store import Store

    with _store(config) as store:
        assert isinstance(store, Store)
        store.check()
        console.print(f"Elasticsearch at {store.url}, index prefix [bold]{store.prefix}[/]")
        for line in store.setup():
            console.print(f"  {escape(line)}", highlight=False)


def search(
    query: str = typer.Argument("", help='Words to look for ("phrase", -exclude, a | b).'),
    topic: str | None = typer.Option(
        None, "--topic", help="territorial_concessions or peace_talks.", show_default=False
    ),
    actor: str | None = typer.Option(
        None, "--actor", help="Canonical actor name.", show_default=False
    ),
    stance: str | None = typer.Option(
        None,
        "--stance",
        help="support, oppose or neutral (of --actor, if given).",
        show_default=False,
    ),
    since: str | None = typer.Option(
        None, "--since", help="7d, 24h, 2w, a date or an ISO time.", show_default=False
    ),
    source: str | None = typer.Option(
        None, "--source", help="Feed id, domain or source name.", show_default=False
    ),
    similar_to: str | None = typer.Option(
        None,
        "--similar-to",
        help="Article id: find articles similar to it (kNN).",
        show_default=False,
    ),
    limit: int = typer.Option(20, "--limit", "-n", min=1, max=1000, help="Results to show."),
    as_json: bool = typer.Option(False, "--json", help="One JSON document, for scripts."),
    config: Path | None = CONFIG_OPTION,
) -> None:
    """Search the articles: full text, filters, stance of an actor, similar articles."""
    from pydantic import ValidationError

    from pipeline.search import SearchError, SearchQuery, parse_since, search_articles
    from pipeline.store import Store

    try:
        q = SearchQuery.model_validate(
            {
                "text": query,
                "topic": topic,
                "actor": actor,
                "stance": stance,
                "since": parse_since(since) if since else None,
                "source": source,
                "similar_to": similar_to,
                "limit": limit,
            }
        )
    except SearchError as exc:
        raise _fail(str(exc)) from None
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise _fail(f"--{field.replace('_', '-')}: {first['msg']}") from None
    with _store(config) as store:
        assert isinstance(store, Store)
        store.check()  # fail fast (no retries) when the cluster is down
        try:
            results = search_articles(store, q)
        except SearchError as exc:
            raise _fail(str(exc)) from None
    if as_json:
        typer.echo(results.model_dump_json())
        return
    if not results.hits:
        console.print("No matching articles.")
        return
    table = Table(show_header=True, header_style="bold", expand=True, show_lines=True)
    table.add_column("published", no_wrap=True)
    table.add_column("source", max_width=18)
    table.add_column("article", ratio=3)
    table.add_column("topics", max_width=14)
    table.add_column("actors / stance", ratio=2)
    table.add_column("id", no_wrap=True, style="dim")
    for hit in results.hits:
        lines = [f"[bold]{escape(hit.title)}[/]"]
        if hit.snippet:
            lines.append(escape(hit.snippet))
        if hit.url:
            lines.append(f"[dim]{escape(hit.url)}[/]")
        who = [
            f"{escape(e.actor)}: [bold]{e.stance}[/] {e.topic.replace('_', ' ')} — "
            f"“{escape(e.evidence[:140])}”"
            for e in hit.evidence
        ] or [escape(", ".join(hit.actors[:5]))]
        table.add_row(
            hit.published.strftime("%Y-%m-%d %H:%M") if hit.published else "-",
            escape(hit.source or "-"),
            "\n".join(lines),
            escape(", ".join(t.replace("_", " ") for t in hit.topics)) or "-",
            "\n".join(who),
            hit.id,
        )
    console.print(table)
    console.print(f"{len(results.hits)} of {results.total} matching article(s)")


def indices(config: Path | None = CONFIG_OPTION) -> None:
    """Document counts per alias and backing index."""
    from pipeline.store import Store

    with _store(config) as store:
        assert isinstance(store, Store)
        store.check()
        rows = store.index_stats()
    table = Table("alias", "backing index", "write", "docs", "size", "health", header_style="bold")
    for row in rows:
        if row["index"] is None:
            table.add_row(row["alias"], "[red]missing: run `stancewatch setup`[/]", "", "", "", "")
            continue
        table.add_row(
            row["alias"],
            row["index"],
            "yes" if row["write"] else "",
            f"{row['docs']:,}",
            _size(row["bytes"]),
            row["health"] or "-",
        )
    console.print(table)


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"


@spool_app.command("status")
def spool_status(
    config: Path | None = CONFIG_OPTION,
    as_json: bool = typer.Option(False, "--json", help="JSON, for scripts."),
) -> None:
    """What is waiting in the spool (works without Elasticsearch)."""
    from pipeline.store.spool import Spool

    app_config = AppConfig(config)
    status = Spool(app_config.env.spool_dir / app_config.env.index_prefix).status()
    if as_json:
        typer.echo(status.model_dump_json())
        return
    console.print(f"Spool: {status.directory}")
    if not status.records:
        console.print("  empty — nothing waiting")
    else:
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(status.by_kind.items()))
        console.print(
            f"  {status.records} document(s) in {status.files} file(s) ({kinds}), "
            f"oldest spooled {status.oldest}"
        )
    if status.corrupt_lines:
        console.print(f"  [yellow]{status.corrupt_lines} corrupt line(s) in pending files[/]")
    if status.corrupt_files:
        console.print(f"  {status.corrupt_files} file(s) of corrupt lines set aside in corrupt/")
    if status.rejected_records:
        console.print(
            f"  {status.rejected_records} document(s) refused by Elasticsearch, kept in rejected/"
        )


@spool_app.command("replay")
def spool_replay(config: Path | None = CONFIG_OPTION) -> None:
    """Write the spooled documents now (idempotent; the next run does it too)."""
    from pipeline.store import Store

    with _store(config) as store:
        assert isinstance(store, Store)
        store.check()
        report = store.replay_spool()
        details = store.last_replay
    console.print(
        f"Replayed {report.ok} document(s); {len(report.failed)} refused; "
        f"{report.spooled} still spooled"
    )
    for doc_id, reason in report.failed[:20]:
        console.print(f"  [red]refused[/] {doc_id}: {escape(reason)}", highlight=False)
    for message in details.messages if details else []:
        console.print(f"  {escape(message)}", highlight=False)
    if report.spooled:
        raise typer.Exit(1)


FILE_OPTION = typer.Option(
    None,
    "--file",
    "-f",
    help="NDJSON file (default: kibana/stancewatch.ndjson).",
    show_default=False,
)


@kibana_app.command("import")
def kibana_import(
    url: str | None = typer.Option(
        None, "--url", help="Kibana URL (default: $STANCEWATCH_KIBANA_URL).", show_default=False
    ),
    file: Path | None = FILE_OPTION,
    config: Path | None = CONFIG_OPTION,
) -> None:
    """Import data views and the dashboard into Kibana (overwrites our own objects)."""
    from pipeline.kibana import (
        DEFAULT_NDJSON,
        KibanaImportError,
        KibanaObjectsError,
        import_saved_objects,
    )

    app_config = AppConfig(config)
    env = app_config.env
    target = url or env.kibana_url
    if not target:
        raise _fail("no Kibana URL: pass --url or set STANCEWATCH_KIBANA_URL")
    path = file or (DEFAULT_NDJSON if DEFAULT_NDJSON.exists() else None)
    headers: dict[str, str] = {}
    auth: tuple[str, str] | None = None
    if env.es_api_key:  # Kibana accepts the same credentials as Elasticsearch
        headers["Authorization"] = f"ApiKey {env.es_api_key}"
    elif env.es_user:
        auth = (env.es_user, env.es_password or "")
    try:
        result = import_saved_objects(
            target, path, prefix=env.index_prefix, headers=headers, auth=auth
        )
    except (KibanaImportError, KibanaObjectsError, OSError) as exc:
        raise _fail(str(exc)) from None
    console.print(
        f"Imported {result.success_count} of {result.objects} saved object(s) into {target} "
        f"(data views for prefix {env.index_prefix}); open the dashboard "
        f"{target.rstrip('/')}/app/dashboards#/view/stancewatch-overview"
    )


@kibana_app.command("check")
def kibana_check(file: Path | None = FILE_OPTION) -> None:
    """Validate the NDJSON: import format, references, fields that exist in our mappings."""
    from pipeline.kibana import (
        DEFAULT_NDJSON,
        KibanaObjectsError,
        build_saved_objects,
        load_ndjson,
        render_ndjson,
        validate_saved_objects,
    )

    path = file or DEFAULT_NDJSON
    try:
        objects = load_ndjson(path)
    except (KibanaObjectsError, OSError) as exc:
        raise _fail(f"{path}: {exc}") from None
    problems = validate_saved_objects(objects)
    if file is None and render_ndjson(objects) != render_ndjson(build_saved_objects()):
        problems.append(f"{path} differs from pipeline/kibana.py: run `stancewatch kibana build`")
    for problem in problems:
        err.print(f"[red]problem:[/] {escape(problem)}", highlight=False)
    if problems:
        raise typer.Exit(1)
    console.print(f"{path}: {len(objects)} saved object(s), all references and fields resolve")


@kibana_app.command("build")
def kibana_build(file: Path | None = FILE_OPTION) -> None:
    """Regenerate the NDJSON from pipeline/kibana.py (after changing a visualisation)."""
    from pipeline.kibana import DEFAULT_NDJSON, build_saved_objects, render_ndjson

    path = file or DEFAULT_NDJSON
    path.parent.mkdir(parents=True, exist_ok=True)
    objects = build_saved_objects()
    path.write_text(render_ndjson(objects), encoding="utf-8")
    console.print(f"wrote {len(objects)} saved object(s) to {path}")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.command("setup")(setup)
    app.command("search")(search)
    app.command("indices")(indices)
    app.add_typer(spool_app, name="spool")
    app.add_typer(kibana_app, name="kibana")
