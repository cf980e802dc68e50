"""Detection and delivery end to end through the real Store (local Elasticsearch node) and a
real SMTP server (aiosmtpd, started here).

The timeline: Jens Stoltenberg opposes territorial concessions for three weeks, then
supports them (one of the supportive reports is a wire story reprinted by six outlets);
Volodymyr Zelenskyy and Recep Tayyip Erdogan keep their stances; irrelevant articles
(sports, mining) carry no stance. Articles and stance documents are written with
``Article.to_document()`` / ``Article.stance_documents()``: the exact shape the pipeline
stores.
"""

from __future__ import annotations

import email
import email.policy
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from smtp_sink import SmtpServer, free_port
from typer.testing import CliRunner

from pipeline.config import DEFAULT_CONFIG_DIR, AppConfig
from pipeline.detect import detect
from pipeline.models import Article, ClassifiedText, SourceInfo, StanceMention, TopicScore
from pipeline.notify import deliver
from pipeline.store import Store

pytestmark = pytest.mark.es

T0 = datetime(2023, 5, 1, tzinfo=UTC)
NOW = T0 + timedelta(days=33, hours=6)
SUBJECT = "Stance shift: Jens Stoltenberg now supports territorial concessions"
HOSTILE = '<script>alert("pwned")</script><i>italic</i>'


# ------------------------------------------------------------------------------- fixtures


