"""Structured logs: one JSON object per line, carrying the session and turn they belong to.

``session_id`` and ``turn_id`` live in context variables; Trio copies the context into every
task it starts, so setting them before starting a session's (or a turn's) tasks labels every
line those tasks log. Log with ``log.info("event.name", extra={"fields": {...}})`` or
:func:`log_event`.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time

session_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("session_id", default=None)
turn_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("turn_id", default=None)
instance_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("instance", default=None)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": round(time.time(), 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        for key, var in (("instance", instance_id_var), ("session_id", session_id_var), ("turn_id", turn_id_var)):
            value = var.get()
            if value is not None:
                line[key] = value
        line.update(getattr(record, "fields", {}))
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure(level: str = "info", stream=None) -> None:
    """Send every log record of the process as a JSON line to ``stream`` (default stderr)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpcore", "trio-websocket", "faster_whisper"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def log_event(logger: logging.Logger, event: str, level: int = logging.INFO, **fields) -> None:
    logger.log(level, event, extra={"fields": fields})
