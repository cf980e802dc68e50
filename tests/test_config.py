"""The configuration module: validation errors are one clear line; the environment is parsed."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import AppConfig, ConfigError, Environment, SmtpTarget


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def test_minimal_config_dir_loads_and_falls_back_for_gazetteers(tmp_path: Path) -> None:
    write(tmp_path, "feeds.yaml", "feeds:\n  - id: wire\n    url: https://example.org/rss.xml\n")
    config = AppConfig(tmp_path).validate()
    assert [f.id for f in config.feeds] == ["wire"]
    assert config.feeds[0].poll_minutes == 15
    assert config.settings.fetch.max_redirects == 5
    assert config.alerts.stance_shift.recent_days == 7
    # actors.yaml / territories.yaml are not in tmp_path: the project's defaults are used.
    assert config.actors, "the default actor gazetteer should be loaded"
    assert config.territories


@pytest.mark.parametrize(
    ("feeds_yaml", "expected"),
    [
        (
            "feeds:\n  - id: wire\n    name: Wire\n",
            "feeds[0] (id 'wire').url: required key is missing",
        ),
        (
            "feeds:\n  - id: wire\n    url: https://example.org/a\n    poll_minutes: often\n",
            "feeds[0] (id 'wire').poll_minutes",
        ),
        ("feeds:\n  - id: wire\n    url: ftp://example.org/a\n", "unsupported URL scheme 'ftp'"),
        (
            "feeds:\n  - id: wire\n    url: https://example.org/a\n    ful_text: true\n",
            "unknown key",
        ),
        ("feeds: [\n", "invalid YAML"),
        ("- just\n- a list\n", "expected a mapping"),
        (
            "feeds:\n  - {id: a, url: 'https://x.org/1'}\n  - {id: a, url: 'https://x.org/2'}\n",
            "duplicate feed id 'a'",
        ),
    ],
)
def test_bad_feeds_file_names_file_and_key(tmp_path: Path, feeds_yaml: str, expected: str) -> None:
    path = write(tmp_path, "feeds.yaml", feeds_yaml)
    with pytest.raises(ConfigError) as info:
        AppConfig(tmp_path).validate()
    message = str(info.value)
    assert message.startswith(str(path)), message
    assert expected in message
    assert "\n" not in message


def test_missing_config_dir_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config directory not found"):
        AppConfig(tmp_path / "nope")


def test_relative_feed_paths_resolve_next_to_feeds_yaml(tmp_path: Path) -> None:
    write(tmp_path, "feeds.yaml", "feeds:\n  - id: local\n    url: feeds/local.xml\n")
    config = AppConfig(tmp_path)
    url = config.resolve_feed_url(config.feeds[0])
    assert url == (tmp_path / "feeds" / "local.xml").resolve().as_uri()


def test_unknown_feed_ids_are_named(tmp_path: Path) -> None:
    write(tmp_path, "feeds.yaml", "feeds:\n  - id: a\n    url: https://x.org/1\n")
    with pytest.raises(ConfigError, match="unknown feed id"):
        AppConfig(tmp_path).enabled_feeds(["a", "zz"])


def test_environment_defaults_and_overrides(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in (
        "STANCEWATCH_ES_URL",
        "STANCEWATCH_SMTP_URL",
        "STANCEWATCH_ALERT_TO",
        "STANCEWATCH_OUTBOX",
        "STANCEWATCH_INDEX_PREFIX",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("STANCEWATCH_DATA_DIR", str(tmp_path))
    env = Environment.from_environ()
    assert env.es_url == "http://127.0.0.1:9200"
    assert env.index_prefix == "stancewatch"
    assert env.smtp is None
    assert env.outbox == tmp_path / "outbox"

    monkeypatch.setenv("STANCEWATCH_ES_URL", "https://es.example.org:9243/")
    monkeypatch.setenv("STANCEWATCH_ALERT_TO", "a@example.org, b@example.org,")
    monkeypatch.setenv(
        "STANCEWATCH_SMTP_URL", "smtp://bot%40x.org:p%3Ass@mail.x.org:2525?starttls=true"
    )
    env = Environment.from_environ()
    assert env.es_url == "https://es.example.org:9243"
    assert env.alert_to == ["a@example.org", "b@example.org"]
    assert env.smtp == SmtpTarget(
        host="mail.x.org", port=2525, username="bot@x.org", password="p:ss", security="starttls"
    )
    assert "p:ss" not in repr(env), "secrets must not leak into logs through repr()"


@pytest.mark.parametrize(
    ("url", "security", "port"),
    [
        ("smtp://localhost", "plain", 25),
        ("smtp://localhost?starttls=true", "starttls", 587),
        ("smtps://localhost", "ssl", 465),
        ("smtp://localhost:1025?ssl=1", "ssl", 1025),
    ],
)
def test_smtp_url_forms(url: str, security: str, port: int) -> None:
    target = SmtpTarget.from_url(url)
    assert (target.security, target.port) == (security, port)


def test_bad_environment_values_are_config_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STANCEWATCH_SMTP_URL", "http://mail.example.org")
    with pytest.raises(ConfigError, match="STANCEWATCH_SMTP_URL"):
        Environment.from_environ()
    monkeypatch.delenv("STANCEWATCH_SMTP_URL")
    monkeypatch.setenv("STANCEWATCH_INDEX_PREFIX", "Bad Prefix")
    with pytest.raises(ConfigError, match="STANCEWATCH_INDEX_PREFIX"):
        Environment.from_environ()
