"""turn.py builds the DEBUG list of the LLM request's messages only when DEBUG is on."""

from __future__ import annotations

import logging

import trio

from session_harness import fake_engines
from voiceorch import protocol as p
from voiceorch.session.history import Conversation
from voiceorch.session.settings import SessionSettings
from voiceorch.session.turn import Turn, run_turn


class CountingList(list):
    """A message list that counts how often it is walked."""

    walks = 0

    def __iter__(self):
        CountingList.walks += 1
        return super().__iter__()


class CountingConversation(Conversation):
    def request(self, user_text: str):
        return CountingList(super().request(user_text))


async def _one_turn() -> None:
    outbox_send, outbox_recv = trio.open_memory_channel(0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: run_turn(
                Turn.ended("turn_1", text="Hi"),
                engines=fake_engines(),
                conversation=CountingConversation(),
                outbox=outbox_send,
                settings=SessionSettings(),
            )
        )
        async for item in outbox_recv:
            if isinstance(item, p.ResponseDone):
                return


async def test_the_debug_message_list_is_built_only_at_debug(autojump_clock, caplog) -> None:
    CountingList.walks = 0
    caplog.set_level(logging.INFO, logger="voiceorch.session.turn")
    await _one_turn()
    assert CountingList.walks == 1  # the LLM's own read of the messages, nothing else
    CountingList.walks = 0
    caplog.set_level(logging.DEBUG, logger="voiceorch.session.turn")
    await _one_turn()
    assert CountingList.walks == 2  # and the DEBUG line's
    assert any("llm.request.messages" in r.getMessage() for r in caplog.records)
