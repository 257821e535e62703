"""The life of one turn: the user's words in, the assistant's spoken reply out.

A :class:`Turn` is made by the session when the user's turn ends (``input_audio.commit`` or
``input_text``, or the silence after speech), or *speculatively* a little earlier, when a
pause begins: then its work starts inside the silence window, and its output is held back
(``_Gate``) until :meth:`Turn.confirm` says the turn has really ended; if the user speaks on
instead, the turn is cancelled and the client never hears of it. :func:`run_turn` answers a
turn with four stages linked by small channels, all inside the turn's own ``trio.CancelScope``::

    STT --text--> LLM --deltas--> splitter --sentences--> TTS --speech--> audio sender --> outbox

The ``sentences`` channel holds a whole reply (``SessionSettings.reply_buffer_sentences``), so
the LLM's request ends, and frees its slot for other sessions, as soon as generation ends;
synthesis and paced audio go on from the buffer.

Reply audio is paced to real time plus ``playback_lead_ms``, and the turn lasts until the
client has played it all, so the server always knows what the user has heard (``Playback``).

:meth:`Turn.cancel` (``response.cancel``, a newer user turn, or barge-in: speech over the
reply) cancels ``turn.scope``, which unwinds every stage at once: the LLM's HTTP stream is
closed, pending synthesis is abandoned, and no audio frame of the turn is handed to the outbox
afterwards. A barge-in is answered with ``response.interrupted``; then, as always, comes
``response.done``, after the scope has closed, so nothing of a response ever follows it. The
conversation history keeps only the words the user heard.

With tools, a response is a loop of *steps*: the pipeline above answers one LLM request; if
the reply called tools, the turn waits for its words to play, runs the calls
(:mod:`.tool_calls`: the rules of cancellation are there) and asks the LLM again with their
results, until a reply calls none (at most ``SessionSettings.max_tool_steps`` steps).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

import attrs
import trio

from .. import metrics as stats
from .. import protocol as p
from ..engines.base import ChatMessage, EngineError, Engines, ReplyDelta, ToolCallDelta
from ..logs import log_event
from ..supervise import leaves
from .history import Conversation
from .playback import Playback
from .sentences import SentenceSplitter
from .settings import SessionSettings
from .tool_calls import Step, ToolLedger, ToolOffer, run_calls

log = logging.getLogger(__name__)

Outbox = trio.MemorySendChannel  # of protocol events and reply audio (bytes), to the writer


@attrs.define(eq=False)
class Turn:
    """One user turn: committed speech (``audio``) or typed ``text`` (or both: speech whose
    transcript is known already), and its response's scope."""

    turn_id: str
    ended_at: float  # trio.current_time() when the user's turn ended
    audio: bytes | None = None
    text: str | None = None
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    playback: Playback = attrs.field(factory=Playback)
    #: Set by :meth:`cancel`: when, and whether it was the user speaking over the reply.
    cancelled_at: float | None = None
    interrupted: bool = False
    #: The client's own report of its playback position (``playback.position``), if any.
    reported_played_ms: float | None = None
    #: Whether the user's words reached the client (``transcript.final``).
    transcribed: bool = False
    #: Called with the words as soon as speech-to-text has them (before they are sent: a
    #: speculative turn holds them back), then (no arguments) once they have reached the client.
    on_transcript: Callable[[str], None] | None = None
    on_transcribed: Callable[[], None] | None = None
    #: How to get the user's words, if not by transcribing ``audio`` whole (e.g. from pieces
    #: transcribed while the user spoke); called inside the turn's STT time limit.
    transcribe: Callable[[], Awaitable[str]] | None = None
    #: Set once the user's turn has really ended; a speculative turn starts without it.
    confirmed: trio.Event = attrs.field(factory=trio.Event)
    #: The response's tool calls, and what became of them.
    ledger: ToolLedger = attrs.field(factory=ToolLedger)
    #: The first sentence of the reply after its last tool step (what ``revise_reply`` revises).
    tail_from: int = 0
    #: Text-only reply (``output_modalities: ["text"]``): no speech; each sentence counts as
    #: heard once the client has it in full.
    text_only: bool = False
    #: When :meth:`pause` stopped the reply's audio (None: not paused).
    paused_at: float | None = None
    last_paused_at: float | None = None  # ... and the last time it did, paused or not now
    #: Why the last :meth:`resume` came: (``response.resumed``'s ``overlap``, ``transcript``).
    resumed_for: tuple[str, str] = ("noise", "")
    #: The reply's audio so far, every step of it (a resume may go back into it), and the
    #: next byte of it to send.
    reply_audio: bytearray = attrs.field(factory=bytearray, repr=False)
    audio_cursor: int = 0
    _unpaused: trio.Event = attrs.field(factory=trio.Event)
    _audio_scopes: set[trio.CancelScope] = attrs.field(factory=set)  # the audio senders' stretches

    @classmethod
    def speculative(cls, turn_id: str, audio: bytes, text: str | None = None) -> Turn:
        return cls(turn_id=turn_id, ended_at=trio.current_time(), audio=audio, text=text)

    @classmethod
    def ended(cls, turn_id: str, *, audio: bytes | None = None, text: str | None = None) -> Turn:
        turn = cls(turn_id=turn_id, ended_at=trio.current_time(), audio=audio, text=text)
        turn.confirmed.set()
        return turn

    def confirm(self) -> None:
        """The user's turn has ended now: release the held-back output. Not a checkpoint."""
        if not self.confirmed.is_set():
            self.ended_at = trio.current_time()
            self.confirmed.set()

    def cancel(self, *, interrupted: bool = False) -> None:
        """End the response now (a no-op once it has ended or was cancelled). Not a checkpoint."""
        if not self.scope.cancel_called:
            self.cancelled_at = trio.current_time()
            self.interrupted = interrupted
            self.ledger.end()
            self.scope.cancel()

    def pause(self) -> bool:
        """Stop the reply's audio now (speech over it): the frame being handed over is not,
        and none follows until :meth:`resume` (or :meth:`cancel`, which ends it); synthesis
        starts no new sentence meanwhile. Returns False if it was already paused or has ended.
        Not a checkpoint."""
        if self.paused_at is not None or self.scope.cancel_called:
            return False
        self.paused_at = self.last_paused_at = trio.current_time()
        self._unpaused = trio.Event()
        for stretch in self._audio_scopes:
            stretch.cancel()
        return True

    def resume(self, overlap: str, transcript: str) -> None:
        """Go on with the paused reply, from the start of the first word the user did not hear
        (``response.resumed`` says why: ``overlap``, ``transcript``). Not a checkpoint."""
        if self.paused_at is not None and not self.scope.cancel_called:
            self.paused_at = None
            self.resumed_for = (overlap, transcript)
            self._unpaused.set()

    async def wait_unpaused(self) -> None:
        """Return at once unless paused, else when resumed. Cancellable."""
        if self.paused_at is None:
            await trio.lowlevel.checkpoint()
        else:
            await self._unpaused.wait()

    def heard_text(self, played_ms: float, first: int = 0, last: int | None = None) -> str:
        """What the user heard of the reply (of sentences ``first`` to ``last``), given a
        playback position (capped at what was sent)."""
        return self.playback.heard_text(min(played_ms, self.playback.position_ms), first, last)

    def tail_heard_text(self, played_ms: float) -> str:
        """What the user heard of the reply after its last tool step."""
        return self.heard_text(played_ms, self.tail_from)


