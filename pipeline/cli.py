"""The ``stancewatch`` command line (typer). Sub-commands live in ``pipeline/commands/``."""

from __future__ import annotations

import importlib
import logging
import os
import sys

import typer
from rich.console import Console

from pipeline import __version__
from pipeline.config import ConfigError

# One module per area of the flow; each has register(app).
COMMAND_MODULES = (
    "pipeline.commands.run",
    "pipeline.commands.model",
    "pipeline.commands.store",
    "pipeline.commands.alerts",
    "pipeline.commands.feeds",
)

err_console = Console(stderr=True)

app = typer.Typer(
    name="stancewatch",
    help="Monitor news feeds for territorial concessions and peace talks, track who stands "
    "where, and alert when a stance shifts. Every command has --help.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"stancewatch {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log details to stderr."),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # The bundled models are local files: never let a library wait on a model hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


for _module in COMMAND_MODULES:
    importlib.import_module(_module).register(app)


def main() -> None:
    """Entry point: one clear line and exit code 2 for configuration problems.

    Click's standalone mode handles usage errors (exit 2), --help and Ctrl-C; everything else
    propagates to here.
    """
    try:
        app()
    except ConfigError as exc:
        err_console.print(
            f"[bold red]configuration error:[/] {exc}", highlight=False, soft_wrap=True
        )
        sys.exit(2)
