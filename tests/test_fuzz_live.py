"""Fuzzing the protocol layer and a live server with hypothesis: random and mutated frames.

Frames are valid client events mutated (fields dropped, renamed, replaced by values of the
wrong type, huge numbers, NaN and infinities, unicode, deep nesting, near-miss event names),
truncated JSON, random text, and binary frames (random bytes of any length, fake speech and
silence under the fake VAD, frames over the audio frame limit).

The live test runs one voice server with fake engines in a thread of its own (its own
``trio.run``) for all examples; each example opens a real WebSocket, sends its frames while
reading everything back, then a probe (``input_audio.clear``) whose answer proves the session
still serves. Every frame the protocol refuses must get its ``error`` event, in order; nothing
the server sends may be malformed; at the end nothing was logged at error level (a crashed
session logs ``session.crashed``) and the server's task count is back where it started.
"""

from __future__ import annotations

import copy
import json
import logging
import threading
import time
from functools import partial

import attrs
import pytest
import trio
import trio_websocket
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from session_harness import check_framing, count_tasks, fake_engines
from voiceorch import protocol as p
from voiceorch.engines.fakes import FakeLLM, FakeSTT, FakeTTS
from voiceorch.server.voice_ws import serve_voice
from voiceorch.session import SessionSettings

HOST = "127.0.0.1"

#: The codes a client's frames can earn (no engine fails here, so no turn fails).
CLIENT_ERROR_CODES = {
    "invalid_json",
    "invalid_event",
    "unknown_event_type",
    "message_too_large",
    "invalid_audio_frame",
    "audio_frame_too_large",
    "input_audio_buffer_full",
    "input_audio_buffer_empty",
    "input_audio_too_fast",
    "no_active_response",
    "busy",
}
PROTOCOL_CODES = {"invalid_json", "invalid_event", "unknown_event_type", "message_too_large"}

VALID_EVENTS = [
    {
        "type": "session.update",
        "session": {
            "instructions": "Be brief.",
            "turn_detection": {
                "type": "server_vad",
                "threshold": 0.5,
                "prefix_padding_ms": 300,
                "silence_duration_ms": 300,
                "min_speech_duration_ms": 100,
                "interrupt_response": True,
                "interrupt_min_speech_ms": 100,
            },
        },
    },
    {"type": "session.update", "session": {"turn_detection": {"type": "none"}}},
    {"type": "session.update", "session": {}},
    {"type": "input_audio.commit"},
    {"type": "input_audio.clear"},
    {"type": "input_text", "text": "hello there"},
    {"type": "response.cancel"},
    {"type": "playback.position", "turn_id": "turn_1", "played_ms": 120.5},
]

json_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([10**400, -(10**400), 2**63, -1, 0, 60_001]),
    st.floats(),  # NaN and the infinities included: json.dumps writes them, json.loads reads them
    st.text(max_size=30),
    st.sampled_from(["", " ", "\u202e\u0000\ud83d\ude00", "turn_1", "none", "server_vad"]),
)
json_values = st.recursive(
    json_leaves,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=10,
)


def _slots(value, found=None) -> list[tuple]:
    """Every (container, key) in a JSON value, the top-level object's included."""
    found = [] if found is None else found
    if isinstance(value, dict):
        for key in value:
            found.append((value, key))
            _slots(value[key], found)
    elif isinstance(value, list):
        for index in range(len(value)):
            found.append((value, index))
            _slots(value[index], found)
    return found


