"""Alert e-mails: render (jinja2 templates, chart), route, deliver (SMTP or outbox), track state.

Delivery state lives in the alerts index, on the alert document itself:

    pending --sent--> sent (sent_at, recipients, attempts)
    pending --error-> failed (status_reason, attempts) --next run--> sent / failed ...
    pending/failed, recent window older than the horizon --> suppressed ("outside horizon")

Each alert's new state is written right after its own send, so a crash part-way through a
batch never sends the finished ones again. An SMTP outage marks the due alerts ``failed``
with the reason and one more attempt; the next run retries them (up to
``alerts.max_attempts``) and sends each exactly once. ``stancewatch alerts resend ID`` is the
only way an alert is delivered a second time.

Everything that came from a feed (actor names of untracked actors, sentences, titles,
source names, URLs) is untrusted: the HTML templates autoescape, links are kept only for
http(s) URLs, control characters are removed, and header values are single-line.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import smtplib
import socket
import ssl
import tempfile
import unicodedata
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid, parseaddr
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

from jinja2 import Environment as JinjaEnvironment
from jinja2 import PackageLoader, StrictUndefined, select_autoescape
from pydantic import BaseModel, Field

from pipeline.config import AlertRoute, AlertSettings, AppConfig, Environment, SmtpTarget
from pipeline.detect import AlertStore, parse_time
from pipeline.models import Alert, AlertEvidence, iso, stable_id

log = logging.getLogger(__name__)

TOPIC_NAMES = {"territorial_concessions": "territorial concessions", "peace_talks": "peace talks"}
STANCE_VERBS = {"support": "supports", "oppose": "opposes", "neutral": "is neutral on"}
STANCE_COLORS = {"support": "#1a7f37", "oppose": "#cf222e", "neutral": "#8c959f"}
ALERT_KINDS = ("stance_shift", "coverage_spike")
MAX_SUBJECT = 200

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


# ------------------------------------------------------------------------------ cleaning


def clean_text(value: Any, *, limit: int | None = None) -> str:
    """One line of display text: control characters (CR/LF included) become spaces.

    Used for every value that reaches a header or a template, so that feed text can neither
    add a header ("Bcc:") nor break the layout of the text part.
    """
    text = "" if value is None else str(value)
    text = unicodedata.normalize("NFC", text)
    text = " ".join(_CONTROL.sub(" ", text).split())
    if limit is not None and len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    return text


def safe_url(value: Any) -> str:
    """An http(s) URL fit for a link, or '' (no javascript:, data: or mangled URLs)."""
    text = clean_text(value)
    if not text or " " in text:
        return ""
    try:
        parts = urlsplit(text)
    except ValueError:
        return ""
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return ""
    return text


def topic_name(topic: str) -> str:
    return TOPIC_NAMES.get(topic, topic.replace("_", " "))


def _pct(share: Any) -> str:
    try:
        return f"{float(share) * 100:.0f} %"
    except (TypeError, ValueError):
        return "-"


def _day(dt: datetime | None) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%d") if dt else "?"


def _minute(dt: datetime | None) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC") if dt else "?"


def _range(start: datetime, end: datetime) -> str:
    """Half-open [start, end) shown with an inclusive last day when both are midnights."""
    if start.time() == end.time() == datetime.min.time():
        return f"{_day(start)} – {_day(end - timedelta(days=1))}"
    return f"{_minute(start)} – {_minute(end)}"


# ------------------------------------------------------------------------------- subject


def subject_for(alert: Alert) -> str:
    """What changed, in one header-safe line.

    "Stance shift: Jens Stoltenberg now supports territorial concessions"
    "Coverage spike: peace talks — 14 articles in 24 h (4.7× normal)"
    """
    topic = topic_name(alert.topic)
    if alert.kind == "stance_shift":
        actor = clean_text(alert.actor, limit=80) or "unknown actor"
        verb = STANCE_VERBS.get(alert.to_stance or "", "changed on")
        text = f"Stance shift: {actor} now {verb} {topic}"
    else:
        stats = alert.stats
        count = int(stats.get("articles", 0))
        hours = int(stats.get("window_hours", 24))
        if stats.get("baseline_articles", 0):
            normal = f"{float(stats.get('ratio', 0)):.1f}× normal"
        else:
            normal = f"none in the previous {_baseline_days(alert)} days"
        text = f"Coverage spike: {topic} — {count} articles in {hours} h ({normal})"
    return clean_text(text, limit=MAX_SUBJECT)


def _baseline_days(alert: Alert) -> int:
    return max(1, round((alert.baseline_end - alert.baseline_start).total_seconds() / 86400))


# --------------------------------------------------------------------------------- routing


def recipients_for(alert: Alert, routes: Sequence[AlertRoute], default: Sequence[str]) -> list[str]:
    """Default recipients plus every matching route's; an exclusive match drops the default."""
    extra: list[str] = []
    exclusive = False
    for route in routes:
        if route.kinds and alert.kind not in route.kinds:
            continue
        if route.topics and alert.topic not in route.topics:
            continue
        if route.actors and (alert.actor or "").casefold() not in {
            a.casefold() for a in route.actors
        }:
            continue
        extra.extend(route.to)
        exclusive = exclusive or route.exclusive
    chosen = ([] if exclusive else list(default)) + extra
    seen: set[str] = set()
    out: list[str] = []
    for address in chosen:
        address = clean_text(address)
        if address and address.casefold() not in seen:
            seen.add(address.casefold())
            out.append(address)
    return out


