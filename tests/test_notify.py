"""Alert e-mails: rendering, escaping, header safety, routing, and delivery to a real SMTP
server (aiosmtpd, started here: plain, STARTTLS with auth, implicit TLS) or the outbox."""

from __future__ import annotations

import email
import email.policy
import ssl
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import AuthResult, LoginPassword
from smtp_sink import Sink, free_port, running_smtp

from pipeline.config import (
    DEFAULT_CONFIG_DIR,
    AlertRoute,
    AlertSettings,
    Environment,
    SmtpTarget,
    load_yaml_model,
)
from pipeline.detect import ArticleRecord, StanceRecord, candidate_alerts
from pipeline.models import Alert
from pipeline.notify import (
    DeliveryError,
    OutboxChannel,
    SmtpChannel,
    alert_message,
    kibana_url,
    recipients_for,
    subject_for,
)

SETTINGS = load_yaml_model(DEFAULT_CONFIG_DIR / "alerts.yaml", AlertSettings)
T0 = datetime(2023, 5, 1, tzinfo=UTC)
HOSTILE = '<script>alert("x")</script><b>bold</b>'


def _stance(
    day: float,
    stance: str,
    n: int,
    *,
    actor: str = "Jens Stoltenberg",
    evidence: str | None = None,
    source: str = "Baltic Times",
    url: str | None = None,
    title: str | None = None,
) -> StanceRecord:
    return StanceRecord(
        time=T0 + timedelta(days=day),
        actor=actor,
        topic="territorial_concessions",
        stance=stance,
        score=0.9,
        cluster_id=f"c{n}",
        article_id=f"a{n}",
        url=url or f"https://www.example-news.org/world/{n}",
        title=title or f"NATO chief on the front line, report {n}",
        evidence=evidence or f"Stoltenberg said Ukraine {stance}s giving up land (report {n}).",
        source=source,
    )


def shift_alert(
    *, actor: str = "Jens Stoltenberg", evidence: str | None = None, **kw: Any
) -> Alert:
    # Opposed on days 0-21 (8 reports), supportive from day 29.5: first detected at the
    # window ending on day 32 (3 supportive reports against 8 opposing ones before).
    records = [_stance(d, "oppose", d, actor=actor) for d in range(0, 22, 3)]
    records += [
        _stance(29.5 + k, "support", 100 + k, actor=actor, evidence=evidence, **kw)
        for k in range(4)
    ]
    ((alert, _),) = candidate_alerts(records, [], SETTINGS, now=T0 + timedelta(days=36))
    return alert


def spike_alert() -> Alert:
    arts = [
        ArticleRecord(
            time=T0 + timedelta(days=d, hours=h * 7),
            article_id=f"b{d}-{h}",
            cluster_id=f"b{d}-{h}",
            topics=("peace_talks",),
            title="Envoys meet again",
            url=f"https://www.example-news.org/talks/{d}-{h}",
            source="Daily Wire",
        )
        for d in range(14)
        for h in range(3)
    ]
    burst = T0 + timedelta(days=14)
    arts += [
        ArticleRecord(
            time=burst + timedelta(hours=1 + k),
            article_id=f"s{k}",
            cluster_id=f"s{k}",
            topics=("peace_talks",),
            title=f"Ceasefire talks open in Istanbul ({k})",
            url=f"https://www.example-news.org/istanbul/{k}",
            source="Daily Wire",
        )
        for k in range(14)
    ]
    ((alert, _),) = candidate_alerts(
        [], arts, SETTINGS, now=burst + timedelta(hours=20), data_since=T0 - timedelta(days=1)
    )
    return alert


def env(tmp_path: Path, **kw: Any) -> Environment:
    values: dict[str, Any] = {
        "outbox": tmp_path / "outbox",
        "data_dir": tmp_path / "data",
        "alert_to": ["desk@example.org"],
        "alert_from": "Stancewatch <alerts@stancewatch.example.org>",
    }
    values.update(kw)
    return Environment(**values)


