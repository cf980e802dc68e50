"""End to end through ``stancewatch run --once``: feeds over local HTTP, the real
Elasticsearch node, the real classifier and a real SMTP server (aiosmtpd).

The scenario (``tests/fixtures/scenarios/nato-shift/``, written for this test and never used
for training) follows the founding example of the product: in July and early August 2023
the NATO Secretary General opposes territorial concessions (four reports), then in mid
August says Ukraine may have to cede land (three reports). Zelenskyy opposes concessions
throughout and Erdoğan supports talks throughout; seven noise items share the vocabulary
(football "territory", mining and airport concessions, a concession speech, wage talks,
war news with no negotiation angle). Exactly one e-mail must go out, once.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer
from smtp_sink import Sink, running_smtp

PROJECT_DIR = Path(__file__).resolve().parent.parent
SCENARIO = PROJECT_DIR / "tests" / "fixtures" / "scenarios" / "nato-shift"
NOW = "2023-08-22T12:00:00Z"
FEEDS = {
    "harbour-wire": ("harbour-wire.xml", "application/rss+xml; charset=utf-8"),
    "steppe-review": ("steppe-review.xml", "application/atom+xml"),
    "atlantic-ledger": ("atlantic-ledger.xml", "text/xml"),
}
ITEMS = 21

pytestmark = [pytest.mark.slow, pytest.mark.es]


@pytest.fixture
def inbox() -> Iterator[tuple[Sink, int]]:
    with running_smtp() as server:
        yield server.sink, server.port


@pytest.fixture
def scenario_config(tmp_path: Path, httpserver: HTTPServer) -> Path:
    for feed_id, (name, content_type) in FEEDS.items():
        httpserver.expect_request(f"/feeds/{feed_id}").respond_with_data(
            (SCENARIO / name).read_bytes(), content_type=content_type
        )
    config = tmp_path / "config"
    config.mkdir()
    lines = ["feeds:"]
    for feed_id in FEEDS:
        lines += [f"  - id: {feed_id}", f"    url: {httpserver.url_for('/feeds/' + feed_id)}"]
    (config / "feeds.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    # The feeds are on 127.0.0.1, which the SSRF guard refuses unless told otherwise.
    (config / "settings.yaml").write_text(
        "fetch:\n  allow_private_addresses: true\n", encoding="utf-8"
    )
    return config


def run_once(config: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline",
            "run",
            "--once",
            "--all-feeds",
            "--quiet",
            "--config",
            str(config),
            "--now",
            NOW,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=PROJECT_DIR,
        env={**os.environ, **env},
        check=False,
    )


def test_scenario_produces_exactly_the_expected_email_once(
    scenario_config: Path, sw_env: dict[str, str], inbox: tuple[Sink, int]
) -> None:
    handler, port = inbox
    env = {
        **sw_env,
        "STANCEWATCH_SMTP_URL": f"smtp://127.0.0.1:{port}",
        "STANCEWATCH_ALERT_TO": "desk@example.org",
        "STANCEWATCH_ALERT_FROM": "Stancewatch <alerts@example.org>",
    }
    first = run_once(scenario_config, env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"Articles: {ITEMS} new" in first.stdout, first.stdout

    subjects = [str(m["Subject"]) for m in handler.messages()]
    assert subjects == ["Stance shift: Jens Stoltenberg now supports territorial concessions"], (
        subjects,
        first.stdout,
    )
    message = handler.messages()[0]
    assert message["To"] == "desk@example.org"
    text = message.get_body(preferencelist=("plain",))
    assert text is not None
    body = text.get_content()
    assert "oppose" in body and "support" in body
    assert (
        "https://atlanticledger.example/diplomacy/2023/08/17/stoltenberg-land-for-security-deal/"
        in body
    )

    # The same articles again, with the same clock: nothing new, nothing sent twice.
    second = run_once(scenario_config, env)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "Articles: 0 new" in second.stdout, second.stdout
    assert len(handler.received) == 1
