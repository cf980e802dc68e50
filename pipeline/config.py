"""Configuration: the YAML files of a config directory plus the environment.

Every setting lives here, typed, with its default and the reason for it. Files are
validated on load; a bad file raises :class:`ConfigError` whose message is one line that
names the file, the key and the problem (the CLI prints it and exits with code 2).

Files in a config directory (default ``config/``, or ``STANCEWATCH_CONFIG``):

- ``feeds.yaml``       the feeds to poll (required)
- ``settings.yaml``    pipeline tuning: fetch limits, dedup, classifier, store (optional)
- ``alerts.yaml``      stance-shift / coverage-spike detection and e-mail routing (optional)
- ``actors.yaml``      actor gazetteer (optional: falls back to the default config dir)
- ``territories.yaml`` territory gazetteer (optional: falls back to the default config dir)

Endpoints and secrets only ever come from the environment (see :class:`Environment`).
"""

from __future__ import annotations

import os
import re
from datetime import date
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import unquote, urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

PACKAGE_DIR = Path(__file__).resolve().parent
PROJECT_DIR = PACKAGE_DIR.parent
#: The config directory shipped with the project; gazetteers missing from a custom config
#: directory are read from here so that a small demo or test config stays small.
DEFAULT_CONFIG_DIR = PROJECT_DIR / "config"

TOPICS: tuple[str, ...] = ("territorial_concessions", "peace_talks")
Topic = Literal["territorial_concessions", "peace_talks"]
Stance = Literal["support", "oppose", "neutral"]
STANCE_VALUES: dict[str, int] = {"support": 1, "neutral": 0, "oppose": -1}


class ConfigError(Exception):
    """A configuration problem, already phrased as one line for the user."""


class _Strict(BaseModel):
    # A typo in a key must fail, not be silently ignored (rss-fetcher's lesson).
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- feeds.yaml

_FEED_ID = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