def parts(msg: EmailMessage) -> dict[str, Any]:
    text = msg.get_body(preferencelist=("plain",))
    html = msg.get_body(preferencelist=("html",))
    assert text is not None and html is not None
    images = [p for p in msg.walk() if p.get_content_type() == "image/png"]
    return {"text": text.get_content(), "html": html.get_content(), "images": images}


# ----------------------------------------------------------------------------- rendering


def test_stance_shift_email_says_what_changed_with_numbers_and_evidence(tmp_path: Path) -> None:
    alert = shift_alert()
    assert (
        subject_for(alert) == "Stance shift: Jens Stoltenberg now supports territorial concessions"
    )
    msg, recipients, subject = alert_message(alert, SETTINGS, env(tmp_path), now=T0)
    assert recipients == ["desk@example.org"]
    assert msg["Subject"] == subject
    assert msg["X-Stancewatch-Alert-Id"] == alert.id
    assert msg.get_content_type() == "multipart/alternative"
    body = parts(msg)
    text, html = body["text"], body["html"]
    # Before/after numbers: 8 opposing reports before, 3 supportive in the recent window.
    assert "oppose -> support" in text
    assert "Recent window: 2023-05-26 – 2023-06-01   Baseline: 2023-04-26 – 2023-05-25" in text
    assert "Reports (units)                           8                      3" in text
    assert "Support share                       0 % (0)              100 % (3)" in text
    assert "Oppose share                      100 % (8)                0 % (0)" in text
    assert "p = 0.00606" in text
    # Evidence with source, date and link, in both parts.
    assert "Stoltenberg said Ukraine supports giving up land (report 102)." in text
    assert "Baltic Times, 2023-06-01" in text
    assert "https://www.example-news.org/world/102" in text
    assert 'href="https://www.example-news.org/world/102"' in html
    assert "report 103" not in text  # published after the window that detected the shift
    assert "Stoltenberg said Ukraine opposes giving up land" in text  # the "before" contrast
    # Chart inline: a PNG with a Content-ID that the HTML refers to.
    (image,) = body["images"]
    cid = image["Content-ID"].strip("<>")
    assert f'src="cid:{cid}"' in html
    assert image.get_content().startswith(b"\x89PNG")
    assert "Kibana" not in text


def test_coverage_spike_subject_and_numbers(tmp_path: Path) -> None:
    alert = spike_alert()
    assert subject_for(alert) == "Coverage spike: peace talks — 14 articles in 24 h (4.7× normal)"
    msg, _, _ = alert_message(alert, SETTINGS, env(tmp_path), now=T0)
    body = parts(msg)
    assert "against 3.0 per 24 h on average" in body["text"]
    assert "Ratio 4.7x" in body["text"]
    assert 'href="https://www.example-news.org/istanbul/13"' in body["html"]
    assert len(body["images"]) == 1
    # The subject survives the trip through the wire format (non-ASCII "—" and "×").
    parsed = email.message_from_bytes(msg.as_bytes(), policy=email.policy.default)
    assert parsed["Subject"] == subject_for(alert)


def test_feed_text_is_escaped_and_dangerous_links_dropped(tmp_path: Path) -> None:
    alert = shift_alert(
        actor=f"Jens {HOSTILE}",
        evidence=f"He said {HOSTILE} & more",
        source="<img src=x onerror=alert(1)>Wire",
        url="javascript:alert(document.cookie)",
        title=f"Title {HOSTILE}",
    )
    msg, _, _ = alert_message(alert, SETTINGS, env(tmp_path), now=T0)
    html = parts(msg)["html"]
    assert "<script>" not in html and "<b>bold</b>" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;&lt;b&gt;bold&lt;/b&gt;" in html
    assert "He said &lt;script&gt;" in html and "&amp; more" in html
    assert "javascript:" not in html
    # The text part carries the text as text (a mail client does not interpret it).
    assert f"He said {HOSTILE} & more" in parts(msg)["text"]