@st.composite
def mutated_events(draw) -> str:
    event = copy.deepcopy(draw(st.sampled_from(VALID_EVENTS)))
    for _ in range(draw(st.integers(0, 3))):
        slots = _slots(event)
        if not slots:
            break
        container, key = draw(st.sampled_from(slots))
        op = draw(st.sampled_from(["drop", "rename", "replace", "replace", "nest", "near-type"]))
        if op == "drop" and isinstance(container, dict):
            del container[key]
        elif op == "rename" and isinstance(container, dict):
            container[draw(st.text(max_size=12))] = container.pop(key)
        elif op == "nest":
            container[key] = draw(st.sampled_from([[container[key]], {"value": container[key]}]))
        elif op == "near-type":
            event["type"] = draw(
                st.sampled_from(
                    ["input_audio.comit", "INPUT_TEXT", "session.updated", "response.create", "", "input_text "]
                )
            )
        else:
            container[key] = draw(json_values)
    text = json.dumps(event)
    if draw(st.integers(0, 9)) == 0:  # now and then, cut it short
        text = text[: draw(st.integers(0, len(text)))]
    return text


def _pcm(ms: int, loud: bool) -> bytes:
    return (b"\xe8\x03" if loud else b"\x00\x00") * 16 * ms


text_frames = st.one_of(
    mutated_events(),
    mutated_events(),
    mutated_events(),
    st.sampled_from([json.dumps(e) for e in VALID_EVENTS]),
    st.text(max_size=80),
    json_values.map(json.dumps),
    st.integers(1, 3).map(lambda k: '{"type": "input_text", "text": "' + "\u00e9" * (k * 20_000) + '"}'),
    # Nesting: parseable, or far too deep (where the limit lies depends on the recursion limit,
    # which hypothesis raises while it runs an example).
    st.one_of(st.integers(1, 500), st.integers(6000, 20_000)).map(lambda depth: "[" * depth + "]" * depth),
)
binary_frames = st.one_of(
    st.binary(max_size=700),
    st.builds(_pcm, st.integers(0, 400), st.booleans()),
    st.builds(_pcm, st.integers(0, 400), st.booleans()),
    st.builds(_pcm, st.integers(900, 1100), st.booleans()),  # around the 1 s frame limit
)
frames = st.one_of(text_frames, text_frames, binary_frames)


def expected_code(frame: str | bytes) -> str | None:
    """The error code the protocol layer alone gives ``frame`` (None: it is valid there)."""
    try:
        if isinstance(frame, bytes):
            p.check_audio_frame(frame)
        else:
            event = p.parse_client_event(frame)
            if isinstance(event, p.InputText) and not event.text.strip():
                return "invalid_event"
    except p.ProtocolError as exc:
        return exc.code
    return None


# --- the protocol layer alone ---------------------------------------------------------------


@settings(max_examples=1000, deadline=None)
@given(frames)
def test_the_protocol_layer_parses_or_refuses_with_a_code(frame):
    code = expected_code(frame)
    if code is not None:
        assert code in PROTOCOL_CODES | {"invalid_audio_frame", "audio_frame_too_large"}
    elif isinstance(frame, str):
        event = p.parse_client_event(frame)
        encoded = p.encode(event)  # non-ASCII as \uXXXX escapes: up to 6 bytes a character
        if len(encoded) <= p.MAX_TEXT_FRAME_BYTES:
            assert p.parse_client_event(encoded) == event  # what was accepted round-trips
        else:
            assert expected_code(encoded) == "message_too_large"


# --- a live server ----------------------------------------------------------------------------


@attrs.define
class LiveServer:
    port: int
    token: trio.lowlevel.TrioToken
    problems: list[logging.LogRecord]

    def tasks(self) -> int:
        return trio.from_thread.run_sync(count_tasks, trio_token=self.token)


class _Problems(logging.Handler):
    def __init__(self, into: list) -> None:
        super().__init__(logging.WARNING)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(record)