class FeedConfig(_Strict):
    """One feed to poll."""

    id: str = Field(description="Stable identifier: lowercase letters, digits, '-', '_', '.'")
    url: str = Field(description="http(s) URL, file:// URL, or a path relative to the config dir")
    name: str | None = None
    language: str | None = Field(default=None, description="ISO 639-1 code, e.g. 'en'")
    country: str | None = Field(default=None, description="ISO 3166-1 alpha-2 code, e.g. 'UA'")
    full_text: bool = Field(default=False, description="Fetch and extract the linked article page")
    poll_minutes: int = Field(default=15, ge=1, le=7 * 24 * 60)
    enabled: bool = True
    tags: list[str] = Field(default_factory=list)

    @field_validator("id")
    @classmethod
    def _check_id(cls, value: str) -> str:
        if not _FEED_ID.match(value):
            raise ValueError("must be 1-64 chars of lowercase letters, digits, '-', '_' or '.'")
        return value

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        value = value.strip()
        scheme = urlsplit(value).scheme.lower()
        if scheme in ("http", "https"):
            if not urlsplit(value).hostname:
                raise ValueError("http(s) URL without a host")
        elif scheme not in ("", "file"):
            raise ValueError(f"unsupported URL scheme '{scheme}' (use http, https or file)")
        if not value:
            raise ValueError("must not be empty")
        return value

    @field_validator("language")
    @classmethod
    def _check_language(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[a-z]{2}(-[A-Za-z]{2})?", value):
            raise ValueError("must be an ISO 639-1 code such as 'en' or 'pt-BR'")
        return value

    @field_validator("country")
    @classmethod
    def _check_country(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Z]{2}", value):
            raise ValueError("must be an ISO 3166-1 alpha-2 code in capitals, e.g. 'UA'")
        return value

    @property
    def display_name(self) -> str:
        return self.name or self.id


class FeedsFile(_Strict):
    feeds: list[FeedConfig]

    @model_validator(mode="after")
    def _unique_ids(self) -> FeedsFile:
        seen: set[str] = set()
        for feed in self.feeds:
            if feed.id in seen:
                raise ValueError(f"duplicate feed id '{feed.id}'")
            seen.add(feed.id)
        return self


# ------------------------------------------------------------------------- settings.yaml


class FetchSettings(_Strict):
    concurrency: int = Field(default=100, ge=1, description="Feeds fetched at once, globally")
    per_host: int = Field(default=4, ge=1, description="Requests at once to one host (politeness)")
    connect_timeout_s: float = Field(default=10.0, gt=0)
    read_timeout_s: float = Field(default=20.0, gt=0)
    total_timeout_s: float = Field(default=60.0, gt=0, description="Whole response, all retries")
    max_bytes: int = Field(default=10_000_000, ge=1024, description="Cap on a feed response")
    max_redirects: int = Field(default=5, ge=0)
    max_retries: int = Field(default=2, ge=0, description="Extra tries on 429/503/timeouts")
    max_retry_after_s: float = Field(
        default=30.0, ge=0, description="Longest Retry-After honoured inside a run"
    )
    user_agent: str = "Stancewatch/0.1 (+https://github.com/stancewatch/stancewatch; news monitor)"
    allow_private_addresses: bool = Field(
        default=False,
        description="Allow feed/article URLs that resolve to loopback/private addresses "
        "(tests and local feeds only; the SSRF guard stays on for everything else)",
    )
    retry_backoff_s: float = Field(
        default=1.0, ge=0, description="First wait before a retry when no Retry-After is given"
    )
    max_backoff_hours: float = Field(
        default=24.0, gt=0, description="Longest a failing feed waits before the next try"
    )
    parse_processes: int = Field(
        default=0,
        ge=0,
        description="Processes that parse fetched feeds: 0 = auto (one per CPU core when many "
        "feeds are due), 1 = parse in the main process",
    )


class EnrichSettings(_Strict):
    enabled: bool = Field(default=True, description="Master switch for full_text feeds")
    max_bytes: int = Field(default=3_000_000, ge=1024)
    timeout_s: float = Field(default=15.0, gt=0)
    per_domain_interval_s: float = Field(default=1.0, ge=0, description="Politeness per domain")
    concurrency: int = Field(default=8, ge=1)
    respect_robots_txt: bool = True
    min_text_chars: int = Field(
        default=200, ge=0, description="Shorter extractions are discarded (paywalls, cookie walls)"
    )


class DedupSettings(_Strict):
    near_duplicate_threshold: float = Field(
        default=0.7, gt=0, le=1, description="Jaccard similarity (word shingles) for syndication"
    )
    window_hours: int = Field(
        default=72, ge=1, description="Only cluster copies this close in time"
    )
    num_perm: int = Field(default=128, ge=16)
    shingle_words: int = Field(default=3, ge=1)
    min_shingles: int = Field(
        default=8, ge=1, description="Texts with fewer shingles are too short to cluster safely"
    )
    lede_words: int = Field(
        default=80, ge=10, description="Words from the start of a story that are compared"
    )


class ClassifierSettings(_Strict):
    backend: Literal["local", "huggingface-zero-shot"] = Field(
        default="local",
        description="'local' = bundled MiniLM encoder + trained heads (offline); "
        "'huggingface-zero-shot' = a Hugging Face NLI model named by hf_model (needs it locally "
        "or internet)",
    )
    hf_model: str | None = Field(default=None, description="Model name or path for the HF backend")
    artifacts_dir: str | None = Field(
        default=None, description="Trained heads; default: the model/ directory of the project"
    )
    batch_size: int = Field(default=32, ge=1)
    max_tokens: int = Field(default=256, ge=16, le=512)
    bf16: Literal["auto", "on", "off"] = Field(
        default="auto", description="bfloat16 autocast on CPU when it matches fp32 outputs"
    )
    threads: int | None = Field(default=None, ge=1, description="torch threads; default = cores")
    engine: Literal["auto", "onnx", "onnx-int8", "torch"] = Field(
        default="torch",
        description="Encoder runtime. 'torch' = PyTorch (the default: on the 2-core reference "
        "machine ONNX Runtime measured 0.84-0.91x of PyTorch's speed, benchmarks/"
        "bench_classify.py). 'onnx' = ONNX Runtime with fused BERT kernels, same fp32 vectors "
        "(cosine >= 0.9999, checked at load), worth trying on other CPUs; its graph is exported "
        "once into <data dir>/model-cache. 'onnx-int8' = that graph with int8 weights, ~1.5x "
        "its speed, vectors within cosine 0.98 of PyTorch (checked at load) and the same "
        "metrics within 0.004 on our splits: for throughput over the last bit of agreement "
        "with the fp32 heads. 'auto' = onnx when onnxruntime is importable and the export "
        "works, else torch; torch where bf16 is in use",
    )


class StoreSettings(_Strict):
    bulk_size: int = Field(default=500, ge=1, description="Documents per bulk request")
    bulk_max_bytes: int = Field(default=10_000_000, ge=1024)
    max_retries: int = Field(default=5, ge=0, description="Back-off tries on 429 / unavailable")
    initial_backoff_s: float = Field(default=1.0, gt=0)
    request_timeout_s: float = Field(default=30.0, gt=0)
    number_of_shards: int = Field(default=1, ge=1)
    replicas: str = Field(
        default="0-1", description="index.auto_expand_replicas: 0 on one node, 1 in a cluster"
    )
    rollover_max_docs: int = Field(default=5_000_000, ge=1)
    rollover_max_age: str = Field(default="90d")
    rollover_max_primary_shard_size: str = Field(default="30gb")


class Settings(_Strict):
    fetch: FetchSettings = Field(default_factory=FetchSettings)
    enrich: EnrichSettings = Field(default_factory=EnrichSettings)
    dedup: DedupSettings = Field(default_factory=DedupSettings)
    classifier: ClassifierSettings = Field(default_factory=ClassifierSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    max_future_minutes: int = Field(
        default=10, ge=0, description="Publication dates later than now + this are clamped"
    )


# --------------------------------------------------------------------------- alerts.yaml


class StanceShiftSettings(_Strict):
    recent_days: int = Field(default=7, ge=1, description="Recent window on publication time")
    baseline_days: int = Field(
        default=30, ge=1, description="Baseline window before the recent one"
    )
    min_mentions_recent: int = Field(default=3, ge=1)
    min_mentions_baseline: int = Field(default=3, ge=1)
    min_confidence: float = Field(
        default=0.5, ge=0, le=1, description="Mentions scored below this are ignored"
    )
    # 0.7 rather than 0.6: in benchmarks/alert_thresholds.py it cut false alerts for stable
    # actors by about two thirds at 10-20 % label noise while still finding most real shifts.
    min_share: float = Field(
        default=0.7, gt=0, le=1, description="Dominant stance's confidence-weighted share needed"
    )
    max_p_value: float = Field(
        default=0.05, gt=0, le=1, description="Significance of the change (Fisher's exact test)"
    )
    step_days: int = Field(
        default=1, ge=1, description="Replay evaluates windows ending every N days"
    )
    min_share_change: float = Field(
        default=0.3,
        ge=0,
        le=1,
        description="The new stance's weighted share must rise by at least this much",
    )
    count_neutral: bool = Field(
        default=False,
        description="Neutral mentions take part in shares and can be a dominant stance "
        "(off: only support vs oppose decide; neutral reporting carries no position)",
    )


class CoverageSpikeSettings(_Strict):
    window_hours: int = Field(default=24, ge=1)
    baseline_days: int = Field(default=14, ge=1)
    min_articles: int = Field(default=5, ge=1, description="Minimum articles in the window")
    min_ratio: float = Field(default=3.0, gt=1, description="Window volume / baseline mean")
    min_z: float = Field(default=3.0, ge=0, description="Poisson z-score against the baseline")
    min_baseline_mean: float = Field(
        default=0.5,
        gt=0,
        description="Floor for the baseline's mean per window, so a topic that was silent "
        "does not give an infinite ratio",
    )


class AlertRoute(_Strict):
    """Send alerts matching the filters to the listed recipients (in addition to the default)."""

    to: list[str]
    actors: list[str] = Field(default_factory=list, description="Empty = any actor")
    topics: list[Topic] = Field(default_factory=list, description="Empty = any topic")
    kinds: list[Literal["stance_shift", "coverage_spike"]] = Field(default_factory=list)
    exclusive: bool = Field(default=False, description="Do not also send to the default recipients")


class DigestSettings(_Strict):
    enabled: bool = False
    hour_utc: int = Field(default=7, ge=0, le=23)
    to: list[str] = Field(default_factory=list, description="Empty = the default recipients")


class AlertSettings(_Strict):
    horizon_days: int = Field(
        default=7, ge=0, description="E-mail only shifts whose recent window ended this recently"
    )
    stance_shift: StanceShiftSettings = Field(default_factory=StanceShiftSettings)
    coverage_spike: CoverageSpikeSettings = Field(default_factory=CoverageSpikeSettings)
    routes: list[AlertRoute] = Field(default_factory=list)
    digest: DigestSettings = Field(default_factory=DigestSettings)
    max_evidence: int = Field(default=5, ge=1, description="Evidence sentences per e-mail")
    replay_days: int = Field(
        default=0, ge=0, description="Detection replays this many days of history (0 = all)"
    )
    max_attempts: int = Field(
        default=8, ge=1, description="Delivery tries before a failed alert is left for resend"
    )
    kibana_stances_data_view: str | None = Field(
        default=None, description="Kibana data view id for stance links (default data view)"
    )
    kibana_articles_data_view: str | None = Field(
        default=None, description="Kibana data view id for coverage links (default data view)"
    )


# ----------------------------------------------------------------------------- gazetteers


class RoleTitle(_Strict):
    """A role title that names this actor between two dates ("NATO chief")."""

    title: str
    valid_from: date | None = None
    valid_until: date | None = Field(default=None, description="Exclusive end date")


class ActorConfig(_Strict):
    name: str = Field(description="Canonical name used in every output")
    kind: Literal["person", "organisation", "government", "group"] = "person"
    country: str | None = None
    aliases: list[str] = Field(
        default_factory=list, description="Other spellings, transliterations, misspellings"
    )
    roles: list[RoleTitle] = Field(default_factory=list)
    speaker_aliases: list[str] = Field(
        default_factory=list,
        description="Names that stand for the actor only as the subject of speech or action "
        "('Moscow said', 'Kyiv rejected'): a capital or country name elsewhere is not the actor",
    )
    context_aliases: list[str] = Field(
        default_factory=list,
        description="Names other actors use too ('Foreign Office' is Britain's and Pakistan's): "
        "they stand for the actor only where the text also names it another way",
    )
    description: str | None = None

    @property
    def names(self) -> list[str]:
        """Every name configured for the actor: canonical name and all aliases (not role
        titles, which name whoever holds the role on the day)."""
        return [self.name, *self.aliases, *self.speaker_aliases, *self.context_aliases]


class ActorsFile(_Strict):
    actors: list[ActorConfig]

    @model_validator(mode="after")
    def _unique(self) -> ActorsFile:
        seen: dict[str, str] = {}
        for actor in self.actors:
            for alias in actor.names:
                key = alias.casefold()
                if key in seen and seen[key] != actor.name:
                    raise ValueError(f"alias '{alias}' names both '{seen[key]}' and '{actor.name}'")
                seen[key] = actor.name
        return self


class TerritoryConfig(_Strict):
    name: str
    aliases: list[str] = Field(default_factory=list)
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    country: str | None = Field(default=None, description="Internationally recognised state")
    conflict: str | None = None


class TerritoriesFile(_Strict):
    territories: list[TerritoryConfig]


# ---------------------------------------------------------------------------- environment


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    return value.strip()


class SmtpTarget(BaseModel):
    model_config = ConfigDict(frozen=True)
    host: str
    port: int
    username: str | None = None
    password: str | None = Field(default=None, repr=False)
    security: Literal["plain", "starttls", "ssl"] = "plain"
    timeout_s: float = 20.0

    @classmethod
    def from_url(cls, url: str) -> SmtpTarget:
        """``smtp://user:pass@host:port`` (``?starttls=true``) or ``smtps://…`` for SSL."""
        parts = urlsplit(url)
        if parts.scheme not in ("smtp", "smtps"):
            raise ConfigError(
                f"STANCEWATCH_SMTP_URL: scheme must be smtp or smtps, got '{parts.scheme}'"
            )
        if not parts.hostname:
            raise ConfigError("STANCEWATCH_SMTP_URL: missing host")
        query: dict[str, str] = {}
        for pair in filter(None, parts.query.split("&")):
            key, _, value = pair.partition("=")
            query[key] = value or "true"
        truthy = {"1", "true", "yes", "on"}
        security: Literal["plain", "starttls", "ssl"] = "plain"
        if parts.scheme == "smtps" or query.get("ssl", "").lower() in truthy:
            security = "ssl"
        elif query.get("starttls", "").lower() in truthy:
            security = "starttls"
        default_port = {"plain": 25, "starttls": 587, "ssl": 465}[security]
        try:
            port = parts.port or default_port
        except ValueError as exc:
            raise ConfigError(f"STANCEWATCH_SMTP_URL: bad port ({exc})") from None
        timeout = float(query.get("timeout", "20"))
        return cls(
            host=parts.hostname,
            port=port,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            security=security,
            timeout_s=timeout,
        )


class Environment(BaseModel):
    """Endpoints and secrets, from environment variables only (never from committed files)."""

    model_config = ConfigDict(frozen=True)

    es_url: str = "http://127.0.0.1:9200"
    es_api_key: str | None = Field(default=None, repr=False)
    es_user: str | None = None
    es_password: str | None = Field(default=None, repr=False)
    index_prefix: str = "stancewatch"
    smtp: SmtpTarget | None = None
    alert_from: str = "stancewatch@localhost"
    alert_to: list[str] = Field(default_factory=list)
    outbox: Path
    kibana_url: str | None = None
    data_dir: Path

    @classmethod
    def from_environ(cls) -> Environment:
        data_dir = Path(_env("STANCEWATCH_DATA_DIR") or _default_data_dir()).expanduser()
        prefix = _env("STANCEWATCH_INDEX_PREFIX", "stancewatch") or "stancewatch"
        if not re.fullmatch(r"[a-z0-9][a-z0-9_.-]*", prefix):
            raise ConfigError(
                "STANCEWATCH_INDEX_PREFIX: must be lowercase letters, digits, '-', '_' or '.'"
            )
        smtp_url = _env("STANCEWATCH_SMTP_URL")
        alert_to = [a.strip() for a in (_env("STANCEWATCH_ALERT_TO") or "").split(",") if a.strip()]
        return cls(
            es_url=(_env("STANCEWATCH_ES_URL") or "http://127.0.0.1:9200").rstrip("/"),
            es_api_key=_env("STANCEWATCH_ES_API_KEY"),
            es_user=_env("STANCEWATCH_ES_USER"),
            es_password=_env("STANCEWATCH_ES_PASSWORD"),
            index_prefix=prefix,
            smtp=SmtpTarget.from_url(smtp_url) if smtp_url else None,
            alert_from=_env("STANCEWATCH_ALERT_FROM") or "stancewatch@localhost",
            alert_to=alert_to,
            outbox=Path(_env("STANCEWATCH_OUTBOX") or data_dir / "outbox").expanduser(),
            kibana_url=(_env("STANCEWATCH_KIBANA_URL") or "").rstrip("/") or None,
            data_dir=data_dir,
        )

    @property
    def spool_dir(self) -> Path:
        return self.data_dir / "spool"


def _default_data_dir() -> Path:
    # In a source checkout keep state next to the code (var/, git-ignored) so that a
    # newcomer finds the outbox and spool; an installed package uses the XDG data dir.
    if (PROJECT_DIR / "pyproject.toml").exists():
        return PROJECT_DIR / "var"
    return Path(os.environ.get("XDG_DATA_HOME", "~/.local/share")).expanduser() / "stancewatch"


# ------------------------------------------------------------------------------- loading

M = TypeVar("M", bound=BaseModel)


def _format_location(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _describe_error(path: Path, data: Any, exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = tuple(err.get("loc", ()))
    where = _format_location(loc)
    # Name the feed/actor by id where we can: "feeds[3] (id 'kyiv-independent').url".
    if len(loc) >= 2 and isinstance(loc[1], int) and isinstance(data, dict):
        items = data.get(str(loc[0]))
        if isinstance(items, list) and 0 <= loc[1] < len(items) and isinstance(items[loc[1]], dict):
            ident = items[loc[1]].get("id") or items[loc[1]].get("name")
            if ident:
                where = where.replace(f"[{loc[1]}]", f"[{loc[1]}] (id '{ident}')", 1)
    msg = err.get("msg", "invalid")
    if err.get("type") == "missing":
        msg = "required key is missing"
    elif err.get("type") == "extra_forbidden":
        msg = "unknown key (typo?)"
    more = len(exc.errors()) - 1
    suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
    return f"{path}: {where}: {msg}{suffix}"


def load_yaml_model(path: Path, model: type[M], *, required: bool = True) -> M:
    """Load and validate one YAML file; every failure becomes a one-line ConfigError."""
    if not path.exists():
        if required:
            raise ConfigError(f"{path}: file not found")
        return model()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read ({exc})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: {where}invalid YAML ({problem})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: (top level): expected a mapping of keys, got {type(data).__name__}"
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe_error(path, data, exc)) from None


class AppConfig:
    """Everything a run needs: the config directory's files and the environment.

    Files are loaded lazily but validated as a whole by :meth:`validate`, which the CLI
    calls first so that a bad file fails fast with exit code 2.
    """

    def __init__(self, config_dir: Path | str | None = None, env: Environment | None = None):
        chosen = config_dir or _env("STANCEWATCH_CONFIG") or DEFAULT_CONFIG_DIR
        self.config_dir = Path(chosen).expanduser().resolve()
        if not self.config_dir.is_dir():
            raise ConfigError(f"{self.config_dir}: config directory not found")
        self.env = env or Environment.from_environ()

    def _file(self, name: str, *, fallback: bool) -> Path:
        own = self.config_dir / name
        if own.exists() or not fallback:
            return own
        return DEFAULT_CONFIG_DIR / name

    @cached_property
    def feeds(self) -> list[FeedConfig]:
        return load_yaml_model(self._file("feeds.yaml", fallback=False), FeedsFile).feeds

    @cached_property
    def settings(self) -> Settings:
        return load_yaml_model(
            self._file("settings.yaml", fallback=False), Settings, required=False
        )

    @cached_property
    def alerts(self) -> AlertSettings:
        return load_yaml_model(
            self._file("alerts.yaml", fallback=False), AlertSettings, required=False
        )

    @cached_property
    def actors(self) -> list[ActorConfig]:
        return load_yaml_model(self._file("actors.yaml", fallback=True), ActorsFile).actors

    @cached_property
    def territories(self) -> list[TerritoryConfig]:
        path = self._file("territories.yaml", fallback=True)
        return load_yaml_model(path, TerritoriesFile).territories

    def validate(self, *, need_feeds: bool = True) -> AppConfig:
        """Load every file now so that problems surface before any work starts."""
        if need_feeds:
            _ = self.feeds
        _ = self.settings, self.alerts, self.actors, self.territories
        return self

    def resolve_feed_url(self, feed: FeedConfig) -> str:
        """Relative paths in feeds.yaml are files next to it (bundled demo feeds)."""
        if urlsplit(feed.url).scheme:
            return feed.url
        return (self.config_dir / feed.url).resolve().as_uri()

    def enabled_feeds(self, ids: list[str] | None = None) -> list[FeedConfig]:
        feeds = [f for f in self.feeds if f.enabled]
        if ids:
            known = {f.id for f in self.feeds}
            unknown = [i for i in ids if i not in known]
            if unknown:
                raise ConfigError(
                    f"{self._file('feeds.yaml', fallback=False)}: unknown feed id(s): "
                    + ", ".join(unknown)
                )
            feeds = [f for f in self.feeds if f.id in ids]
        return feeds
