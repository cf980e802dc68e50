"""A real SMTP server for tests: aiosmtpd on loopback, keeping every message it is given.

A module rather than a conftest fixture: the tests need it in different shapes (stopped and
started again, with TLS and auth options, its port in an environment variable or an Airflow
connection), so each test module wraps it in the fixture it needs.
"""

from __future__ import annotations

import email
import email.policy
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller


@dataclass
class Sink:
    """aiosmtpd handler: keeps every message it is given."""

    received: list[tuple[str, list[str], bytes]] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.received.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 OK"

    def messages(self) -> list[EmailMessage]:
        return [
            email.message_from_bytes(raw, policy=email.policy.default)  # type: ignore[misc]
            for _, _, raw in self.received
        ]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class SmtpServer:
    """A real SMTP server on a fixed port that can be stopped and started again.

    ``options`` go to aiosmtpd's ``Controller`` (``tls_context``, ``ssl_context``,
    ``authenticator``, ...).
    """

    def __init__(self, **options: Any) -> None:
        self.port = free_port()
        self.sink = Sink()
        self.options = options
        self.controller: Controller | None = None

    def start(self) -> None:
        self.controller = Controller(
            self.sink, hostname="127.0.0.1", port=self.port, **self.options
        )
        self.controller.start()

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None


@contextmanager
def running_smtp(**options: Any) -> Iterator[SmtpServer]:
    """A started ``SmtpServer`` (see there for ``options``), stopped on the way out."""
    server = SmtpServer(**options)
    server.start()
    try:
        yield server
    finally:
        server.stop()