@attrs.define
class _Gate:
    """The turn's way to the outbox: holds events back until the turn is confirmed.

    Audio never waits here: the audio sender waits for :attr:`opened` before its first frame,
    so a speculative turn sends nothing the user could hear before their turn has ended.
    """

    outbox: Outbox
    confirmed: trio.Event
    opened: trio.Event = attrs.field(factory=trio.Event)
    _held: list[p.ServerEvent] = attrs.field(factory=list)

    async def send(self, item: p.ServerEvent | bytes) -> None:
        if self.opened.is_set():
            await self.outbox.send(item)
        else:
            self._held.append(item)

    async def open_when_confirmed(self) -> None:
        await self.confirmed.wait()
        await self.open()

    async def open(self) -> None:
        """Send what was held back (in order, consecutive text deltas joined into one), then
        let everything through.

        Cancellation leaves what was not sent yet held (a memory channel's send either
        delivers or not), so a later call sends it: the turn's ``response.created`` is never
        lost to a cancel that lands while the writer is busy."""
        self._held = joined_text_deltas(self._held)
        while self._held:
            await self.outbox.send(self._held[0])
            del self._held[0]
        self.opened.set()


def joined_text_deltas(events: list[p.ServerEvent]) -> list[p.ServerEvent]:
    """``events`` with each run of consecutive ``response.text.delta`` of one turn joined into
    one delta (the same text). A speculation holds back a delta per LLM token; each one handed
    to the writer is a wait for it, which a busy server pays between the end of the user's turn
    and the first reply audio."""
    joined: list[p.ServerEvent] = []
    for event in events:
        last = joined[-1] if joined else None
        if (
            isinstance(event, p.ResponseTextDelta)
            and isinstance(last, p.ResponseTextDelta)
            and last.turn_id == event.turn_id
        ):
            joined[-1] = attrs.evolve(last, delta=last.delta + event.delta)
        else:
            joined.append(event)
    return joined


