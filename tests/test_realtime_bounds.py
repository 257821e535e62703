"""What one Realtime connection's translator holds is bounded: a client that adds item after
item, or a conversation that goes on for thousands of turns, leaves its memory flat.

Sans-I/O (the translator alone, a fake session's v1 events) and measured with tracemalloc: the
memory the translator still holds after 10,000 more of each growth path than it held before.
"""

from __future__ import annotations

import gc
import json
import tracemalloc

from test_realtime_translator import Link, done
from voiceorch import protocol as p
from voiceorch.realtime import translator as rt

#: What 10,000 more steps may leave behind: the bounded collections refilled with new entries
#: (a few hundred ids) and allocator noise. Unbounded, each step keeps 100 bytes or more.
FLAT_BYTES = 160_000
STEPS = 10_000


def held_after(step, *, warm_up: int = 1_000, steps: int = STEPS) -> int:
    """Bytes still allocated after ``steps`` calls of ``step(i)`` (past a warm-up that fills
    every bounded collection)."""
    for i in range(warm_up):
        step(i)
    gc.collect()
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        for i in range(warm_up, warm_up + steps):
            step(i)
        gc.collect()
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f"{step.__doc__}: {after - before} bytes held after {steps} more")
    return after - before


def user_item(i: int, text: str = "a question " * 10) -> dict:
    return {
        "type": "conversation.item.create",
        "item": {
            "id": f"item_client_{i:020d}",
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": text}],
        },
    }


def test_text_items_never_answered_leave_memory_flat():
    link = Link()

    def step(i: int) -> None:
        """text items without response.create"""
        link.translator.from_client(json.dumps(user_item(i)))

    assert held_after(step) < FLAT_BYTES


def test_thousands_of_text_exchanges_leave_memory_flat():
    link = Link()
    reply = b"\x01\x00" * 640  # 40 ms of reply audio

    def step(i: int) -> None:
        """text exchanges"""
        turn_id = f"turn_{i}"
        link.translator.from_client(json.dumps(user_item(i, "hi")))
        link.translator.from_client('{"type": "response.create"}')
        for message in (
            p.ResponseCreated(turn_id=turn_id),
            p.ResponseTextDelta(turn_id=turn_id, delta="Sure."),
            reply,
            done(turn_id, "completed", "Sure."),
        ):
            link.translator.from_session(message if isinstance(message, bytes) else p.encode(message))

    # (3,000 exchanges, 6,000 items: each costs a millisecond; unbounded they held 1.1 MB.)
    assert held_after(step, warm_up=300, steps=3_000) < FLAT_BYTES


def test_committed_turns_that_never_end_leave_memory_flat():
    link = Link()

    def step(i: int) -> None:
        """committed turns without response.done"""
        link.translator.from_session(p.encode(p.InputAudioCommitted(turn_id=f"turn_{i}", audio_ms=1000.0)))

    assert held_after(step) < FLAT_BYTES


def test_a_text_item_beyond_the_bound_is_refused_and_the_held_texts_stay():
    link = Link()
    for i in range(rt.MAX_PENDING_TEXT_ITEMS):
        _, answers = link.client(user_item(i, f"q{i}"))
        assert [a["type"] for a in answers] == ["conversation.item.added", "conversation.item.done"]
    refused = user_item(999, "one too many")
    refused["event_id"] = "e1"
    to_session, [error] = link.client(refused)
    assert to_session == []
    assert (error["error"]["code"], error["error"]["param"], error["error"]["event_id"]) == (
        "input_text_buffer_full",
        "item.content",
        "e1",
    )
    [turn], _ = link.client({"type": "response.create"})
    assert turn.text == "\n".join(f"q{i}" for i in range(rt.MAX_PENDING_TEXT_ITEMS))
    _, answers = link.client(refused)  # after response.create, there is room again
    assert answers[0]["type"] == "conversation.item.added"


def test_held_texts_never_make_a_frame_the_session_refuses():
    link = Link()
    text = "\u00e9" * 5000  # each character is a 6-byte escape in the v1 frame
    accepted = 0
    while link.client(user_item(accepted, text))[1][0]["type"] == "conversation.item.added":
        accepted += 1
    assert 0 < accepted < rt.MAX_PENDING_TEXT_ITEMS
    [turn], _ = link.client({"type": "response.create"})
    assert len(p.encode(turn).encode()) <= p.MAX_TEXT_FRAME_BYTES
    p.parse_client_event(p.encode(turn))  # the session takes it
    _, [error] = link.client(user_item(500, "x" * (p.MAX_TEXT_FRAME_BYTES + 1)))
    assert error["error"]["code"] == "input_text_buffer_full"


def test_instructions_too_long_for_the_session_are_refused_and_change_nothing():
    link = Link()
    too_long = {
        "type": "session.update",
        "session": {"instructions": "x" * p.MAX_TEXT_FRAME_BYTES, "audio": {"output": {"voice": "a"}}},
    }
    to_session, [error] = link.client(too_long)
    assert to_session == [] and (error["error"]["code"], error["error"]["param"]) == (
        "invalid_value",
        "session.instructions",
    )
    [update], _ = link.client({"type": "session.update", "session": {"audio": {"output": {"voice": "b"}}}})
    [updated] = link.session(p.SessionUpdated(session=link.translator._config))
    assert updated["session"]["audio"]["output"]["voice"] == "b"  # the refused update's echo is not pending


def test_a_long_item_id_is_refused_and_the_latest_assistant_item_stays_truncatable():
    link = Link()
    _, [error] = link.client(user_item(0) | {"item": {**user_item(0)["item"], "id": "x" * (rt.MAX_ITEM_ID_CHARS + 1)}})
    assert (error["error"]["code"], error["error"]["param"]) == ("invalid_value", "item.id")
    link.client(user_item(1, "hi"))
    link.client({"type": "response.create"})
    frames = link.session(p.ResponseCreated(turn_id="turn_1"), b"\x01\x00" * 640, done("turn_1", "completed", "Sure."))
    assistant = next(f["item"]["id"] for f in frames if f["type"] == "response.output_item.added")
    for i in range(rt.MAX_REMEMBERED_ITEMS + 10):  # the assistant item's id is forgotten ...
        link.client(user_item(100 + i, "more"))
    [position], [truncated] = link.client(
        {"type": "conversation.item.truncate", "item_id": assistant, "content_index": 0, "audio_end_ms": 20}
    )
    assert truncated["type"] == "conversation.item.truncated"  # ... but the latest stays truncatable
    assert position.turn_id == "turn_1"
