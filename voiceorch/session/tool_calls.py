"""The tool calls of one turn: who runs each, when it may start, and what the history keeps.

A step of a reply (one LLM request) may end with tool calls. A call whose name is one of the
server's tools (``Engines.tools``) is run by the server; any other goes to the client
(``response.tool_call``), which answers with ``tool_call.output`` — unless the client declared
no tools (it would never answer): then the LLM gets an error result at once. The rules, which
hold by construction:

- A step's calls start only once the turn is confirmed and the words said before them have
  played (the turn waits for its audio first): a response cancelled or interrupted before
  then never starts them, and the client is never asked to run them.
- The calls of a step run concurrently, each bounded by ``SessionSettings.tool_call_timeout_s``.
  A server call runs inside the turn's scope: cancelling the turn cancels it, unless its
  result has already come. A server tool that fails or times out gives the LLM an error
  result; a client that does not answer in time fails the turn (``tool_call_timeout``).
- Once the response has ended (:meth:`ToolLedger.end`), a result that comes is late: it is
  recorded as such (``history.LATE_RESULT_PREFIX``) and never makes the assistant speak.
- The history gets every call that started, each with its result or a placeholder that says
  why there is none (a late result replaces it); calls that never started are left out.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

import attrs
import trio

from .. import protocol as p
from ..engines.base import ChatMessage, EngineError, Engines, ToolCall, ToolCallDelta
from ..engines.tools import ToolSpec
from ..logs import log_event
from .history import LATE_RESULT_PREFIX, ToolStep, step_messages

log = logging.getLogger(__name__)

#: What the history says of a started call whose result never came.
NO_RESULT_CANCELLED = "[no result: the response was cancelled before the call returned]"


@attrs.frozen(kw_only=True)
class ToolOffer:
    """The tools offered to the LLM in one turn (the client's and the server's), and the
    ``tool_choice`` of its first request."""

    specs: tuple[ToolSpec, ...] = ()
    choice: str = "auto"
    #: Names of the tools the server runs itself (any other call goes to the client).
    server_names: frozenset[str] = frozenset()
    #: Whether the client declared tools (if not, a call of no server tool is answered with an error).
    client_tools: bool = False

    def runner(self, name: str) -> str:
        """Who runs a call of ``name``: ``"server"``, ``"client"`` or ``"nobody"``."""
        if name in self.server_names:
            return "server"
        return "client" if self.client_tools else "nobody"


@attrs.define(eq=False)
class _Call:
    call: ToolCall
    runner: str  # ToolOffer.runner's
    started: bool = False
    result: str | None = None
    #: Why there is no result, for the history, if none comes.
    missing: str = NO_RESULT_CANCELLED
    answered: trio.Event = attrs.field(factory=trio.Event)


@attrs.define(eq=False)
class Step:
    """One LLM request's reply: its text (sentences ``first_sentence`` to ``last_sentence`` of
    the turn's playback) and its calls, in the order the LLM made them."""

    first_sentence: int
    text: str = ""
    last_sentence: int | None = None
    calls: list[_Call] = attrs.field(factory=list)
    _by_index: dict[int, _Call] = attrs.field(factory=dict)

    def feed(self, delta: ToolCallDelta, tools: ToolOffer) -> None:
        """Add a piece of a call (a new index starts a new call). Not a checkpoint."""
        known = self._by_index.get(delta.index)
        if known is None:
            known = _Call(ToolCall(call_id=delta.call_id, name=delta.name, arguments=""), tools.runner(delta.name))
            self._by_index[delta.index] = known
            self.calls.append(known)
        known.call = attrs.evolve(known.call, arguments=known.call.arguments + delta.arguments)

    def messages(self) -> list[ChatMessage]:
        """The step as the next request of the same turn sees it (every call answered)."""
        return step_messages([self._tool_step(self.text)])

    def _tool_step(self, text: str) -> ToolStep:
        started = [call for call in self.calls if call.started]
        return ToolStep(
            text=text,
            calls=tuple(call.call for call in started),
            results=tuple(call.result if call.result is not None else call.missing for call in started),
            pending=frozenset(call.call.call_id for call in started if call.result is None),
        )