@pytest.fixture
def smtp(sw_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[SmtpServer]:
    server = SmtpServer()
    monkeypatch.setenv("STANCEWATCH_SMTP_URL", f"smtp://127.0.0.1:{server.port}?timeout=5")
    monkeypatch.setenv("STANCEWATCH_ALERT_TO", "desk@example.org")
    monkeypatch.setenv("STANCEWATCH_ALERT_FROM", "Stancewatch <alerts@stancewatch.example.org>")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    """The shipped alerts.yaml (the defaults users run with) and few store retries."""
    folder = tmp_path / "config"
    folder.mkdir()
    shutil.copy(DEFAULT_CONFIG_DIR / "alerts.yaml", folder / "alerts.yaml")
    (folder / "settings.yaml").write_text("store:\n  max_retries: 0\n  initial_backoff_s: 0.1\n")
    (folder / "feeds.yaml").write_text("feeds: []\n")
    return folder


@pytest.fixture
def store(sw_env: dict[str, str], config_dir: Path) -> Iterator[Store]:
    config = AppConfig(config_dir)
    s = Store.from_config(config)
    s.setup()
    try:
        yield s
    finally:
        s.close()


def app_config(config_dir: Path) -> AppConfig:
    """A fresh config: the environment (SMTP URL, recipients) is read when it is made."""
    return AppConfig(config_dir)


# ---------------------------------------------------------------------------- the timeline


def article(
    n: int,
    when: datetime,
    stances: list[tuple[str, str, float, str]],
    *,
    topics: tuple[str, ...] = ("territorial_concessions",),
    relevant: bool = True,
    cluster: str | None = None,
    source: str = "Baltic Times",
    title: str | None = None,
) -> Article:
    url = f"https://www.example-news.org/{when:%Y/%m/%d}/report-{n}"
    topic_scores = {
        t: TopicScore(label=relevant and t in topics, score=0.9 if t in topics else 0.05)
        for t in ("territorial_concessions", "peace_talks")
    }
    return Article(
        id=f"art-{n:04d}",
        url=url,
        canonical_url=url,
        source=SourceInfo(feed_id="bt", name=source, domain="www.example-news.org", language="en"),
        title=title or f"Report {n}: the war and the negotiations",
        summary="",
        published=when,
        fetched_at=when + timedelta(minutes=3),
        content_hash=f"hash-{n}",
        cluster_id=cluster,
        classification=ClassifiedText(
            id=f"art-{n:04d}",
            topics=topic_scores,
            stances=[
                StanceMention(
                    actor=actor,
                    mention=actor.split()[-1],
                    topic="territorial_concessions",
                    stance=stance,  # type: ignore[arg-type]
                    score=score,
                    evidence=sentence,
                    quote=True,
                )
                for actor, stance, score, sentence in stances
            ],
            actors=[a for a, *_ in stances],
            model="test",
            model_version="1",
        ),
    )


def timeline() -> list[Article]:
    arts: list[Article] = []
    for k, day in enumerate(range(0, 22, 3)):
        arts.append(
            article(
                k,
                T0 + timedelta(days=day, hours=10),
                [
                    (
                        "Jens Stoltenberg",
                        "oppose",
                        0.88,
                        f"Stoltenberg said no one should pressure Ukraine to cede land (day {day}).",
                    )
                ],
            )
        )
    supportive = [
        (29.5, "Stoltenberg said Ukraine may have to give up territory to end the war."),
        (30.5, f"Stoltenberg: a deal could include territory {HOSTILE} for security guarantees."),
        (31.5, "The NATO chief said ceding some land could be the price of peace."),
    ]
    for k, (day, sentence) in enumerate(supportive):
        arts.append(
            article(
                100 + k,
                T0 + timedelta(days=day),
                [("Jens Stoltenberg", "support", 0.91, sentence)],
                title=f"NATO chief on concessions {HOSTILE}" if k == 1 else None,
            )
        )
    # The first supportive story, reprinted by six other outlets: one report, not seven.
    for copy in range(6):
        arts.append(
            article(
                200 + copy,
                T0 + timedelta(days=29.5, hours=1 + copy),
                [("Jens Stoltenberg", "support", 0.91, supportive[0][1])],
                cluster=arts[8].id,
                source=f"Reprint Outlet {copy}",
            )
        )
    for k, day in enumerate(range(1, 33, 2)):
        arts.append(
            article(
                300 + k,
                T0 + timedelta(days=day, hours=8),
                [
                    (
                        "Volodymyr Zelenskyy",
                        "oppose",
                        0.95,
                        "Zelenskyy said Ukraine is not ready to concede any of its territories.",
                    ),
                    (
                        "Recep Tayyip Erdogan",
                        "support",
                        0.8,
                        "Erdogan urged both sides to accept a territorial compromise.",
                    ),
                ],
            )
        )
    for k, day in enumerate(range(0, 33, 4)):
        arts.append(
            article(
                400 + k,
                T0 + timedelta(days=day, hours=15),
                [],
                topics=(),
                relevant=False,
                title="Mining concession renewed as club wins territory dispute",
            )
        )
    return arts


def write(store: Store, arts: list[Article]) -> None:
    report = store.write("articles", [(a.id, a.to_document()) for a in arts])
    assert not report.failed and report.ok == len(arts)
    stances = [doc for a in arts for doc in a.stance_documents()]
    report = store.write("stances", stances)
    assert not report.failed and report.ok == len(stances)
    store.refresh()


def run_cycle(store: Store, config_dir: Path, now: datetime) -> tuple[Any, Any]:
    config = app_config(config_dir)
    found = detect(store, config, now=now)
    delivered = deliver(store, config, now=now)
    return found, delivered


def alert_docs(store: Store) -> dict[str, dict[str, Any]]:
    store.refresh("alerts")
    return {
        i: d
        for i, d in store.scan("alerts", {"match_all": {}})
        if d.get("kind") in ("stance_shift", "coverage_spike")
    }


# ----------------------------------------------------------------------------------- tests


def test_one_shift_one_email_with_numbers_evidence_and_escaping(
    store: Store, smtp: SmtpServer, config_dir: Path
) -> None:
    write(store, timeline())
    found, delivered = run_cycle(store, config_dir, NOW)
    assert [a.actor for a in found.new] == ["Jens Stoltenberg"]
    assert delivered.sent == 1 and delivered.failed == 0

    (msg,) = smtp.sink.messages()
    assert msg["Subject"] == SUBJECT
    assert msg["To"] == "desk@example.org"
    text = msg.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
    html = msg.get_body(preferencelist=("html",)).get_content()  # type: ignore[union-attr]
    # Numbers: 8 opposing reports before; 3 supportive ones now, the reprints counted once.
    assert "Reports (units)                           8                      3" in text
    assert "Support share                       0 % (0)              100 % (3)" in text
    assert "Oppose share                      100 % (8)                0 % (0)" in text
    # Evidence with source, date and link.
    assert "Stoltenberg said Ukraine may have to give up territory to end the war." in text
    assert "Baltic Times, 2023-05-31" in text
    assert "https://www.example-news.org/2023/06/01/report-102" in text
    assert 'href="https://www.example-news.org/2023/05/31/report-101"' in html
    # Feed HTML arrives escaped; the chart is inline.
    assert "<script>" not in html and "<i>italic</i>" not in html
    assert "&lt;script&gt;alert(&#34;pwned&#34;)&lt;/script&gt;&lt;i&gt;italic&lt;/i&gt;" in html
    assert any(p.get_content_type() == "image/png" for p in msg.walk())

    ((alert_id, doc),) = alert_docs(store).items()
    assert doc["status"] == "sent" and doc["recipients"] == ["desk@example.org"]
    assert doc["attempts"] == 1 and doc["sent_at"] and doc["subject"] == SUBJECT
    assert msg["X-Stancewatch-Alert-Id"] == alert_id


def test_replaying_the_same_articles_sends_nothing_new(
    store: Store, smtp: SmtpServer, config_dir: Path
) -> None:
    arts = timeline()
    write(store, arts)
    run_cycle(store, config_dir, NOW)
    assert len(smtp.sink.received) == 1
    first = alert_docs(store)
    # The same run again, the articles ingested again, and later runs (the shift is still
    # visible for days, then leaves the window): no new alert, no new e-mail.
    for later in (NOW, NOW + timedelta(hours=1), NOW + timedelta(days=1), NOW + timedelta(days=5)):
        write(store, arts)
        found, delivered = run_cycle(store, config_dir, later)
        assert found.new == [] and delivered.sent == 0, later
    assert len(smtp.sink.received) == 1
    assert alert_docs(store) == first


def test_stable_actors_give_no_alert(store: Store, smtp: SmtpServer, config_dir: Path) -> None:
    stable = [
        a
        for a in timeline()
        if a.classification and all(s.actor != "Jens Stoltenberg" for s in a.classification.stances)
    ]
    write(store, stable)
    for now in (NOW, NOW + timedelta(days=3)):
        found, delivered = run_cycle(store, config_dir, now)
        assert found.new == [] and delivered.sent == 0
    assert alert_docs(store) == {} and smtp.sink.received == []


def test_smtp_outage_keeps_alerts_due_and_sends_once_when_back(
    store: Store, smtp: SmtpServer, config_dir: Path
) -> None:
    write(store, timeline())
    smtp.stop()
    found, delivered = run_cycle(store, config_dir, NOW)
    assert len(found.new) == 1 and delivered.sent == 0 and delivered.failed == 1
    assert delivered.pending == 1  # retryable
    ((alert_id, doc),) = alert_docs(store).items()
    assert doc["status"] == "failed" and doc["attempts"] == 1
    assert "connection refused" in doc["status_reason"]
    # Still down an hour later: one more attempt, still retryable.
    _, delivered = run_cycle(store, config_dir, NOW + timedelta(hours=1))
    assert delivered.failed == 1 and alert_docs(store)[alert_id]["attempts"] == 2
    # Back up: sent exactly once, then never again.
    smtp.start()
    _, delivered = run_cycle(store, config_dir, NOW + timedelta(hours=2))
    assert delivered.sent == 1
    for later in (NOW + timedelta(hours=3), NOW + timedelta(days=1)):
        _, delivered = run_cycle(store, config_dir, later)
        assert delivered.sent == 0
    assert [m["Subject"] for m in smtp.sink.messages()] == [SUBJECT]
    doc = alert_docs(store)[alert_id]
    assert doc["status"] == "sent" and doc["attempts"] == 3 and doc["status_reason"] is None


def test_no_deliver_leaves_pending_and_old_shifts_are_stored_suppressed(
    store: Store, smtp: SmtpServer, config_dir: Path
) -> None:
    write(store, timeline())
    config = app_config(config_dir)
    found = detect(store, config, now=NOW)
    assert [a.status for a in found.new] == ["pending"]
    # Replaying long after the fact: the same shift, already stored, is not stored again;
    # on a fresh index the old shift is stored as suppressed and never e-mailed.
    assert detect(store, config, now=NOW + timedelta(days=60)).new == []
    for doc_id in alert_docs(store):
        store.delete("alerts", [doc_id])
    store.refresh("alerts")
    late = detect(store, config, now=NOW + timedelta(days=60))
    assert [(a.status, a.status_reason) for a in late.new] == [("suppressed", "outside horizon")]
    delivered = deliver(store, config, now=NOW + timedelta(days=60))
    assert delivered.sent == 0 and smtp.sink.received == []


def test_coverage_spike_is_stored_and_sent_once(
    store: Store, smtp: SmtpServer, config_dir: Path
) -> None:
    arts = [
        article(
            500 + d * 3 + h,
            T0 + timedelta(days=d, hours=2 + h * 7),
            [],
            topics=("peace_talks",),
            title="Envoys meet again",
        )
        for d in range(16)
        for h in range(3)
    ]
    burst = T0 + timedelta(days=16)
    arts += [
        article(
            700 + k,
            burst + timedelta(hours=1 + k),
            [],
            topics=("peace_talks",),
            title=f"Ceasefire talks open in Istanbul <b>live</b> ({k})",
        )
        for k in range(14)
    ]
    write(store, arts)
    now = burst + timedelta(hours=20)
    found, delivered = run_cycle(store, config_dir, now)
    assert [a.kind for a in found.new] == ["coverage_spike"]
    (msg,) = smtp.sink.messages()
    assert msg["Subject"] == "Coverage spike: peace talks — 14 articles in 24 h (4.7× normal)"
    html = msg.get_body(preferencelist=("html",)).get_content()  # type: ignore[union-attr]
    assert "&lt;b&gt;live&lt;/b&gt;" in html and "<b>live</b>" not in html
    for later in (now + timedelta(hours=2), now + timedelta(days=1)):
        found, delivered = run_cycle(store, config_dir, later)
        assert found.new == [] and delivered.sent == 0
    assert len(smtp.sink.received) == 1


def test_outbox_without_smtp(store: Store, config_dir: Path, sw_env: dict[str, str]) -> None:
    write(store, timeline())
    _, delivered = run_cycle(store, config_dir, NOW)
    outbox = Path(sw_env["STANCEWATCH_OUTBOX"])
    (path,) = outbox.glob("*.eml")
    assert delivered.sent == 1 and delivered.files == [str(path)]
    parsed = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert parsed["Subject"] == SUBJECT
    run_cycle(store, config_dir, NOW + timedelta(days=1))
    assert list(outbox.glob("*.eml")) == [path]


# ------------------------------------------------------------------------------------ CLI


def test_cli_detect_list_show_resend(store: Store, smtp: SmtpServer, config_dir: Path) -> None:
    from pipeline.cli import app

    write(store, timeline())
    runner = CliRunner()
    base = ["--config", str(config_dir)]
    result = runner.invoke(app, ["alerts", "detect", "--now", "2023-06-03T06:00:00Z", *base])
    assert result.exit_code == 0, result.output
    assert "1 new" in result.output and "1 sent" in result.output
    assert len(smtp.sink.received) == 1

    result = runner.invoke(app, ["alerts", "list", "--json", *base])
    assert result.exit_code == 0, result.output
    import json

    (row,) = json.loads(result.output)
    assert row["status"] == "sent" and row["actor"] == "Jens Stoltenberg"

    result = runner.invoke(app, ["alerts", "list", "--status", "sent", *base])
    assert result.exit_code == 0 and "Stoltenberg" in result.output
    assert row["id"][:12] in result.output
    result = runner.invoke(app, ["alerts", "list", "--status", "pending", *base])
    assert result.exit_code == 0 and "No alerts match." in result.output

    result = runner.invoke(app, ["alerts", "show", row["id"], "--email", *base])
    assert result.exit_code == 0 and result.output.startswith(SUBJECT)

    result = runner.invoke(app, ["alerts", "resend", row["id"][:12], *base])
    assert result.exit_code == 0, result.output
    assert len(smtp.sink.received) == 2  # the explicit re-send is the one second delivery

    result = runner.invoke(app, ["alerts", "show", "nope", *base])
    assert result.exit_code == 1 and "no alert with id 'nope'" in result.output


def test_cli_says_clearly_when_elasticsearch_is_down(
    config_dir: Path, sw_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.cli import app

    monkeypatch.setenv("STANCEWATCH_ES_URL", f"http://127.0.0.1:{free_port()}")
    runner = CliRunner()
    for args in (["alerts", "list"], ["alerts", "detect", "--no-deliver"], ["alerts", "show", "x"]):
        result = runner.invoke(app, [*args, "--config", str(config_dir)])
        assert result.exit_code == 1, (args, result.output)
        assert "Elasticsearch at http://127.0.0.1:" in result.output
        assert "unavailable" in result.output


def test_daily_digest_once_a_day_after_its_hour(
    store: Store, smtp: SmtpServer, config_dir: Path
) -> None:
    text = (config_dir / "alerts.yaml").read_text()
    text = text.replace("digest:\n  enabled: false\n  hour_utc: 7\n  to: []", "")
    (config_dir / "alerts.yaml").write_text(
        text + "\ndigest:\n  enabled: true\n  hour_utc: 7\n  to: [editor@example.org]\n"
    )
    write(store, timeline())
    run_cycle(store, config_dir, NOW)  # 06:00: the alert goes out, the digest is not due yet
    assert [m["Subject"] for m in smtp.sink.messages()] == [SUBJECT]
    _, delivered = run_cycle(store, config_dir, NOW + timedelta(hours=2))
    assert delivered.digest == "Stancewatch digest 2023-06-03: 1 stance shift"
    for later in (NOW + timedelta(hours=3), NOW + timedelta(hours=12)):
        _, delivered = run_cycle(store, config_dir, later)
        assert delivered.digest is None
    messages = smtp.sink.messages()
    assert len(messages) == 2
    digest = messages[1]
    assert digest["To"] == "editor@example.org"
    body = digest.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
    assert SUBJECT in body and "delivery: sent" in body
    # The digest's own bookkeeping is not an alert.
    assert len(alert_docs(store)) == 1


def test_after_max_attempts_only_an_explicit_resend_delivers(
    store: Store, smtp: SmtpServer, config_dir: Path
) -> None:
    from pipeline.notify import resend

    text = (config_dir / "alerts.yaml").read_text().replace("max_attempts: 8", "max_attempts: 2")
    (config_dir / "alerts.yaml").write_text(text)
    write(store, timeline())
    smtp.stop()
    run_cycle(store, config_dir, NOW)
    _, delivered = run_cycle(store, config_dir, NOW + timedelta(hours=1))
    assert delivered.failed == 1 and delivered.pending == 0  # second and last try
    smtp.start()
    _, delivered = run_cycle(store, config_dir, NOW + timedelta(hours=2))
    assert delivered.sent == 0 and delivered.failed == 0 and smtp.sink.received == []
    ((alert_id, doc),) = alert_docs(store).items()
    assert doc["status"] == "failed" and doc["attempts"] == 2
    sent = resend(store, app_config(config_dir), alert_id, now=NOW + timedelta(hours=3))
    assert sent.status == "sent" and len(smtp.sink.received) == 1
    assert alert_docs(store)[alert_id]["status"] == "sent"
