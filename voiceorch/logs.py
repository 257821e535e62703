"""Structured logs: one JSON object per line, carrying the session and turn they belong to.

``session_id`` and ``turn_id`` live in context variables; Trio copies the context into every
task it starts, so setting them before starting a session's (or a turn's) tasks labels every
line those tasks log. Log with ``log.info("event.name", extra={"fields": {...}})`` or
:func:`log_event`.

:func:`configure` keeps the event loop's share cheap: the calling thread only makes the record
(with the context variables' values copied into it) and queues it; a listener thread formats
the JSON and writes it. The queue is bounded (``QUEUE_RECORDS``): past it, records are dropped
and counted (``dropped_records``; the next line written says how many). It is flushed at exit.
"""

from __future__ import annotations

import atexit
import contextvars
import json
import logging
import logging.handlers
import queue
import sys

session_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("session_id", default=None)
turn_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("turn_id", default=None)
instance_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("instance", default=None)
#: The worker process's number under ``serve --workers N`` (1..N; None in a single process).
worker_var: contextvars.ContextVar[int | None] = contextvars.ContextVar("worker", default=None)


_CONTEXT = (
    ("instance", instance_id_var),
    ("worker", worker_var),
    ("session_id", session_id_var),
    ("turn_id", turn_id_var),
)

#: Records that may wait for the listener thread before new ones are dropped.
QUEUE_RECORDS = 10_000


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        context = getattr(record, "context", None)  # copied by _QueueHandler on the logging thread
        for key, var in _CONTEXT:
            value = context.get(key) if context is not None else var.get()
            if value is not None:
                line[key] = value
        line.update(getattr(record, "fields", {}))
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class _QueueHandler(logging.handlers.QueueHandler):
    """Queues the record as it is, plus the context variables' values (read here, on the thread
    that logs); formatting happens on the listener's thread. Drops records when the queue is full."""

    dropped = 0

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        record.context = {key: var.get() for key, var in _CONTEXT}
        if _QueueHandler.dropped:
            record.fields = {**getattr(record, "fields", {}), "log_records_dropped": _QueueHandler.dropped}
        return record

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            _QueueHandler.dropped += 1
        else:
            _QueueHandler.dropped -= getattr(record, "fields", {}).get("log_records_dropped", 0)


class _QueueListener(logging.handlers.QueueListener):
    def enqueue_sentinel(self) -> None:
        self.queue.put(self._sentinel)  # waits for room: stop() writes out everything queued


_listener: logging.handlers.QueueListener | None = None


def dropped_records() -> int:
    """Records dropped (queue full) and not yet reported on a line."""
    return _QueueHandler.dropped


def stop() -> None:
    """Write out what is queued, stop the listener thread and take the queue off the root logger
    (so nothing queues up for a listener that is gone). Also run at exit. Idempotent."""
    global _listener
    if _listener is not None:
        root = logging.getLogger()
        root.handlers[:] = [h for h in root.handlers if not isinstance(h, _QueueHandler)]
        _listener.stop()
        _listener = None


def configure(level: str = "info", stream=None) -> None:
    """Send every log record of the process as a JSON line to ``stream`` (default stderr),
    formatted and written by a listener thread (see the module's docstring)."""
    stop()
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    records: queue.Queue[logging.LogRecord] = queue.Queue(QUEUE_RECORDS)
    global _listener
    _listener = _QueueListener(records, handler, respect_handler_level=True)
    _listener.start()
    root = logging.getLogger()
    root.handlers[:] = [_QueueHandler(records)]
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpcore", "trio-websocket", "faster_whisper"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def log_event(logger: logging.Logger, event: str, level: int = logging.INFO, **fields) -> None:
    logger.log(level, event, extra={"fields": fields})


atexit.register(stop)
