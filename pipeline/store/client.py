"""The Elasticsearch client, made from the environment (endpoints and secrets never come from files).

One place decides timeouts, retries and authentication so that every part of the store
talks to the cluster the same way. The client's own retries (with jittered exponential
back-off) absorb short blips and whole-request 429/502/503/504 answers; the bulk helpers add
per-document 429 retries on top (see ``writer.py``).
"""

from __future__ import annotations

from typing import Any

from elastic_transport import (
    ApiError,
    ConnectionError,
    ConnectionTimeout,
    SerializationError,
    TransportError,
)
from elasticsearch import AuthenticationException, AuthorizationException, Elasticsearch

from pipeline.config import Environment, StoreSettings

#: HTTP statuses that mean "the cluster cannot take this now", not "this request is wrong".
UNAVAILABLE_STATUSES = frozenset({401, 403, 429, 502, 503, 504})
#: Longest sleep between two transport retries; keeps a dead cluster from stalling a run.
MAX_RETRY_BACKOFF_S = 30.0


class StoreUnavailable(Exception):
    """The cluster cannot be used right now; the message names the URL and what failed."""

    def __init__(self, url: str, what: str):
        self.url = url
        self.what = what
        super().__init__(f"Elasticsearch at {url} is unavailable: {what}")


def make_client(env: Environment, settings: StoreSettings) -> Elasticsearch:
    """A client for ``env.es_url`` with API key or basic auth, timeouts and back-off."""
    kwargs: dict[str, Any] = {
        "request_timeout": settings.request_timeout_s,
        "retry_on_timeout": True,
        "max_retries": settings.max_retries,
        # elastic-transport only backs off when both are > 0 (equal-jitter exponential).
        "retry_backoff_base": settings.initial_backoff_s,
        "retry_backoff_cap": MAX_RETRY_BACKOFF_S,
    }
    if env.es_api_key:
        kwargs["api_key"] = env.es_api_key
    elif env.es_user:
        kwargs["basic_auth"] = (env.es_user, env.es_password or "")
    return Elasticsearch(env.es_url, **kwargs)


def is_unavailable(exc: BaseException) -> bool:
    """True for errors that mean "try again later" rather than "this request is wrong"."""
    if isinstance(exc, SerializationError):
        return False  # our document, not the cluster
    if isinstance(exc, ConnectionError | ConnectionTimeout):
        return True
    if isinstance(exc, ApiError):
        # 401/403: credentials or privileges; the documents are fine and must not be lost.
        return exc.meta.status in UNAVAILABLE_STATUSES
    return isinstance(exc, TransportError)


def describe_error(exc: BaseException) -> str:
    """One line for a user: the HTTP status and Elasticsearch's own reason where there is one."""
    if isinstance(exc, AuthenticationException):
        return (
            "authentication failed (check STANCEWATCH_ES_API_KEY or STANCEWATCH_ES_USER/PASSWORD)"
        )
    if isinstance(exc, AuthorizationException):
        return f"not authorised: {_api_reason(exc)}"
    if isinstance(exc, ApiError):
        return f"HTTP {exc.meta.status}: {_api_reason(exc)}"
    if isinstance(exc, ConnectionTimeout):
        return "timed out"
    if isinstance(exc, ConnectionError):
        # e.g. "HTTPConnection(...): Failed to establish a new connection: [Errno 111] ..."
        message = str(getattr(exc, "message", "") or exc)
        return f"cannot connect ({message.rsplit(': ', 1)[-1].strip() or 'connection failed'})"
    return f"{type(exc).__name__}: {exc}"


def _api_reason(exc: ApiError) -> str:
    body = exc.body
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            return format_es_error(error)
        if isinstance(error, str):
            return error
    return str(exc.message)


def format_es_error(error: Any) -> str:
    """``type: reason (caused by type: reason)`` from an Elasticsearch error object."""
    if not isinstance(error, dict):
        return str(error)
    text = f"{error.get('type', 'error')}: {error.get('reason', '')}".strip()
    cause = error.get("caused_by")
    if isinstance(cause, dict):
        text += f" (caused by {cause.get('type', 'error')}: {cause.get('reason', '')})"
    return text
