"""Helpers for the tests of ``/v1/realtime``: the openai SDK's own event models as the judge of
every frame, and a reader of an SDK connection that keeps what it read."""

from __future__ import annotations

import base64
import json
import threading
from contextlib import contextmanager
from typing import get_args

import numpy as np
import soxr
from openai import OpenAI
from openai.types.realtime import RealtimeServerEvent

from voiceorch.audio_files import read_as_wire_pcm

#: The SDK's model of each server event type.
SDK_MODELS = {
    get_args(cls.model_fields["type"].annotation)[0]: cls for cls in get_args(get_args(RealtimeServerEvent)[0])
}


def checked(frame: str | bytes) -> dict:
    """The frame as JSON, once the SDK's own model of its event type has accepted it (strictly:
    every required field present, every type exact)."""
    data = json.loads(frame)
    SDK_MODELS[data["type"]].model_validate(data, strict=True)
    return data


def websocket_base_url(server) -> str:
    """``ws://127.0.0.1:PORT/v1`` of a running server (the SDK adds ``/realtime``)."""
    return server.url.rsplit("/voice", 1)[0]


def sdk_client(server, api_key: str) -> OpenAI:
    return OpenAI(websocket_base_url=websocket_base_url(server), api_key=api_key)


def wav_as_pcm24(path) -> bytes:
    """A WAV file as PCM16 mono at 24 kHz, the Realtime API's format."""
    pcm16k = np.frombuffer(read_as_wire_pcm(path), dtype="<i2")
    return soxr.resample(pcm16k, 16_000, 24_000).astype("<i2").tobytes()


def b64(pcm: bytes) -> str:
    return base64.b64encode(pcm).decode("ascii")


class Events:
    """Reads an SDK connection's events one at a time: each is validated against the SDK's
    model, parsed by the SDK itself, and kept in ``log``."""

    def __init__(self, connection) -> None:
        self.connection = connection
        self.log: list = []

    def next(self):
        raw = self.connection.recv_bytes()
        checked(raw)
        event = self.connection.parse_event(raw)
        self.log.append(event)
        return event

    def until(self, event_type: str, **match):
        while True:
            event = self.next()
            if event.type == event_type and all(getattr(event, k) == v for k, v in match.items()):
                return event

    def first(self, event_type: str):
        """The first event of ``event_type`` read so far, or the next one to come."""
        seen = self.of_type(event_type)
        return seen[0] if seen else self.until(event_type)

    def of_type(self, event_type: str) -> list:
        return [e for e in self.log if e.type == event_type]

    def audio(self, response_id: str) -> bytes:
        return b"".join(
            base64.b64decode(e.delta)
            for e in self.log
            if e.type == "response.output_audio.delta" and e.response_id == response_id
        )


@contextmanager
def deadline(connection, seconds: float):
    """Close ``connection`` if the block is still running after ``seconds`` (so a test that
    waits for an event that never comes fails instead of hanging)."""
    timer = threading.Timer(seconds, connection.close)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
