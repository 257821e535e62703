"""Logging through the queue: lines carry the context of the thread that logged, are written by
the listener thread, and a full queue drops (and later reports) records instead of blocking."""

from __future__ import annotations

import io
import json
import logging
import threading
import time

import pytest

from voiceorch import logs


@pytest.fixture(autouse=True)
def root_logger_restored():
    """configure() takes over the root logger: give the other tests theirs back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    logs.stop()
    root.handlers[:], root.level = handlers, level
    assert not any(isinstance(h, logs._QueueHandler) for h in root.handlers)


def test_queued_lines_carry_the_loggers_context_and_are_written_off_its_thread():
    written_by = []

    class Stream(io.StringIO):
        def write(self, text):
            written_by.append(threading.current_thread())
            return super().write(text)

    stream = Stream()
    logs.configure("info", stream)
    try:
        token = logs.session_id_var.set("sess_q")
        logs.log_event(logging.getLogger("t"), "inside", n=1)
        logs.session_id_var.reset(token)
        logs.log_event(logging.getLogger("t"), "outside")
    finally:
        logs.stop()  # flushes
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(line["event"], line.get("session_id")) for line in lines] == [("inside", "sess_q"), ("outside", None)]
    assert lines[0]["n"] == 1
    assert written_by and threading.current_thread() not in written_by
    assert not any(isinstance(h, logs._QueueHandler) for h in logging.getLogger().handlers)  # stop() took it off


def test_a_full_queue_drops_records_and_the_next_line_counts_them(monkeypatch):
    monkeypatch.setattr(logs, "QUEUE_RECORDS", 2)
    gate = threading.Event()

    class Stalled(io.StringIO):
        def write(self, text):
            gate.wait(10)
            return super().write(text)

    stream = Stalled()
    logs.configure("info", stream)
    try:
        for n in range(50):  # the listener is stuck on the first: the queue holds 2
            logs.log_event(logging.getLogger("t"), "flood", n=n)
        assert logs.dropped_records() > 0
        gate.set()
        while not logs._listener.queue.empty():
            time.sleep(0.01)
        logs.log_event(logging.getLogger("t"), "after")
    finally:
        gate.set()
        logs.stop()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert lines[-1]["event"] == "after" and lines[-1]["log_records_dropped"] >= 40
