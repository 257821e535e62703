"""The conversation one session remembers, bounded, as the LLM sees it."""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from ..engines.base import ChatMessage, Role, ToolCall

DEFAULT_INSTRUCTIONS = (
    "You are a friendly voice assistant. Your replies are spoken aloud, so answer in one to "
    "three short sentences of plain conversational English. Never use markdown, lists, "
    "emojis or code."
)

#: How a result that came after its response had ended is recorded (before the result).
LATE_RESULT_PREFIX = "[this result came after the response had ended] "


@attrs.frozen(kw_only=True)
class ToolStep:
    """A step of a reply that called tools: the words of it the user heard (said before the
    calls), the calls that started, and one result per call (a placeholder saying why there is
    none, for a call whose result did not come; see ``pending``)."""

    text: str
    calls: tuple[ToolCall, ...]
    results: tuple[str, ...]
    #: Ids of the calls whose result had not come when the response ended: a result that
    #: comes later replaces the placeholder (:meth:`Conversation.record_late_result`).
    pending: frozenset[str] = frozenset()

    def __attrs_post_init__(self) -> None:
        if not self.calls or len(self.calls) != len(self.results):
            raise ValueError("a tool step has calls, and one result for each")


@attrs.define
class Conversation:
    """System instructions plus the latest exchanges, within ``max_messages`` and ``max_chars``.

    Oldest exchanges are dropped first, a whole exchange (a user message, and all the assistant
    and tool messages that answered it) at a time, so the history always starts with a user
    message and every tool call in it has its result right after it. Once a bound is passed,
    exchanges are dropped until the memory is within *half* of both bounds: the start of the
    prompt then stays the same for several turns, so an LLM server's prompt cache (llama.cpp's
    reuses the unchanged start of the previous prompt) keeps working. Dropping one exchange per
    turn would change the start of every prompt once the memory is full, and make the LLM
    process the whole history again each turn (measured: first token after 2.5-4.3 s instead
    of about 0.3 s with the embedded model).
    """

    instructions: str = DEFAULT_INSTRUCTIONS
    max_messages: int = 20
    max_chars: int = 6000
    _messages: list[ChatMessage] = attrs.field(factory=list)
    _last_turn_id: str | None = None
    #: Calls whose result is a placeholder, awaiting a late result.
    _pending: set[str] = attrs.field(factory=set)

    @property
    def messages(self) -> tuple[ChatMessage, ...]:
        return tuple(self._messages)

    def request(self, user_text: str) -> list[ChatMessage]:
        """The messages of an LLM request answering ``user_text`` (history is not changed)."""
        return [
            ChatMessage(role="system", content=self.instructions),
            *self._messages,
            ChatMessage(role="user", content=user_text),
        ]

    def add_exchange(
        self, user_text: str, assistant_text: str, *, turn_id: str | None = None, steps: Sequence[ToolStep] = ()
    ) -> None:
        """Remember one turn: what the user said, the reply's tool steps (each with the words
        heard before its calls, the calls and their results), and what the user heard of the
        rest of the reply."""
        self._messages.append(ChatMessage(role="user", content=user_text))
        self._messages.extend(step_messages(steps))
        for step in steps:
            self._pending |= step.pending
        if assistant_text:
            self._messages.append(ChatMessage(role="assistant", content=assistant_text))
        self._last_turn_id = turn_id
        self._trim()

    def add_message(self, role: Role, text: str) -> None:
        """Append a message the client supplied (history injection); it ends the last turn's
        right to :meth:`revise_reply`."""
        self._messages.append(ChatMessage(role=role, content=text))
        self._last_turn_id = None
        self._trim()

    def revise_reply(self, turn_id: str, assistant_text: str) -> bool:
        """Replace what the user heard of the last part of turn ``turn_id``'s reply (after its
        last tool step), if it is still the last turn."""
        if turn_id != self._last_turn_id or not self._messages:
            return False
        last = self._messages[-1]
        if last.role == "assistant" and not last.tool_calls:
            self._messages.pop()
        if assistant_text:
            self._messages.append(ChatMessage(role="assistant", content=assistant_text))
        return True

    def record_late_result(self, call_id: str, output: str) -> bool:
        """A call's result came after its response had ended: it replaces the call's placeholder
        result (marked as late). False if no call of the history awaits a result under that id
        (unknown, answered already, or forgotten)."""
        if call_id not in self._pending:
            return False
        self._pending.discard(call_id)
        for index, message in enumerate(self._messages):
            if message.role == "tool" and message.tool_call_id == call_id:
                self._messages[index] = attrs.evolve(message, content=LATE_RESULT_PREFIX + output)
                return True
        return False

    def _trim(self) -> None:
        def within(messages: int, chars: int) -> bool:
            return len(self._messages) <= messages and sum(map(_chars, self._messages)) <= chars

        if within(self.max_messages, self.max_chars):
            return
        while self._messages and not within(self.max_messages // 2, self.max_chars // 2):
            del self._messages[0]
            while self._messages and self._messages[0].role != "user":
                del self._messages[0]
        kept = {m.tool_call_id for m in self._messages if m.role == "tool"}
        self._pending &= kept


def step_messages(steps: Sequence[ToolStep]) -> list[ChatMessage]:
    """The messages of tool steps: the assistant's words and calls, then one result per call."""
    messages: list[ChatMessage] = []
    for step in steps:
        messages.append(ChatMessage(role="assistant", content=step.text, tool_calls=step.calls))
        messages.extend(
            ChatMessage(role="tool", content=result, tool_call_id=call.call_id)
            for call, result in zip(step.calls, step.results)
        )
    return messages


def _chars(message: ChatMessage) -> int:
    return len(message.content) + sum(len(call.name) + len(call.arguments) for call in message.tool_calls)