def routing_reason(alert: Alert, routes: Sequence[AlertRoute]) -> str:
    matched = [
        r
        for r in routes
        if (not r.kinds or alert.kind in r.kinds)
        and (not r.topics or alert.topic in r.topics)
        and (not r.actors or (alert.actor or "").casefold() in {a.casefold() for a in r.actors})
    ]
    if not matched:
        return "you are on the default alert list (STANCEWATCH_ALERT_TO)"
    return "an alert route in alerts.yaml matches this " + alert.kind.replace("_", " ")


# ---------------------------------------------------------------------------------- kibana


def _rison_string(value: str) -> str:
    return "'" + value.replace("!", "!!").replace("'", "!'") + "'"


def _kql_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def kibana_url(alert: Alert, kibana: str | None, settings: AlertSettings) -> str | None:
    """A Discover link filtered to the actor and topic (or the topic's articles) and the
    alert's baseline + recent windows; None without ``STANCEWATCH_KIBANA_URL``."""
    if not kibana:
        return None
    if alert.kind == "stance_shift":
        query = f"actor:{_kql_string(clean_text(alert.actor))} and topic:{_kql_string(alert.topic)}"
        data_view = settings.kibana_stances_data_view
    else:
        query = f"topic_labels:{_kql_string(alert.topic)}"
        data_view = settings.kibana_articles_data_view
    start = alert.baseline_start.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    end = alert.window_end.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    g = f"(time:(from:'{start}',to:'{end}'))"
    index = f"index:{_rison_string(data_view)}," if data_view else ""
    a = f"({index}query:(language:kuery,query:{_rison_string(query)}))"
    safe = "():,'!*-._~"
    return f"{kibana.rstrip('/')}/app/discover#/?_g={quote(g, safe=safe)}&_a={quote(a, safe=safe)}"


# ----------------------------------------------------------------------------------- chart