@pytest.fixture(scope="module")
def live_server():
    engines = fake_engines(
        stt=FakeSTT(delay=0.005),
        llm=FakeLLM(first_delay=0.005, delta_delay=0.001),
        tts=FakeTTS(delay=0.001, ms_per_char=2),
    )
    settings_ = SessionSettings(max_audio_ahead_ms=5000, max_input_audio_ms=3000)
    ready = threading.Event()
    state = {}

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            server = await nursery.start(partial(serve_voice, engines, settings_, host=HOST, port=0))
            state["port"], state["token"] = server.port, trio.lowlevel.current_trio_token()
            state["cancel"] = nursery.cancel_scope.cancel
            ready.set()

    problems: list[logging.LogRecord] = []
    handler = _Problems(problems)
    logging.getLogger().addHandler(handler)
    thread = threading.Thread(target=trio.run, args=(main,), daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield LiveServer(state["port"], state["token"], problems)
    finally:
        trio.from_thread.run_sync(state["cancel"], trio_token=state["token"])
        thread.join(10)
        logging.getLogger().removeHandler(handler)
    assert not thread.is_alive()


async def _one_connection(port: int, sent: list[str | bytes]) -> list:
    """Send ``sent`` on one connection while reading; then the probe; return all received."""
    received: list = []
    with trio.fail_after(20):
        await _exchange(port, sent, received)
    return received


async def _exchange(port: int, sent: list[str | bytes], received: list) -> None:
    async with trio_websocket.open_websocket_url(f"ws://{HOST}:{port}/v1/voice") as ws:
        # Every input_audio.clear is answered: the last answer is the probe's.
        clears = 1 + sum(isinstance(frame, str) and _is_clear(frame) for frame in sent)

        async def read() -> None:
            nonlocal clears
            while clears:
                message = await ws.get_message()
                item = message if isinstance(message, bytes) else p.parse_server_event(message)
                received.append(item)
                clears -= isinstance(item, p.InputAudioCleared)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            for frame in sent:
                await ws.send_message(frame)
            await ws.send_message(p.encode(p.InputAudioClear()))


async def _typed_turn(port: int) -> dict:
    with trio.fail_after(20):
        async with trio_websocket.open_websocket_url(f"ws://{HOST}:{port}/v1/voice") as ws:
            await ws.send_message(p.encode(p.InputText(text="are you still there?")))
            while True:
                message = await ws.get_message()
                if isinstance(message, str) and (event := json.loads(message))["type"] == "response.done":
                    return event


def _is_clear(frame: str) -> bool:
    try:
        return isinstance(p.parse_client_event(frame), p.InputAudioClear)
    except p.ProtocolError:
        return False


def test_a_live_server_survives_thousands_of_random_frames(live_server):
    baseline = live_server.tasks()
    totals = {"frames": 0, "errors": 0, "turns": 0}

    @settings(
        max_examples=150,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(st.lists(frames, min_size=10, max_size=40))
    def example(sent):
        received = trio.run(_one_connection, live_server.port, sent)
        assert isinstance(received[0], p.SessionCreated)
        errors = [e for e in received if isinstance(e, p.Error)]
        assert {e.code for e in errors} <= CLIENT_ERROR_CODES, [e.code for e in errors]
        # Every frame refused by the protocol got its error, in the order sent.
        got = iter(e.code for e in errors)
        for frame in sent:
            code = expected_code(frame)
            if code is not None:
                assert code in got, (code, frame[:80])
        try:
            check_framing(received[1:])
        except AssertionError:
            kinds = [len(e) if isinstance(e, bytes) else (e.TYPE, getattr(e, "turn_id", None)) for e in received]
            raise AssertionError(f"framing broken: {kinds}") from None
        totals["frames"] += len(sent)
        totals["errors"] += len(errors)
        totals["turns"] += sum(isinstance(e, p.ResponseCreated) for e in received)

    example()
    # The sessions of the examples end once the server has seen their connections close.
    deadline = time.monotonic() + 10
    while live_server.tasks() != baseline and time.monotonic() < deadline:
        time.sleep(0.02)
    assert live_server.tasks() == baseline, "tasks left running in the server"
    assert not live_server.problems, [r.getMessage() for r in live_server.problems]
    assert totals["frames"] >= 1500, totals
    assert trio.run(_typed_turn, live_server.port)["status"] == "completed"  # still serving
    assert totals["turns"] > 0 and totals["errors"] > 0, totals
    print(f"live fuzz: {totals}")