@attrs.define
class _Progress:
    """What one response has done so far: the basis of its status, history and metrics."""

    user_text: str | None = None
    stt_ms: float | None = None
    llm_started: float | None = None
    llm_ttft_ms: float | None = None
    tts_first_audio_ms: float | None = None
    first_audio_at: float | None = None
    #: The LLM's reply was cut off at its token limit (its finish reason was ``length``).
    truncated: bool = False


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


async def run_turn(
    turn: Turn,
    *,
    engines: Engines,
    conversation: Conversation,
    outbox: Outbox,
    settings: SessionSettings,
    tools: ToolOffer = ToolOffer(),
) -> p.ResponseDone | None:
    """Answer ``turn``: events and audio go to ``outbox``, the exchange goes to ``conversation``.

    Engine failures become an ``error`` event and a ``failed`` response; they never escape.
    :meth:`Turn.cancel` ends the response as ``cancelled`` (``interrupted`` for a barge-in,
    announced by ``response.interrupted``). Cancellation from outside (the session closing)
    propagates as usual, and then no ``response.done`` is sent. A speculative turn cancelled
    before it was confirmed returns ``None`` having sent nothing and changed no history.
    ``tools`` are offered to the LLM (see :mod:`.tool_calls`).
    """
    progress = _Progress()
    out = _Gate(outbox, turn.confirmed)
    error: EngineError | None = None
    with turn.scope:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(out.open_when_confirmed)
                await out.send(p.ResponseCreated(turn_id=turn.turn_id))
                await _respond(turn, engines, conversation, out, settings, progress, tools)
        except* EngineError as group:
            error = next(leaves(group))
        except* Exception as group:
            log.error("turn.crashed", exc_info=group)
            error = EngineError("internal_error", "the server failed to answer this turn")
        await turn.confirmed.wait()  # a speculative turn that is done early waits here
    turn.ledger.end()  # outputs that come from now on are late
    if not turn.confirmed.is_set():
        turn.ledger.close()  # (no call started: they wait for the turn to be confirmed)
        log_event(log, "turn.speculation_dropped")
        return None  # cancelled before the user's turn ended: the client never heard of it
    await out.open()

    played_ms = turn.playback.position_ms
    if error is not None:
        status = "failed"
        played_ms = turn.playback.played_ms(trio.current_time())
        stats.ERRORS.labels(code=error.code).inc()
        await out.send(p.Error(code=error.code, message=error.message, turn_id=turn.turn_id))
    elif turn.scope.cancelled_caught:
        status = "interrupted" if turn.interrupted else "cancelled"
        played_ms = turn.playback.played_ms(turn.cancelled_at)
        if turn.reported_played_ms is not None:  # the client's own position wins
            played_ms = min(turn.reported_played_ms, turn.playback.position_ms)
    else:
        status = "completed"
    heard = turn.heard_text(played_ms)
    steps, turn.tail_from = turn.ledger.history(lambda first, last: turn.heard_text(played_ms, first, last))
    if progress.user_text and (status != "failed" or heard or steps):
        conversation.add_exchange(
            progress.user_text, turn.tail_heard_text(played_ms), turn_id=turn.turn_id, steps=steps
        )
    turn.ledger.close()  # (no checkpoint since the history was written: no output is lost)
    if status == "interrupted":
        await out.send(p.ResponseInterrupted(turn_id=turn.turn_id, played_ms=round(played_ms, 1), heard_text=heard))

    now = trio.current_time()
    metrics = p.ResponseMetrics(
        stt_ms=progress.stt_ms,
        llm_ttft_ms=progress.llm_ttft_ms,
        tts_first_audio_ms=progress.tts_first_audio_ms,
        ttfb_ms=None if progress.first_audio_at is None else _ms(progress.first_audio_at - turn.ended_at),
        total_ms=_ms(now - turn.ended_at),
        audio_ms=turn.playback.sent_ms,
    )
    done = p.ResponseDone(
        turn_id=turn.turn_id, status=status, text=heard, metrics=metrics, truncated=progress.truncated
    )
    log_event(
        log,
        "turn.done",
        status=status,
        error=error and error.code,
        truncated=progress.truncated,
        **attrs.asdict(metrics),
    )
    stats.observe_response(status, metrics)
    await out.send(done)
    return done