def test_header_injection_from_feed_text_is_neutralised(tmp_path: Path) -> None:
    alert = shift_alert(actor="Evil Actor\r\nBcc: victim@example.org\r\nX-Evil: 1")
    msg, recipients, subject = alert_message(alert, SETTINGS, env(tmp_path), now=T0)
    assert "\r" not in subject and "\n" not in subject
    raw = msg.as_bytes()
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert parsed["Bcc"] is None and parsed["X-Evil"] is None
    assert recipients == ["desk@example.org"]
    assert parsed["Subject"].startswith("Stance shift: Evil Actor Bcc: victim@example.org")


def test_kibana_link_when_configured(tmp_path: Path) -> None:
    alert = shift_alert(actor="Jens 'O' Stoltenberg!")
    link = kibana_url(alert, "https://kibana.example.org:5601/", SETTINGS)
    assert link is not None
    assert link.startswith("https://kibana.example.org:5601/app/discover#/?_g=(time:(from:'")
    # Rison escapes ' as !' and ! as !!; KQL quotes the actor.
    assert "actor:%22Jens%20!'O!'%20Stoltenberg!!%22" in link
    assert "topic:%22territorial_concessions%22" in link
    msg, _, _ = alert_message(
        alert, SETTINGS, env(tmp_path, kibana_url="https://kibana.example.org:5601"), now=T0
    )
    assert "Open in Kibana: https://kibana.example.org:5601/app/discover#/" in parts(msg)["text"]
    with_view = SETTINGS.model_copy(update={"kibana_stances_data_view": "stancewatch-stances"})
    assert "index:'stancewatch-stances'" in (kibana_url(alert, "http://k", with_view) or "")


def test_routes_add_recipients_and_exclusive_routes_replace_the_default() -> None:
    alert = shift_alert()
    spike = spike_alert()
    routes = [
        AlertRoute(to=["nato@example.org"], actors=["jens stoltenberg"]),
        AlertRoute(to=["talks@example.org"], topics=["peace_talks"], exclusive=True),
        AlertRoute(to=["shifts@example.org"], kinds=["stance_shift"]),
    ]
    default = ["desk@example.org"]
    assert recipients_for(alert, routes, default) == [
        "desk@example.org",
        "nato@example.org",
        "shifts@example.org",
    ]
    assert recipients_for(spike, routes, default) == ["talks@example.org"]
    assert recipients_for(spike, [], []) == []


# ------------------------------------------------------------------------------ SMTP server


