"""Options and argument parsing shared by several commands, so that they read the same."""

from __future__ import annotations

from datetime import UTC, datetime

import typer

CONFIG_OPTION = typer.Option(
    None,
    "--config",
    "-c",
    help="Config directory (default: $STANCEWATCH_CONFIG or the project's config/).",
    show_default=False,
)
NOW_OPTION = typer.Option(
    None,
    "--now",
    help="Fix the clock (ISO 8601, e.g. 2025-03-15T12:00:00Z) for replays, demos and tests.",
    show_default=False,
)
JSON_OPTION = typer.Option(False, "--json", help="Print JSON instead of a table.")


def parse_now(value: str | None) -> datetime | None:
    """ISO 8601 to an aware UTC datetime (naive = UTC); a usage error otherwise."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(
            f"'{value}' is not an ISO 8601 date-time (e.g. 2025-03-15T12:00:00Z)",
            param_hint="--now",
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)