@contextmanager
def _time_limit(seconds: float, code: str, what: str) -> Iterator[None]:
    """Cancel the block after ``seconds`` and raise :class:`EngineError` ``code`` instead (an
    engine that hangs fails the turn; the session goes on)."""
    try:
        with trio.fail_after(seconds):
            yield
    except trio.TooSlowError:
        raise EngineError(code, f"{what} took longer than {seconds:g} s") from None


async def _respond(
    turn: Turn,
    engines: Engines,
    conversation: Conversation,
    out: _Gate,
    settings: SessionSettings,
    progress: _Progress,
    tools: ToolOffer,
) -> None:
    if turn.audio is not None and turn.text is None:  # (spoken words may come transcribed already)
        started = trio.current_time()
        with _time_limit(settings.stt_timeout_s, "stt_timeout", "speech-to-text"):
            if turn.transcribe is not None:
                user_text = await turn.transcribe()
            else:
                user_text = await engines.stt.transcribe(turn.audio)
        progress.stt_ms = _ms(trio.current_time() - started)
        if turn.on_transcript is not None:
            turn.on_transcript(user_text)
    else:
        user_text = turn.text or ""
    await out.send(p.TranscriptFinal(turn_id=turn.turn_id, text=user_text))
    progress.user_text = user_text  # the user's words count once the client has them
    turn.transcribed = True
    if turn.on_transcribed is not None:
        turn.on_transcribed()
    if not progress.user_text:
        raise EngineError("no_speech", "no words were recognized in the committed audio")

    messages = conversation.request(progress.user_text)
    choice = tools.choice
    filler_sent: trio.Event | None = None  # the filler's audio has all been sent (one filler a turn)
    async with trio.open_nursery() as fillers:  # (a filler may go on into the next step)
        while True:
            step = Step(first_sentence=turn.playback.sentence_count)
            turn.ledger.steps.append(step)
            await _speak_step(turn, engines, messages, tools, choice, out, settings, progress, step, filler_sent)
            step.last_sentence = turn.playback.sentence_count
            if not step.calls:
                return
            if len(turn.ledger.steps) >= settings.max_tool_steps:
                raise EngineError(
                    "tool_loop_limit", f"the LLM was still calling tools after {settings.max_tool_steps} requests"
                )
            await out.opened.wait()  # no call starts before the user's turn has really ended
            if settings.tool_filler and filler_sent is None and not turn.text_only and not step.text.strip():
                filler_sent = trio.Event()
                fillers.start_soon(
                    _say_filler, settings.tool_filler, turn, engines, out, settings, progress, filler_sent
                )
            await run_calls(
                step, turn_id=turn.turn_id, engines=engines, send=out.send, timeout_s=settings.tool_call_timeout_s
            )
            messages = [*messages, *step.messages()]
            choice = "auto"  # a forced call is made once; then the LLM decides


async def _say_filler(
    text: str,
    turn: Turn,
    engines: Engines,
    out: _Gate,
    settings: SessionSettings,
    progress: _Progress,
    sent: trio.Event,
) -> None:
    """Say ``text`` while the tool calls run (its words count as heard like any other); sets
    ``sent`` once its audio has all been handed over, for the next step's audio to follow it,
    and returns once it has played. A synthesis that fails or times out is logged and skipped:
    the turn goes on."""
    try:
        await out.send(p.ResponseTextDelta(turn_id=turn.turn_id, delta=text + " "))
        try:
            with _time_limit(settings.tts_timeout_s, "tts_timeout", "text-to-speech of the tool filler"):
                pcm = await engines.tts.synthesize(text)
        except EngineError as exc:
            log_event(log, "tool.filler_failed", logging.WARNING, code=exc.code, reason=exc.message)
            return
        speech_send, speech_recv = trio.open_memory_channel[tuple[str, bytes]](1)
        with speech_send:
            speech_send.send_nowait((text, pcm))
        await _send_audio(turn, speech_recv, out, settings, progress, wait_played=False)
    finally:
        sent.set()
    await trio.sleep_until(turn.playback.play_end)