def make_certificate(directory: Path) -> tuple[Path, Path, Path]:
    """A private CA and a server certificate for 127.0.0.1/localhost (cryptography)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Stancewatch test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, cert_path, key_path = (
        directory / "ca.pem",
        directory / "server.pem",
        directory / "server.key",
    )
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ca_path, cert_path, key_path


@pytest.fixture
def smtp_server() -> Iterator[tuple[Sink, int]]:
    with running_smtp() as server:
        yield server.sink, server.port


@pytest.fixture
def tls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ssl.SSLContext:
    """A server TLS context; the client trusts its CA through SSL_CERT_FILE."""
    ca, cert, key = make_certificate(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


def _authenticator(
    server: Any, session: Any, envelope: Any, mechanism: str, data: Any
) -> AuthResult:
    ok = isinstance(data, LoginPassword) and (data.login, data.password) == (b"sw", b"s3cret")
    return AuthResult(success=ok, handled=False)


def _send(target: SmtpTarget, tmp_path: Path, alert: Alert | None = None) -> str:
    alert = alert or shift_alert()
    msg, recipients, _ = alert_message(alert, SETTINGS, env(tmp_path), now=T0)
    channel = SmtpChannel(target)
    try:
        return channel.send(
            msg, sender="alerts@stancewatch.example.org", recipients=recipients, name=alert.id
        )
    finally:
        channel.close()


def test_plain_smtp_delivers_the_whole_message(
    smtp_server: tuple[Sink, int], tmp_path: Path
) -> None:
    sink, port = smtp_server
    _send(SmtpTarget.from_url(f"smtp://127.0.0.1:{port}?timeout=5"), tmp_path)
    ((mail_from, rcpts, content),) = sink.received
    assert mail_from == "alerts@stancewatch.example.org" and rcpts == ["desk@example.org"]
    parsed = email.message_from_bytes(content, policy=email.policy.default)
    assert (
        parsed["Subject"] == "Stance shift: Jens Stoltenberg now supports territorial concessions"
    )
    assert any(p.get_content_type() == "image/png" for p in parsed.walk())


def test_starttls_with_auth(tls: ssl.SSLContext, tmp_path: Path) -> None:
    with running_smtp(
        tls_context=tls,
        require_starttls=True,
        authenticator=_authenticator,
        auth_required=True,
    ) as server:
        sink, port = server.sink, server.port
        _send(
            SmtpTarget.from_url(f"smtp://sw:s3cret@127.0.0.1:{port}?starttls=true&timeout=5"),
            tmp_path,
        )
        assert len(sink.received) == 1
        with pytest.raises(DeliveryError, match="login failed") as err:
            _send(
                SmtpTarget.from_url(f"smtp://sw:wrong@127.0.0.1:{port}?starttls=true&timeout=5"),
                tmp_path,
            )
        assert err.value.connection
        # Without STARTTLS the server refuses to take the mail.
        with pytest.raises(DeliveryError):
            _send(SmtpTarget.from_url(f"smtp://127.0.0.1:{port}?timeout=5"), tmp_path)
        assert len(sink.received) == 1


def test_implicit_tls_and_certificate_checking(
    tls: ssl.SSLContext, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with running_smtp(ssl_context=tls) as server:
        sink, port = server.sink, server.port
        _send(SmtpTarget.from_url(f"smtps://127.0.0.1:{port}?timeout=5"), tmp_path)
        assert len(sink.received) == 1
        # A client that does not trust the CA refuses the server: no mail, a clear reason.
        monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "nothing.pem"))
        with pytest.raises(DeliveryError, match=r"TLS failed|CERTIFICATE"):
            _send(SmtpTarget.from_url(f"smtps://127.0.0.1:{port}?timeout=5"), tmp_path)
        assert len(sink.received) == 1


def test_smtp_down_is_a_connection_error(tmp_path: Path) -> None:
    port = free_port()  # nothing listens here
    with pytest.raises(DeliveryError, match="unavailable: connection refused") as err:
        _send(SmtpTarget.from_url(f"smtp://127.0.0.1:{port}?timeout=3"), tmp_path)
    assert err.value.connection


def test_outbox_writes_atomically_and_a_resend_overwrites(tmp_path: Path) -> None:
    alert = shift_alert()
    folder = tmp_path / "outbox"
    channel = OutboxChannel(folder)
    msg, recipients, _ = alert_message(alert, SETTINGS, env(tmp_path), now=T0)
    path = channel.send(msg, sender="a@b", recipients=recipients, name=alert.id)
    assert Path(path) == folder / f"{alert.id}.eml"
    msg2, _, _ = alert_message(alert, SETTINGS, env(tmp_path), now=T0 + timedelta(hours=1))
    channel.send(msg2, sender="a@b", recipients=recipients, name=alert.id)
    assert sorted(p.name for p in folder.iterdir()) == [f"{alert.id}.eml"]  # no temp files left
    parsed = email.message_from_bytes(Path(path).read_bytes(), policy=email.policy.default)
    assert (
        parsed["Subject"] == "Stance shift: Jens Stoltenberg now supports territorial concessions"
    )
    assert parsed["Date"] == msg2["Date"]