@attrs.define
class ToolLedger:
    """Every tool call of one turn, step by step, and what became of each: what the session's
    reader delivers the client's outputs to (:meth:`deliver`), and what the history keeps."""

    steps: list[Step] = attrs.field(factory=list)
    #: The response has ended (cancelled, failed or done): results that come now are late.
    ended: bool = False
    #: The turn is in the history: results that come now go there (:meth:`deliver` says no).
    closed: bool = False

    def end(self) -> None:
        """The response has ended. Not a checkpoint."""
        self.ended = True

    def close(self) -> None:
        """The turn has been written to the history. Not a checkpoint."""
        self.ended = self.closed = True

    def deliver(self, call_id: str, output: str) -> bool:
        """The client's output for ``call_id``: True if it was a started client call of this
        turn awaiting its result (a late one is recorded as such). Not a checkpoint."""
        if self.closed:
            return False
        for step in self.steps:
            for call in step.calls:
                if call.call.call_id == call_id and call.started and call.runner == "client" and call.result is None:
                    call.result = LATE_RESULT_PREFIX + output if self.ended else output
                    call.answered.set()
                    return True
        return False

    def history(self, heard: Callable[[int, int | None], str]) -> tuple[list[ToolStep], int]:
        """The steps that started calls, each with the words of it heard (``heard(first,
        last)`` sentences), and the first sentence of the reply's rest (after them)."""
        steps, rest = [], 0
        for step in self.steps:
            if any(call.started for call in step.calls):
                steps.append(step._tool_step(heard(step.first_sentence, step.last_sentence)))
                rest = step.last_sentence if step.last_sentence is not None else rest
        return steps, rest


def _result_text(output: str, is_error: bool) -> str:
    return f"Error: {output}" if is_error else output


async def run_calls(
    step: Step,
    *,
    turn_id: str,
    engines: Engines,
    send: Callable[[p.ServerEvent], Awaitable[None]],
    timeout_s: float,
) -> None:
    """Run ``step``'s calls until each has its result: the client is sent its calls first, in
    order (``response.tool_call``), then the server's calls run concurrently while the client's
    outputs are awaited.

    ``send`` hands an event to the turn's output. Raises :class:`EngineError`
    ``tool_call_timeout`` if the client does not answer a call within ``timeout_s`` (the other
    calls are then cancelled). Cancellation cancels the server's calls in progress.
    """
    await trio.lowlevel.checkpoint_if_cancelled()  # (nothing starts in a response cancelled meanwhile)
    for call in step.calls:  # the client is asked first, in the order of the calls
        if call.runner == "client":
            c = call.call
            await send(p.ResponseToolCall(turn_id=turn_id, call_id=c.call_id, name=c.name, arguments=c.arguments))
            call.started = True  # (a memory channel's send delivers or not: the client has it now)
        elif call.runner == "nobody":
            call.started = True
            call.result = f"Error: there is no tool named {call.call.name!r}"
            log_event(log, "tool.unknown", name=call.call.name, call_id=call.call.call_id)
    async with trio.open_nursery() as nursery:
        for call in step.calls:
            if call.runner == "server":
                nursery.start_soon(_run_server_call, call, engines, timeout_s)
            elif call.runner == "client":
                nursery.start_soon(_wait_for_client, call, timeout_s)


async def _run_server_call(call: _Call, engines: Engines, timeout_s: float) -> None:
    assert engines.tools is not None
    # A task started in a scope cancelled meanwhile runs until its first checkpoint: make it
    # here, so a call of a cancelled response never starts.
    await trio.lowlevel.checkpoint_if_cancelled()
    started = trio.current_time()
    call.started = True
    with trio.move_on_after(timeout_s) as limit:
        result = await engines.tools.call(call.call.name, call.call.arguments)
    if limit.cancelled_caught:
        call.result = f"Error: the tool took longer than {timeout_s:g} s"
    else:
        call.result = _result_text(result.output, result.is_error)
    log_event(
        log,
        "tool.server_call",
        name=call.call.name,
        call_id=call.call.call_id,
        error=limit.cancelled_caught or result.is_error,
        ms=round((trio.current_time() - started) * 1000, 1),
    )


async def _wait_for_client(call: _Call, timeout_s: float) -> None:
    c = call.call
    started = trio.current_time()
    with trio.move_on_after(timeout_s) as limit:
        await call.answered.wait()
    if limit.cancelled_caught:
        call.missing = f"[no result: the client did not answer within {timeout_s:g} s]"
        raise EngineError(
            "tool_call_timeout", f"the client did not answer tool call {c.call_id} within {timeout_s:g} s"
        )
    log_event(
        log, "tool.client_call", name=c.name, call_id=c.call_id, ms=round((trio.current_time() - started) * 1000, 1)
    )


def client_specs(tools: Sequence[p.Tool]) -> tuple[ToolSpec, ...]:
    """The client's protocol tools as engine tool specs."""
    return tuple(ToolSpec(name=t.name, description=t.description, parameters=t.parameters) for t in tools)
