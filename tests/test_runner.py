"""The runner through the command line, against the real local Elasticsearch node.

- ``stancewatch ingest`` of JSON Lines: counts, idempotent re-import, bad lines reported;
- ``stancewatch run --once`` with a good feed and a broken one: exit 0, the bad feed named,
  and ``stancewatch feeds health`` shows it failing;
- Elasticsearch unreachable: the run spools, exits 0 and says so; the next run with the node
  back replays the spool and the counts equal a run without the outage;
- nowhere to write (no cluster and no writable spool): exit 1 with one clear line.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from elasticsearch import Elasticsearch
from pytest_httpserver import HTTPServer

PROJECT_DIR = Path(__file__).resolve().parent.parent
FIXTURES = PROJECT_DIR / "tests" / "fixtures"

pytestmark = [pytest.mark.es, pytest.mark.slow]

ARTICLES = [
    {
        "url": "https://www.example-news.org/world/2024/06/15/summit-ends?utm_source=twitter",
        "title": "Peace summit in Switzerland ends with call for talks including Russia",
        "text": (
            "BÜRGENSTOCK, Switzerland — Delegations from more than 90 countries ended a two-day "
            "summit on Sunday with a joint communiqué calling for dialogue between all parties "
            "to end the war in Ukraine. Swiss President Viola Amherd said the next step must be "
            "talks that include Russia. Turkish President Recep Tayyip Erdoğan said Ankara was "
            "ready to host negotiations between Kyiv and Moscow."
        ),
        "published": "2024-06-16T17:20:00+02:00",
        "source": "Example News",
    },
    {
        "url": "https://www.example-news.org/sport/2024/06/16/derby",
        "title": "Derby ends goalless as hosts rarely leave their own territory",
        "text": (
            "The city derby ended 0-0 on Sunday after the home side spent most of the second half "
            "pinned in their own territory. The visiting coach said his players had been denied "
            "space and time on the ball."
        ),
        "published": "2024-06-16T20:05:00+01:00",
    },
    {
        "url": "https://www.example-news.org/world/2024/06/14/putin-terms",
        "title": "Putin demands Ukraine withdraw from four regions before any ceasefire",
        "summary": (
            "MOSCOW — President Vladimir Putin said on Friday that Russia would order a ceasefire "
            "and begin negotiations only if Ukraine withdraws its troops from the Donetsk, "
            "Luhansk, Zaporizhzhia and Kherson regions. Ukrainian President Volodymyr Zelenskyy "
            "rejected the demand as an ultimatum and said Ukraine would not give up its land."
        ),
        "published": "2024-06-14T16:40:00Z",
    },
]


def stancewatch(
    *args: str, env: dict[str, str], timeout: int = 600
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=PROJECT_DIR,
        env={**os.environ, **env},
        check=False,
    )


def count(es_url: str, alias: str) -> int:
    client = Elasticsearch(es_url)
    try:
        client.indices.refresh(index=alias)
        return int(client.count(index=alias)["count"])
    finally:
        client.close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def articles_file(tmp_path: Path) -> Path:
    path = tmp_path / "articles.jsonl"
    lines = [json.dumps(record) for record in ARTICLES]
    lines.insert(1, "{this is not json")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_ingest_counts_and_is_idempotent(
    sw_env: dict[str, str], articles_file: Path, es_url: str, index_prefix: str
) -> None:
    first = stancewatch("ingest", str(articles_file), "--quiet", "--no-deliver", env=sw_env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "Articles: 3 new" in first.stdout
    assert "not JSON" in first.stdout  # the bad line is reported, the rest ingested
    assert count(es_url, f"{index_prefix}-articles") == 3
    stances = count(es_url, f"{index_prefix}-stances")
    assert stances >= 2, "Putin/Zelenskyy and Erdoğan take positions in these articles"

    again = stancewatch(
        "ingest", str(articles_file), "--quiet", "--no-deliver", "--json", env=sw_env
    )
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)
    assert summary["process"]["articles_new"] == 0
    assert summary["articles_unchanged"] == 3
    assert count(es_url, f"{index_prefix}-articles") == 3
    assert count(es_url, f"{index_prefix}-stances") == stances


@pytest.fixture
def two_feeds(tmp_path: Path, httpserver: HTTPServer) -> Path:
    good = (FIXTURES / "scenarios" / "nato-shift" / "atlantic-ledger.xml").read_bytes()
    httpserver.expect_request("/good.xml").respond_with_data(good, content_type="text/xml")
    httpserver.expect_request("/gone.xml").respond_with_data("gone", status=404)
    config = tmp_path / "config"
    config.mkdir()
    (config / "feeds.yaml").write_text(
        "feeds:\n"
        f"  - {{id: ledger, url: '{httpserver.url_for('/good.xml')}'}}\n"
        f"  - {{id: vanished, url: '{httpserver.url_for('/gone.xml')}'}}\n",
        encoding="utf-8",
    )
    (config / "settings.yaml").write_text(
        "fetch:\n  allow_private_addresses: true\n", encoding="utf-8"
    )
    return config


def test_bad_feed_is_reported_not_fatal_and_health_shows_it(
    sw_env: dict[str, str], two_feeds: Path, es_url: str, index_prefix: str
) -> None:
    result = stancewatch(
        "run",
        "--once",
        "--all-feeds",
        "--quiet",
        "--no-deliver",
        "--config",
        str(two_feeds),
        env=sw_env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 failed" in result.stdout
    assert "vanished" in result.stdout and "404" in result.stdout
    assert "Articles: 5 new" in result.stdout
    assert count(es_url, f"{index_prefix}-articles") == 5

    health = stancewatch("feeds", "health", "--config", str(two_feeds), "--json", env=sw_env)
    assert health.returncode == 0, health.stderr
    states = {doc["feed_id"]: doc for doc in map(json.loads, health.stdout.splitlines())}
    assert states["ledger"]["consecutive_failures"] == 0
    assert states["vanished"]["consecutive_failures"] == 1
    assert states["vanished"]["failure_kind"] == "hard"
    assert states["vanished"]["next_due"] > states["ledger"]["next_due"], "failing feeds slow down"


def test_outage_spools_then_next_run_catches_up(
    sw_env: dict[str, str], articles_file: Path, es_url: str, index_prefix: str
) -> None:
    down = {**sw_env, "STANCEWATCH_ES_URL": f"http://127.0.0.1:{closed_port()}"}
    result = stancewatch("ingest", str(articles_file), "--quiet", "--no-deliver", env=down)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "unavailable" in result.stdout
    assert "spooled: " in result.stdout and "spooled: 0," not in result.stdout
    spooled = list((Path(sw_env["STANCEWATCH_DATA_DIR"]) / "spool").rglob("*.jsonl"))
    assert spooled, "documents must be on disk while the cluster is away"

    back = stancewatch(
        "ingest", str(articles_file), "--quiet", "--no-deliver", "--json", env=sw_env
    )
    assert back.returncode == 0, back.stderr
    summary = json.loads(back.stdout)
    assert summary["spool_replayed"] > 0
    assert count(es_url, f"{index_prefix}-articles") == 3


def test_nowhere_to_write_fails_with_one_line(
    sw_env: dict[str, str], articles_file: Path, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the data directory should be", encoding="utf-8")
    env = {
        **sw_env,
        "STANCEWATCH_ES_URL": f"http://127.0.0.1:{closed_port()}",
        "STANCEWATCH_DATA_DIR": str(blocker),
    }
    result = stancewatch("ingest", str(articles_file), "--quiet", "--no-deliver", env=env)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "nowhere to write" in result.stderr
    assert "Traceback" not in result.stderr