def render_chart(alert: Alert) -> bytes | None:
    """A small PNG of the actor's stance per day (or the topic's articles per day).

    Drawn with matplotlib's object API on the Agg canvas: no display, no global pyplot
    state, safe in threads. Contains no feed text (so nothing to escape).
    """
    timeline = alert.stats.get("timeline") or []
    if not timeline:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.dates import date2num
    from matplotlib.figure import Figure

    # Bars centred on midday: each covers its UTC day.
    days = [
        float(date2num(datetime.fromisoformat(str(p["date"])).replace(tzinfo=UTC, hour=12)))
        for p in timeline
    ]
    fig = Figure(figsize=(6.0, 2.2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8
    if alert.kind == "stance_shift":
        support = [float(p.get("support", 0)) for p in timeline]
        oppose = [-float(p.get("oppose", 0)) for p in timeline]
        ax.bar(days, support, width=width, color=STANCE_COLORS["support"], label="support")
        ax.bar(days, oppose, width=width, color=STANCE_COLORS["oppose"], label="oppose")
        if any("neutral" in p for p in timeline):
            neutral = [float(p.get("neutral", 0)) for p in timeline]
            ax.bar(
                days,
                neutral,
                width=width,
                bottom=support,
                color=STANCE_COLORS["neutral"],
                label="neutral",
            )
        ax.axhline(0, color="#57606a", linewidth=0.6)
        ax.set_ylabel("weighted mentions", fontsize=7)
    else:
        counts = [int(p.get("articles", 0)) for p in timeline]
        ax.bar(days, counts, width=width, color="#0969da", label="articles")
        ax.set_ylabel("articles / day", fontsize=7)
    ax.axvspan(
        float(date2num(alert.window_start)),
        float(date2num(alert.window_end)),
        color="#fff8c5",
        zorder=0,
        label="recent window",
    )
    ax.legend(fontsize=6, loc="upper left", frameon=False, ncol=4)
    ax.tick_params(labelsize=6)
    for label in ax.get_xticklabels():
        label.set_rotation(0)
    fig.autofmt_xdate(rotation=0, ha="center")
    ax.xaxis.set_major_locator(_week_locator())
    ax.xaxis.set_major_formatter(_date_formatter())
    fig.tight_layout(pad=0.4)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def _week_locator() -> Any:
    from matplotlib.dates import AutoDateLocator

    return AutoDateLocator(minticks=3, maxticks=7)


def _date_formatter() -> Any:
    from matplotlib.dates import DateFormatter

    return DateFormatter("%d %b")


# ------------------------------------------------------------------------------- rendering


@lru_cache(maxsize=1)
def _templates() -> JinjaEnvironment:
    # Autoescape for every *.html.j2 template; text templates get pre-cleaned values.
    return JinjaEnvironment(
        loader=PackageLoader("pipeline", "templates"),
        autoescape=select_autoescape(enabled_extensions=("html.j2",), default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def _evidence_view(items: Iterable[AlertEvidence]) -> list[dict[str, Any]]:
    return [
        {
            "sentence": clean_text(e.sentence, limit=600),
            "title": clean_text(e.title, limit=200),
            "source": clean_text(e.source, limit=80) or "unknown source",
            "date": _day(e.published),
            "url": safe_url(e.url),
            "stance": e.stance or "",
            "score": f"{e.score:.2f}" if e.score is not None else "",
            "color": STANCE_COLORS.get(e.stance or "", "#8c959f"),
        }
        for e in items
    ]


class RenderedEmail(BaseModel):
    subject: str
    text: str
    html: str
    chart_png: bytes | None = Field(default=None, repr=False)
    chart_cid: str | None = None
    chart_name: str = "chart.png"


def render_alert(alert: Alert, settings: AlertSettings, env: Environment) -> RenderedEmail:
    """Subject, text part, HTML part and chart of one alert (no headers yet)."""
    subject = subject_for(alert)
    chart = render_chart(alert)
    domain = _sender_domain(env.alert_from)
    cid = make_msgid(idstring="chart", domain=domain)[1:-1] if chart else None
    common = {
        "subject": subject,
        "alert_id": alert.id,
        "topic_name": topic_name(alert.topic),
        "detected": _minute(alert.detected_at),
        "kibana_url": kibana_url(alert, env.kibana_url, settings),
        "chart_cid": cid,
        "reason": routing_reason(alert, settings.routes),
    }
    if alert.kind == "stance_shift":
        context = {**common, **_shift_context(alert, settings)}
    else:
        context = {**common, **_spike_context(alert)}
    name = f"alert_{alert.kind}"
    templates = _templates()
    text = templates.get_template(f"{name}.txt.j2").render(context)
    html = templates.get_template(f"{name}.html.j2").render(context)
    return RenderedEmail(
        subject=subject,
        text=text,
        html=html,
        chart_png=chart,
        chart_cid=cid,
        chart_name="stance-timeline.png" if alert.kind == "stance_shift" else "coverage.png",
    )


def _shift_context(alert: Alert, settings: AlertSettings) -> dict[str, Any]:
    stats = alert.stats
    before = stats.get("baseline") or {}
    after = stats.get("recent") or {}
    stances = [s for s in ("support", "oppose", "neutral") if s in (after.get("shares") or {})]
    rows = [
        {
            "label": "Reports (units)",
            "before": str(before.get("mentions", "-")),
            "after": str(after.get("mentions", "-")),
        }
    ]
    for stance in stances:
        rows.append(
            {
                "label": f"{stance.capitalize()} share",
                "before": f"{_pct(before['shares'].get(stance))} ({before['counts'].get(stance, 0)})",
                "after": f"{_pct(after['shares'].get(stance))} ({after['counts'].get(stance, 0)})",
            }
        )
    rows.append(
        {
            "label": "Dominant stance",
            "before": str(before.get("dominant") or "-"),
            "after": str(after.get("dominant") or "-"),
        }
    )
    p_value = float(stats.get("p_value", 1.0))
    change = float(stats.get("share_change", 0.0)) * 100
    to_label = alert.to_stance or "?"
    significance = (
        f"The {to_label} share rose by {change:.0f} points; one-sided Fisher exact test "
        f"p = {p_value:.3g} (alert threshold {settings.stance_shift.max_p_value:g})."
    )
    evidence = list(alert.evidence)
    return {
        "actor": clean_text(alert.actor, limit=120) or "unknown actor",
        "from_label": alert.from_stance or "?",
        "to_label": to_label,
        "to_verb": STANCE_VERBS.get(to_label, to_label),
        "to_color": STANCE_COLORS.get(to_label, "#1f2328"),
        "recent_range": _range(alert.window_start, alert.window_end),
        "baseline_range": _range(alert.baseline_start, alert.baseline_end),
        "rows": rows,
        "significance": significance,
        "min_confidence": f"{settings.stance_shift.min_confidence:g}",
        "recent_evidence": _evidence_view(e for e in evidence if e.period == "recent"),
        "baseline_evidence": _evidence_view(e for e in evidence if e.period == "baseline"),
    }


def _spike_context(alert: Alert) -> dict[str, Any]:
    stats = alert.stats
    hours = int(stats.get("window_hours", 24))
    return {
        "count": int(stats.get("articles", 0)),
        "window_label": f"{hours} h",
        "window_range": _range(alert.window_start, alert.window_end),
        "baseline_mean": f"{float(stats.get('baseline_mean', 0)):.1f}",
        "baseline_count": int(stats.get("baseline_articles", 0)),
        "baseline_days": _baseline_days(alert),
        "ratio": f"{float(stats.get('ratio', 0)):.1f}",
        "z": f"{float(stats.get('z', 0)):.1f}",
        "evidence": _evidence_view(alert.evidence),
    }


def _sender_domain(address: str) -> str:
    _, addr = parseaddr(address)
    domain = addr.rpartition("@")[2]
    return re.sub(r"[^A-Za-z0-9.-]", "", domain) or "stancewatch.localhost"


def build_message(
    rendered: RenderedEmail,
    *,
    sender: str,
    recipients: Sequence[str],
    now: datetime,
    headers: dict[str, str] | None = None,
) -> EmailMessage:
    """multipart/alternative (text, multipart/related (HTML, inline PNG))."""
    msg = EmailMessage()
    # EmailMessage's default policy also refuses CR/LF in header values: a second line of
    # defence behind clean_text.
    msg["Subject"] = clean_text(rendered.subject, limit=MAX_SUBJECT)
    msg["From"] = clean_text(sender)
    if recipients:
        msg["To"] = ", ".join(clean_text(r) for r in recipients)
    msg["Date"] = format_datetime(now.astimezone(UTC))
    msg["Message-ID"] = make_msgid(domain=_sender_domain(sender))
    msg["Auto-Submitted"] = "auto-generated"
    for key, value in (headers or {}).items():
        msg[key] = clean_text(value)
    msg.set_content(rendered.text, subtype="plain", charset="utf-8")
    msg.add_alternative(rendered.html, subtype="html", charset="utf-8")
    if rendered.chart_png and rendered.chart_cid:
        html_part = msg.get_body(preferencelist=("html",))
        assert html_part is not None
        html_part.add_related(
            rendered.chart_png,
            maintype="image",
            subtype="png",
            cid=f"<{rendered.chart_cid}>",
            filename=rendered.chart_name,
            disposition="inline",
        )
    return msg


def alert_message(
    alert: Alert, config_settings: AlertSettings, env: Environment, *, now: datetime
) -> tuple[EmailMessage, list[str], str]:
    """The e-mail for one alert, its recipients and its subject."""
    recipients = recipients_for(alert, config_settings.routes, env.alert_to)
    rendered = render_alert(alert, config_settings, env)
    msg = build_message(
        rendered,
        sender=env.alert_from,
        recipients=recipients,
        now=now,
        headers={"X-Stancewatch-Alert-Id": alert.id, "X-Stancewatch-Kind": alert.kind},
    )
    return msg, recipients, rendered.subject


# -------------------------------------------------------------------------------- channels


class DeliveryError(Exception):
    """A message could not be delivered; ``connection`` is True when nothing can be sent now."""

    def __init__(self, message: str, *, connection: bool = False):
        super().__init__(message)
        self.connection = connection


class Channel(Protocol):
    description: str

    def send(self, msg: EmailMessage, *, sender: str, recipients: list[str], name: str) -> str:
        """Deliver; returns a note (refused recipients, file path) or raises DeliveryError."""
        ...

    def close(self) -> None: ...


def _describe_smtp_error(exc: BaseException) -> str:
    if isinstance(exc, smtplib.SMTPResponseException):
        text = (
            exc.smtp_error.decode("utf-8", "replace")
            if isinstance(exc.smtp_error, bytes)
            else str(exc.smtp_error)
        )
        return f"{exc.smtp_code} {clean_text(text, limit=200)}"
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return "all recipients refused: " + ", ".join(
            f"{r} ({c})" for r, (c, _) in list(exc.recipients.items())[:5]
        )
    if isinstance(exc, ssl.SSLError | ssl.CertificateError):
        return f"TLS failed: {clean_text(str(exc), limit=200)}"
    if isinstance(exc, socket.timeout | TimeoutError):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    return clean_text(f"{type(exc).__name__}: {exc}", limit=200)


class SmtpChannel:
    """One SMTP session for a whole batch (plain, STARTTLS or SSL; optional auth).

    TLS certificates are verified against the system store (``SSL_CERT_FILE`` /
    ``SSL_CERT_DIR`` point it elsewhere, e.g. at a private CA).
    """

    def __init__(self, target: SmtpTarget):
        self.target = target
        self.description = f"smtp {target.host}:{target.port} ({target.security})"
        self._client: smtplib.SMTP | None = None

    def _connect(self) -> smtplib.SMTP:
        if self._client is not None:
            return self._client
        t = self.target
        context = ssl.create_default_context()
        client: smtplib.SMTP | None = None
        try:
            if t.security == "ssl":
                client = smtplib.SMTP_SSL(t.host, t.port, timeout=t.timeout_s, context=context)
            else:
                client = smtplib.SMTP(t.host, t.port, timeout=t.timeout_s)
            client.ehlo()
            if t.security == "starttls":
                client.starttls(context=context)
                client.ehlo()
            if t.username:
                client.login(t.username, t.password or "")
        except (smtplib.SMTPException, OSError) as exc:
            if client is not None:
                with contextlib.suppress(Exception):
                    client.close()
            what = (
                "login failed"
                if isinstance(exc, smtplib.SMTPAuthenticationError)
                else "unavailable"
            )
            raise DeliveryError(
                f"SMTP {t.host}:{t.port} {what}: {_describe_smtp_error(exc)}", connection=True
            ) from None
        self._client = client
        return client

    def send(self, msg: EmailMessage, *, sender: str, recipients: list[str], name: str) -> str:
        if not recipients:
            raise DeliveryError(
                "no recipients: set STANCEWATCH_ALERT_TO or add a route in alerts.yaml"
            )
        client = self._connect()
        try:
            refused = client.send_message(msg, from_addr=sender, to_addrs=recipients)
        except smtplib.SMTPRecipientsRefused as exc:
            raise DeliveryError(_describe_smtp_error(exc)) from None
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            self._client = None
            raise DeliveryError(
                f"SMTP connection lost: {_describe_smtp_error(exc)}", connection=True
            ) from None
        except smtplib.SMTPException as exc:
            raise DeliveryError(f"SMTP refused the message: {_describe_smtp_error(exc)}") from None
        if refused:
            return "refused: " + ", ".join(sorted(refused))
        return ""

    def close(self) -> None:
        if self._client is not None:
            try:
                self._client.quit()
            except (smtplib.SMTPException, OSError):
                self._client.close()
            self._client = None


class OutboxChannel:
    """.eml files in a folder; the name comes from the alert id, so a re-send overwrites."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.description = f"outbox {folder}"
        self.written: list[Path] = []

    def send(self, msg: EmailMessage, *, sender: str, recipients: list[str], name: str) -> str:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            path = self.folder / f"{name}.eml"
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=self.folder)
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(msg.as_bytes())
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise DeliveryError(
                f"outbox {self.folder} not writable: {exc}", connection=True
            ) from None
        self.written.append(path)
        return str(path)

    def close(self) -> None:
        return None


def open_channel(env: Environment) -> Channel:
    """SMTP when ``STANCEWATCH_SMTP_URL`` is set, the outbox folder otherwise."""
    if env.smtp is not None:
        return SmtpChannel(env.smtp)
    return OutboxChannel(env.outbox)


# -------------------------------------------------------------------------------- delivery


class DeliveryResult(BaseModel):
    """What one delivery run did."""

    channel: str = ""
    sent: int = 0
    failed: int = Field(default=0, description="Failed in this run (retried next run)")
    pending: int = Field(default=0, description="Still due after this run (pending or retryable)")
    suppressed: int = 0
    subjects: list[str] = Field(default_factory=list, description="Subjects sent")
    errors: list[str] = Field(default_factory=list)
    files: list[str] = Field(default_factory=list, description="Outbox files written")
    digest: str | None = None


def alert_from_document(doc_id: str, doc: dict[str, Any]) -> Alert:
    return Alert.model_validate({**doc, "id": doc_id})


def _due_alerts(store: AlertStore) -> list[Alert]:
    query = {
        "bool": {
            "filter": [
                {"terms": {"status": ["pending", "failed"]}},
                {"terms": {"kind": list(ALERT_KINDS)}},
            ]
        }
    }
    alerts = []
    for doc_id, doc in store.scan("alerts", query, fields=None):
        try:
            alerts.append(alert_from_document(doc_id, doc))
        except ValueError as exc:
            log.warning("deliver: alert %s is malformed, skipped: %s", doc_id, exc)
    alerts.sort(key=lambda a: (a.window_end, a.id))
    return alerts


def _save(store: AlertStore, alert: Alert) -> None:
    report = store.write("alerts", [(alert.id, alert.to_document())])
    failed = getattr(report, "failed", None)
    if failed:
        log.error("deliver: could not save state of alert %s: %s", alert.id, failed)


def send_alert(
    alert: Alert, channel: Channel, settings: AlertSettings, env: Environment, *, now: datetime
) -> Alert:
    """Render and send one alert; returns it with its new state (not saved)."""
    msg, recipients, subject = alert_message(alert, settings, env, now=now)
    update: dict[str, Any] = {"attempts": alert.attempts + 1, "subject": subject}
    try:
        note = channel.send(msg, sender=env.alert_from, recipients=recipients, name=alert.id)
    except DeliveryError as exc:
        update.update(status="failed", status_reason=str(exc))
        failed = alert.model_copy(update=update)
        raise _Failed(failed, exc) from None
    update.update(
        status="sent",
        sent_at=now,
        recipients=recipients,
        status_reason=note if note.startswith("refused") else None,
    )
    return alert.model_copy(update=update)


class _Failed(Exception):
    def __init__(self, alert: Alert, error: DeliveryError):
        super().__init__(str(error))
        self.alert = alert
        self.error = error


def deliver(store: AlertStore, config: AppConfig, *, now: datetime) -> DeliveryResult:
    """Send every due alert once: pending ones, and failed ones with tries left.

    Alerts whose recent window ended before ``now - horizon_days`` are suppressed instead
    (an outage longer than the horizon does not flood inboxes with stale news). A
    connection-level failure (server down, login refused) stops the batch: the alert being
    sent is marked failed, the rest stay as they are, and the next run picks them up.
    """
    now = _aware(now)
    settings = config.alerts
    env = config.env
    channel = open_channel(env)
    result = DeliveryResult(channel=channel.description)
    horizon = now - timedelta(days=settings.horizon_days)
    due = _due_alerts(store)
    try:
        for index, alert in enumerate(due):
            if alert.window_end < horizon:
                _save(
                    store,
                    alert.model_copy(
                        update={"status": "suppressed", "status_reason": "outside horizon"}
                    ),
                )
                result.suppressed += 1
                continue
            if alert.status == "failed" and alert.attempts >= settings.max_attempts:
                continue
            try:
                sent = send_alert(alert, channel, settings, env, now=now)
            except _Failed as failure:
                _save(store, failure.alert)
                result.failed += 1
                result.errors.append(f"{alert.id}: {failure.error}")
                if failure.alert.attempts < settings.max_attempts:
                    result.pending += 1
                if failure.error.connection:
                    retryable = [
                        a
                        for a in due[index + 1 :]
                        if a.window_end >= horizon
                        and not (a.status == "failed" and a.attempts >= settings.max_attempts)
                    ]
                    result.pending += len(retryable)
                    break
                continue
            _save(store, sent)
            result.sent += 1
            result.subjects.append(sent.subject or "")
        else:
            digest = _maybe_digest(store, settings, env, channel, now=now)
            result.digest = digest
    finally:
        channel.close()
    if isinstance(channel, OutboxChannel):
        result.files = [str(p) for p in channel.written]
    store.refresh("alerts")
    return result


def resend(store: AlertStore, config: AppConfig, alert_id: str, *, now: datetime) -> Alert:
    """Deliver one alert again, whatever its state (the explicit, user-asked re-send).

    Raises KeyError when there is no such alert and DeliveryError when sending failed
    (the alert's state then records the failure).
    """
    now = _aware(now)
    found = store.get_many("alerts", [alert_id])
    if alert_id not in found:
        raise KeyError(alert_id)
    alert = alert_from_document(alert_id, found[alert_id])
    channel = open_channel(config.env)
    try:
        sent = send_alert(alert, channel, config.alerts, config.env, now=now)
    except _Failed as failure:
        _save(store, failure.alert)
        store.refresh("alerts")
        raise failure.error from None
    finally:
        channel.close()
    _save(store, sent)
    store.refresh("alerts")
    return sent


def _aware(now: datetime) -> datetime:
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    return now.astimezone(UTC)


# ---------------------------------------------------------------------------------- digest


def digest_id(day: datetime) -> str:
    return stable_id("digest", day.date().isoformat())


def render_digest(
    alerts: Sequence[Alert],
    settings: AlertSettings,
    env: Environment,
    *,
    start: datetime,
    end: datetime,
) -> RenderedEmail:
    """One e-mail listing the alerts detected between ``start`` and ``end``."""
    shifts = sum(1 for a in alerts if a.kind == "stance_shift")
    spikes = len(alerts) - shifts
    parts = []
    if shifts:
        parts.append(f"{shifts} stance shift{'s' if shifts != 1 else ''}")
    if spikes:
        parts.append(f"{spikes} coverage spike{'s' if spikes != 1 else ''}")
    subject = clean_text(f"Stancewatch digest {_day(end)}: " + (", ".join(parts) or "no alerts"))
    items = []
    for alert in alerts:
        if alert.kind == "stance_shift":
            detail = (
                f"{alert.from_stance} -> {alert.to_stance}, recent window "
                f"{_range(alert.window_start, alert.window_end)}"
            )
        else:
            detail = f"{alert.stats.get('articles', 0)} articles, {_range(alert.window_start, alert.window_end)}"
        items.append(
            {
                "subject": subject_for(alert),
                "detail": detail,
                "status": alert.status,
                "evidence": _evidence_view([e for e in alert.evidence if e.period == "recent"][:2]),
            }
        )
    context = {
        "subject": subject,
        "alerts": items,
        "period": f"{_minute(start)} and {_minute(end)}",
        "day": _day(end),
        "kibana_url": (env.kibana_url.rstrip("/") + "/app/discover") if env.kibana_url else None,
    }
    templates = _templates()
    return RenderedEmail(
        subject=subject,
        text=templates.get_template("digest.txt.j2").render(context),
        html=templates.get_template("digest.html.j2").render(context),
    )


def _maybe_digest(
    store: AlertStore, settings: AlertSettings, env: Environment, channel: Channel, *, now: datetime
) -> str | None:
    """Send today's digest once, at or after ``digest.hour_utc``; state in the alerts index."""
    if not settings.digest.enabled:
        return None
    due_at = now.replace(hour=settings.digest.hour_utc, minute=0, second=0, microsecond=0)
    if now < due_at:
        return None
    doc_id = digest_id(due_at)
    existing = store.get_many("alerts", [doc_id])
    if existing.get(doc_id, {}).get("status") in ("sent", "suppressed"):
        return None
    start = due_at - timedelta(days=1)
    query = {
        "bool": {
            "filter": [
                {"terms": {"kind": list(ALERT_KINDS)}},
                {"range": {"detected_at": {"gte": iso(start), "lt": iso(due_at)}}},
            ],
            "must_not": [{"term": {"status": "suppressed"}}],
        }
    }
    alerts = sorted(
        (alert_from_document(i, d) for i, d in store.scan("alerts", query, fields=None)),
        key=lambda a: (a.kind, a.window_end),
    )
    state: dict[str, Any] = {
        "kind": "digest",
        "@timestamp": iso(due_at),
        "window_start": iso(start),
        "window_end": iso(due_at),
        "detected_at": iso(now),
        "evidence_article_ids": [a.id for a in alerts],
    }
    if not alerts:
        state.update(status="suppressed", status_reason="nothing to report")
        store.write("alerts", [(doc_id, state)])
        return "nothing to report"
    recipients = list(settings.digest.to) or list(env.alert_to)
    rendered = render_digest(alerts, settings, env, start=start, end=due_at)
    msg = build_message(
        rendered,
        sender=env.alert_from,
        recipients=recipients,
        now=now,
        headers={"X-Stancewatch-Kind": "digest"},
    )
    attempts = int(existing.get(doc_id, {}).get("attempts", 0) or 0) + 1
    try:
        channel.send(
            msg, sender=env.alert_from, recipients=recipients, name=f"digest-{_day(due_at)}"
        )
    except DeliveryError as exc:
        state.update(status="failed", status_reason=str(exc), attempts=attempts)
        store.write("alerts", [(doc_id, state)])
        return f"failed: {exc}"
    state.update(
        status="sent",
        sent_at=iso(now),
        recipients=recipients,
        subject=rendered.subject,
        attempts=attempts,
    )
    store.write("alerts", [(doc_id, state)])
    return rendered.subject


def parse_when(value: str | None) -> datetime | None:
    """ISO 8601 (date or date-time; 'Z' allowed) as aware UTC; None for None/empty."""
    if not value:
        return None
    parsed = parse_time(value.strip())
    if parsed is None:
        raise ValueError(f"not an ISO 8601 date or time: {value!r}")
    return parsed