async def _speak_step(
    turn: Turn,
    engines: Engines,
    messages: list[ChatMessage],
    tools: ToolOffer,
    choice: str,
    out: _Gate,
    settings: SessionSettings,
    progress: _Progress,
    step: Step,
    after: trio.Event | None = None,
) -> None:
    """One LLM request, its text spoken (after ``after`` is set, if given: a filler's audio) and
    its calls collected in ``step``; returns once its audio has played."""
    log_event(log, "llm.request", messages=len(messages), tools=len(tools.specs))
    if log.isEnabledFor(logging.DEBUG):  # the message list is only built when it is logged
        log_event(log, "llm.request.messages", logging.DEBUG, messages=[_loggable(m) for m in messages])
    deltas_send, deltas_recv = trio.open_memory_channel[ReplyDelta](8)
    # The whole reply waits here for synthesis (up to the bound), so the LLM's stream, and its
    # request slot, end when generation ends rather than when the audio has nearly played.
    sentences_send, sentences_recv = trio.open_memory_channel[str](settings.reply_buffer_sentences)
    speech_send, speech_recv = trio.open_memory_channel[tuple[str, bytes]](1)
    if progress.llm_started is None:
        progress.llm_started = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_stream_reply, engines, messages, deltas_send, progress, tools, choice)
        nursery.start_soon(_split_reply, turn.turn_id, deltas_recv, sentences_send, out, progress, step, tools)
        if turn.text_only:
            speech_send.close()
            nursery.start_soon(_record_text, sentences_recv, turn.playback)
        else:
            nursery.start_soon(_synthesize, turn, engines, sentences_recv, speech_send, settings, progress)
            nursery.start_soon(_send_audio, turn, speech_recv, out, settings, progress, True, after)


async def _stream_reply(
    engines: Engines,
    messages: list[ChatMessage],
    deltas: trio.MemorySendChannel[ReplyDelta],
    progress: _Progress,
    tools: ToolOffer,
    choice: str,
) -> None:
    """The LLM's reply into ``deltas`` (the engine closes it); notes a reply cut at the limit."""
    if tools.specs:
        finish_reason = await engines.llm.stream_reply(messages, deltas, tools=tools.specs, tool_choice=choice)
    else:
        finish_reason = await engines.llm.stream_reply(messages, deltas)
    progress.truncated = finish_reason == "length"


async def _split_reply(
    turn_id: str,
    deltas: trio.MemoryReceiveChannel[ReplyDelta],
    sentences: trio.MemorySendChannel[str],
    out: _Gate,
    progress: _Progress,
    step: Step,
    tools: ToolOffer,
) -> None:
    """Forward the LLM's text to the client and cut it into sentences for synthesis; collect
    its tool calls in ``step`` (the pieces of a client's call go to the client as well).

    ``sentences`` holds up to ``SessionSettings.reply_buffer_sentences``: the LLM's stream is
    drained as fast as it comes (only a slow client's outbox holds it back), while synthesis
    and the paced audio take their time. Cancelling the turn drops what is buffered."""
    splitter = SentenceSplitter()
    with sentences:
        async for delta in deltas:
            if progress.llm_ttft_ms is None and progress.llm_started is not None:
                progress.llm_ttft_ms = _ms(trio.current_time() - progress.llm_started)
            if isinstance(delta, ToolCallDelta):
                step.feed(delta, tools)
                if tools.runner(delta.name) == "client":
                    await out.send(
                        p.ResponseToolCallDelta(
                            turn_id=turn_id, call_id=delta.call_id, name=delta.name, delta=delta.arguments
                        )
                    )
                continue
            stats.LLM_DELTAS.inc()
            step.text += delta
            await out.send(p.ResponseTextDelta(turn_id=turn_id, delta=delta))
            for sentence in splitter.feed(delta):
                await sentences.send(sentence)
        for sentence in splitter.flush():
            await sentences.send(sentence)


async def _record_text(sentences: trio.MemoryReceiveChannel[str], playback: Playback) -> None:
    """A text-only reply: each sentence counts as heard (no audio) once the client has it."""
    async for sentence in sentences:
        playback.add_sentence(sentence, 0.0)


