"""JSON logs: one object per line, tagged with the request id, free of personal data.

What keeps personal data and secrets out: the access log records the route *template*
(``/v1/citizen/payments/{payment_id}``), never the raw path or query string, and no header or
body; and the formatter masks any extra field whose name says it is sensitive, in case a
caller passes one by mistake. Settings are logged through ``Settings.redacted()``.
"""

from __future__ import annotations

import contextvars
import datetime
import logging
import sys
from collections.abc import Callable
from typing import Any

import msgspec

# The id of the request being handled in this task; "-" outside requests.
request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

# Attributes every LogRecord has; anything else was passed with ``extra=`` and is logged.
_RECORD_FIELDS = frozenset(
    logging.LogRecord("", 0, "", 0, "", (), None).__dict__.keys()
    | {
        "message",
        "asctime",
        "color_message",
        "request_id",
    }  # uvicorn's copy of msg with terminal colours
)
_SENSITIVE_WORDS = (
    "authorization",
    "national_id",
    "pin",
    "password",
    "secret",
    "token",
    "api_key",
    "apikey",
    "totp",
    "cookie",
    "signing_key",
)
_HANDLER_NAME = "gwallet-json"


def is_sensitive(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in _SENSITIVE_WORDS)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
        }
        for name, value in record.__dict__.items():
            if name in _RECORD_FIELDS or name in entry:
                continue
            entry[name] = "***" if is_sensitive(name) else value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return msgspec.json.encode(entry, enc_hook=str).decode()


class TextFormatter(logging.Formatter):
    """For a developer's terminal (GWALLET_LOG_JSON=false)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        if not hasattr(record, "request_id"):
            record.request_id = "-"
        return super().format(record)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time (test runners swap it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> Any:  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def _stamp_request_id(
    factory: Callable[..., logging.LogRecord],
) -> Callable[..., logging.LogRecord]:
    """Record the request id when the record is made, in the request's own context (a
    handler may format it later, in another thread)."""

    def make_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        record.request_id = request_id_var.get()
        return record

    make_record.stamps_request_id = True  # type: ignore[attr-defined]
    return make_record


def configure(level: str = "INFO", json: bool = True) -> None:
    """Send every log record to stderr, one line each. Safe to call more than once."""
    factory = logging.getLogRecordFactory()
    if not getattr(factory, "stamps_request_id", False):
        logging.setLogRecordFactory(_stamp_request_id(factory))
    root = logging.getLogger()
    for handler in list(root.handlers):
        if handler.get_name() == _HANDLER_NAME:
            root.removeHandler(handler)
    handler = _StderrHandler()
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JsonFormatter() if json else TextFormatter())
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Servers' own access logs would log raw paths; ours logs templates (gwallet.access).
    logging.getLogger("uvicorn.access").disabled = True
    for name in ("uvicorn", "uvicorn.error", "_granian", "granian"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