async def _synthesize(
    turn: Turn,
    engines: Engines,
    sentences: trio.MemoryReceiveChannel[str],
    speech: trio.MemorySendChannel[tuple[str, bytes]],
    settings: SessionSettings,
    progress: _Progress,
) -> None:
    """Speak each sentence as soon as it is complete, one at a time; none is started while
    the reply is paused (a paused reply holds no engine)."""
    with speech:
        async for sentence in sentences:
            await turn.wait_unpaused()
            started = trio.current_time()
            with _time_limit(settings.tts_timeout_s, "tts_timeout", "text-to-speech of one sentence"):
                pcm = await engines.tts.synthesize(sentence)
            if progress.tts_first_audio_ms is None:
                progress.tts_first_audio_ms = _ms(trio.current_time() - started)
            await speech.send((sentence, pcm))


async def _send_audio(
    turn: Turn,
    speech: trio.MemoryReceiveChannel[tuple[str, bytes]],
    out: _Gate,
    settings: SessionSettings,
    progress: _Progress,
    wait_played: bool = True,
    after: trio.Event | None = None,
) -> None:
    """Hand each sentence's audio to the outbox in frames, paced to real time plus the lead,
    then (if ``wait_played``) wait until the client has played it all. Nothing goes before the
    gate opens, nor before ``after`` is set.

    The reply's audio is kept whole (:attr:`Turn.reply_audio`, every step's and a filler's, in
    the order they play) and sent from :attr:`Turn.audio_cursor`. :meth:`Turn.pause` cancels
    the stretch in progress at once (a frame being handed over is not): then
    ``response.paused``, a wait for :meth:`Turn.resume`, ``response.resumed``, and the reply's
    audio again from the start of the first word the user did not hear. A sender still waiting
    for ``after`` (a filler plays before it) only waits out the pause: the one playing speaks
    for the turn. Cancelling the turn ends the wait."""
    frame_bytes = settings.audio_frame_ms * p.BYTES_PER_MS
    lead = settings.playback_lead_ms / 1000
    playback, audio = turn.playback, turn.reply_audio
    pending: tuple[str, bytes] | None = None  # a sentence received, not yet in the reply's audio

    def active() -> bool:
        return after is None or after.is_set()

    async def send() -> None:
        nonlocal pending
        while True:
            if pending is None and turn.audio_cursor < len(audio):
                await trio.sleep_until(playback.play_end - lead)
                frame = bytes(audio[turn.audio_cursor : turn.audio_cursor + frame_bytes])
                await out.send(frame)
                turn.audio_cursor += len(frame)
                now = trio.current_time()
                if progress.first_audio_at is None:
                    progress.first_audio_at = now
                playback.on_sent(now, p.audio_ms(len(frame)))
                continue
            if pending is None:
                try:
                    pending = await speech.receive()
                except trio.EndOfChannel:
                    break
            await out.opened.wait()
            if after is not None:
                await after.wait()
            sentence, pcm = pending
            pending = None
            playback.add_sentence(sentence, p.audio_ms(len(pcm)))
            audio.extend(pcm)
        if wait_played:
            await trio.sleep_until(playback.play_end)

    while True:
        with trio.CancelScope() as stretch:
            turn._audio_scopes.add(stretch)
            try:
                if turn.paused_at is not None:
                    stretch.cancel()
                await send()
            finally:
                turn._audio_scopes.discard(stretch)
        if not stretch.cancelled_caught:
            return
        if not active():
            await turn.wait_unpaused()
            continue
        assert turn.last_paused_at is not None
        sent = playback.position_ms
        played = playback.stop(turn.last_paused_at)
        await out.send(p.ResponsePaused(turn_id=turn.turn_id, played_ms=round(played, 1)))
        await turn.wait_unpaused()
        if turn.reported_played_ms is not None:  # the client's own position wins
            played = min(turn.reported_played_ms, sent)
            turn.reported_played_ms = None  # (a later one is from after the resume)
        resume_ms, heard = playback.resume_point(played, bytes(audio))
        turn.audio_cursor = min(len(audio), int(resume_ms * 16) * 2)
        playback.rewind(p.audio_ms(turn.audio_cursor))
        overlap, transcript = turn.resumed_for
        await out.send(
            p.ResponseResumed(
                turn_id=turn.turn_id,
                played_ms=round(played, 1),
                resume_ms=round(p.audio_ms(turn.audio_cursor), 1),
                heard_text=heard,
                overlap=overlap,
                transcript=transcript,
            )
        )


def _loggable(message: ChatMessage) -> dict:
    """A message as logged: its fields that are not at their defaults (a plain text message is
    just its role and content, as before tool calls existed)."""
    return attrs.asdict(message, filter=lambda field, value: value != field.default)
