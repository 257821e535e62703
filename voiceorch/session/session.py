"""One client connection's session: a nursery of a reader, a responder and a writer.

- The **reader** drains the client promptly (it never waits on a model). Every decision about
  the user's turns is made by the sans-I/O :class:`~voiceorch.session.turn_taking.TurnTaking`
  machine: the reader gives it the audio frames, the speech probabilities it asks for (judged
  in ``vad_batch``), the client's controls and the passing of time, and carries out what it
  decides (events, a :class:`~voiceorch.session.turn.Turn` queued for the responder, a response
  cancelled, confirmed or interrupted by barge-in). Control events are handled at once. Audio
  frames the transport has already received (``receive_ready``) are taken in together, each
  checked on its own, so a reader that fell behind catches up in one speech-detection call.
- The **responder** answers queued turns one at a time with :func:`run_turn`, each inside the
  turn's own cancel scope (there live the STT, LLM, TTS and audio-sender tasks).
- The **writer** owns the sending side of the transport. It takes from an
  :class:`~voiceorch.session.outbox.Outbox` of two lanes: the reader's control events (a
  bounded queue, taken first) and the turns' events and audio (a rendezvous, so each turn's
  events keep their order relative to its audio, and a cancelled turn hands over nothing
  more). A client that stops reading is cut off after ``send_timeout_s``; the reader does not
  wait behind it (barge-in cancels the turn synchronously, before anything is emitted).

Under server VAD a speculative turn waits for the silence window to confirm it; if the audio
stops arriving inside the pause, the rest of the window is counted by the wall clock (the
machine's :meth:`~voiceorch.session.turn_taking.TurnTaking.deadline`) and the turn is confirmed
then. Unconfirmed turns are not activity for the idle timeout.

The session ends when the client goes; cancelling :meth:`Session.run` ends it at once.
"""

from __future__ import annotations

import logging
import uuid
import weakref
from collections.abc import Awaitable, Callable
from functools import partial

import attrs
import trio

from .. import metrics
from .. import protocol as p
from ..engines import vad_batch
from ..engines.base import EngineError, Engines
from ..logs import log_event, session_id_var, turn_id_var
from ..protocol import CLOSE_GOING_AWAY, CLOSE_INTERNAL_ERROR, CLOSE_NORMAL, CLOSE_POLICY
from . import turn_taking as tt
from .history import Conversation
from .input_pace import InputPace, Pace
from .outbox import Outbox
from .settings import SessionSettings
from .tool_calls import ToolOffer, client_specs
from .transport import Message, MessageTransport, TransportReply
from .turn import Turn, run_turn

log = logging.getLogger(__name__)


@attrs.define
class _PieceJob:
    """The transcription of one piece of the speech in progress."""

    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    done: trio.Event = attrs.field(factory=trio.Event)
    text: str | None = None  # None: failed, cancelled, or not yet done


class Session:
    def __init__(
        self,
        transport: MessageTransport,
        engines: Engines,
        settings: SessionSettings = SessionSettings(),
        *,
        session_id: str | None = None,
    ) -> None:
        self.session_id = session_id or f"sess_{uuid.uuid4().hex[:16]}"
        self.transport = transport
        self.engines = engines
        self.settings = settings
        self.config = p.SessionConfig(instructions=settings.instructions, turn_detection=settings.turn_detection)
        self.conversation = Conversation(
            instructions=settings.instructions,
            max_messages=settings.history_max_messages,
            max_chars=settings.history_max_chars,
        )
        self._pace = (
            None
            if settings.max_audio_ahead_ms is None
            else InputPace(settings.max_audio_ahead_ms, speed=settings.max_audio_speed)
        )
        # Every decision about the user's turns (speech, speculation, barge-in, carried audio).
        self._turns = tt.TurnTaking(
            engines.vad.new_stream,
            turn_detection=self.config.turn_detection,
            speculate_after_ms=settings.speculate_after_ms,
            max_input_audio_ms=settings.max_input_audio_ms,
            max_pending_turns=settings.max_pending_turns,
            end_of_turn_model=engines.end_of_turn is not None,
            text_end_of_turn_model=engines.text_end_of_turn is not None,
            transcribe_pieces=settings.transcribe_pieces,
        )
        self._piece_jobs: weakref.WeakKeyDictionary[tt.Piece, _PieceJob] = weakref.WeakKeyDictionary()
        # Inputs for the machine from other tasks (a verdict, a speculation's words), given to it
        # by the reader, which is woken for them: only the reader talks to the machine, so its
        # decisions are carried out in the order it made them.
        self._told: list[Callable[[float], list[tt.Action]]] = []
        self._receiving: trio.CancelScope | None = None  # the reader's wait for the client
        self._unfinished: list[Turn] = []  # queued or in progress, oldest first
        self._turn_of: dict[tt.Response, Turn] = {}
        self._overlap_stt: trio.CancelScope | None = None  # transcribing speech over paused responses
        self._response_of: dict[Turn, tt.Response] = {}
        self._last_turn: Turn | None = None  # the last turn answered
        self._turns_send, self._turns_recv = trio.open_memory_channel[Turn](settings.max_pending_turns)
        # Items: protocol events, audio (bytes), TransportReply, and trio.Event markers, which the
        # writer sets when it gets there (see wait_responses_done).
        self._outbox = Outbox()
        # Until the session ends for a reason of its own, an end means the server is going.
        self._close = (CLOSE_GOING_AWAY, "server shutting down")
        self._quiet_since = trio.current_time()  # last client message or end of a response
        self._ended = trio.Event()  # run() has finished: nothing will be answered any more
        self._scope = trio.CancelScope()  # the whole session's: see end()
        self._draining = False  # the server is shutting down: no new responses
        self._turn_ended = trio.Event()  # set (and replaced) each time a turn ends

    async def run(self) -> None:
        """Serve the client until it goes away, then close the transport.

        Client mistakes and engine failures are answered with ``error`` events and never end
        the session. Cancellation ends it at once (the transport is still closed, shielded and
        bounded).
        """
        token = session_id_var.set(self.session_id)
        log_event(log, "session.start")
        metrics.SESSIONS_TOTAL.inc()
        metrics.SESSIONS_ACTIVE.inc()
        try:
            with self._scope:
                await self._serve()
        except Exception:
            self._close = (CLOSE_INTERNAL_ERROR, "internal error")
            raise
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                await self.transport.close(*self._close)
            self._ended.set()
            self._unfinished.clear()  # queued turns will never be answered now
            self._turn_ended.set()
            log_event(log, "session.end", turns=self._turns.turns_started)
            metrics.SESSIONS_ACTIVE.dec()
            session_id_var.reset(token)

    async def _serve(self) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._write)
            await self._emit(p.SessionCreated(session_id=self.session_id, audio=p.AUDIO_FORMAT, session=self.config))
            nursery.start_soon(self._respond)
            with trio.move_on_after(self.settings.max_session_s) as limit:
                await self._read()
            if limit.cancelled_caught:
                log_event(log, "session.max_duration", max_session_s=self.settings.max_session_s)
                self._close = (CLOSE_POLICY, f"maximum session duration ({self.settings.max_session_s:g} s) reached")
            nursery.cancel_scope.cancel()

    # --- graceful shutdown -------------------------------------------------------------------

    def stop_new_turns(self) -> None:
        """The server is shutting down: responses in progress go on, but no new one starts
        (a turn ending now gets an ``error`` ``server_shutting_down``). Not a checkpoint."""
        self._draining = True
        for response in self._turns.stop_new_turns():  # (only cancels: no await needed)
            if isinstance(response, tt.CancelResponse):
                self._turn_of[response.response].cancel()

    def end(self, code: int, reason: str) -> None:
        """End the session now, closing the connection with ``code`` and ``reason`` (a response
        in progress is cut off). :meth:`run` returns once the close is done. Not a checkpoint."""
        self._close = (code, reason)
        self._scope.cancel()

    async def wait_responses_done(self) -> None:
        """Return once no response is queued or in progress and all they sent has been written
        to the transport (at once if there is none, or the session has ended, whatever was
        still queued). Cancellable; it changes nothing."""
        while self._unfinished and not self._ended.is_set():
            await self._turn_ended.wait()
        if self._ended.is_set():
            await trio.lowlevel.checkpoint()
            return
        written = trio.Event()  # the writer takes it only after writing all that came before
        try:
            await self._outbox.send_control(written)
        except trio.BrokenResourceError:
            return  # the writer is gone: nothing more will be written
        await written.wait()  # (the writer sets it even if it ends before writing it)

    # --- the three tasks ------------------------------------------------------------------

    async def _read(self) -> None:
        """Until the client goes, or sends nothing for ``idle_timeout_s`` while no confirmed
        response is in progress (then the session closes with 1000 "idle timeout"). In between
        frames, the turn-taking machine is told of time passing at its deadline (a pause whose
        audio stopped arriving)."""
        while True:
            while self._told:
                await self._act(self._told.pop(0)(trio.current_time()))
            idle_at = self._quiet_since + self.settings.idle_timeout_s
            decide_at = self._turns.deadline()
            with trio.move_on_at(idle_at if decide_at is None else min(idle_at, decide_at)) as waited:
                self._receiving = waited
                try:
                    message = await self.transport.receive()
                except trio.EndOfChannel:
                    self._close = (CLOSE_NORMAL, "")
                    return
                finally:
                    self._receiving = None
            if waited.cancelled_caught:
                if self._told:
                    continue
                decide_at = self._turns.deadline()
                if decide_at is not None and trio.current_time() >= decide_at:
                    await self._act(self._turns.tick(trio.current_time()))
                    continue
                if any(turn.confirmed.is_set() for turn in self._unfinished):
                    self._quiet_since = trio.current_time()  # a reply is playing: not idle
                if trio.current_time() < self._quiet_since + self.settings.idle_timeout_s:
                    continue
                log_event(log, "session.idle_timeout", idle_timeout_s=self.settings.idle_timeout_s)
                self._close = (CLOSE_NORMAL, "idle timeout")
                return
            self._quiet_since = trio.current_time()
            await self._on_message(message)

    async def _on_message(self, message: Message | TransportReply) -> None:
        if isinstance(message, TransportReply):
            await self._outbox.send_control(message)  # the transport's own answer, via the writer
        elif isinstance(message, bytes):
            # Audio frames the transport has already read are taken in at once: a reader that
            # fell behind (a burst of work) catches up in one speech-detection call, not one per chunk.
            frames, following = [message], None
            while (waiting := self._receive_ready()) is not None:
                if not isinstance(waiting, bytes):
                    following = waiting
                    break
                frames.append(waiting)
            await self._on_audio(frames)
            if following is not None:
                await self._on_message(following)
        else:
            await self._on_control(message)

    def _receive_ready(self) -> Message | TransportReply | None:
        """A message the transport has already received, if it can tell (``receive_ready``), else None."""
        ready = getattr(self.transport, "receive_ready", None)
        return None if ready is None else ready()

    async def _respond(self) -> None:
        async for turn in self._turns_recv:
            response = self._response_of[turn]
            self._turns.response_started(response)
            token = turn_id_var.set(turn.turn_id)
            try:
                done = await run_turn(
                    turn,
                    engines=self.engines,
                    conversation=self.conversation,
                    outbox=self._outbox,
                    settings=self.settings,
                    tools=self._tool_offer(),
                )
                if done is not None:  # (None: a dropped speculation, unknown to the client)
                    self._last_turn = turn
                    if turn.reported_played_ms is not None and turn.scope.cancelled_caught:
                        # A report that came while the response was ending counts too.
                        self.conversation.revise_reply(turn.turn_id, turn.tail_heard_text(turn.reported_played_ms))
            finally:
                self._unfinished.remove(turn)
                self._turns.response_ended(response)
                del self._turn_of[response], self._response_of[turn]
                self._quiet_since = trio.current_time()
                self._turn_ended.set()
                self._turn_ended = trio.Event()
                turn_id_var.reset(token)

    async def _write(self) -> None:
        try:
            while True:
                item = await self._outbox.receive()
                if isinstance(item, trio.Event):
                    item.set()  # all that came before it has been written
                    continue
                data = item if isinstance(item, (bytes, TransportReply)) else p.encode(item)
                try:
                    with trio.fail_after(self.settings.send_timeout_s):
                        await self.transport.send(data)
                except trio.BrokenResourceError:
                    log_event(log, "session.client_gone")
                    self._nursery.cancel_scope.cancel()
                    return
                except trio.TooSlowError:
                    log_event(log, "session.send_timeout", logging.WARNING, timeout_s=self.settings.send_timeout_s)
                    self._close = (CLOSE_POLICY, "send timeout: the client stopped reading")
                    self._nursery.cancel_scope.cancel()
                    return
        finally:
            # Closed when the writer ends, so no one waits on it in vain; drain markers too.
            for item in self._outbox.close():
                if isinstance(item, trio.Event):
                    item.set()

    # --- what the reader does ---------------------------------------------------------------

    async def _emit(self, event: p.ServerEvent) -> None:
        """Queue a control event for the writer, ahead of reply audio (waits only while the
        control lane is full: a client that stopped reading, soon cut off by the send timeout)."""
        await self._outbox.send_control(event)

    async def _error(self, code: str, message: str) -> None:
        log_event(log, "client.error", logging.INFO, code=code, message=message)
        metrics.ERRORS.labels(code=code).inc()
        await self._emit(p.Error(code=code, message=message))

    async def _on_audio(self, frames: list[bytes]) -> None:
        """Audio frames received in this order: each is checked and paced on its own, and those
        taken are given to the turn-taking machine together (as one longer frame)."""
        taken = []
        for data in frames:
            try:
                p.check_audio_frame(data)
            except p.ProtocolError as exc:
                await self._error(exc.code, exc.message)
                continue
            if self._pace is not None:
                pace = self._pace.admit(trio.current_time(), p.audio_ms(len(data)))
                if pace is Pace.DROPPING:
                    bound, speed = self.settings.max_audio_ahead_ms, self.settings.max_audio_speed
                    pace_of = "real time" if speed == 1 else f"{speed:g} times real time"
                    await self._error(
                        "input_audio_too_fast",
                        f"audio ran more than {bound} ms ahead of {pace_of}; frames are dropped "
                        f"until it is back within {bound // 2} ms",
                    )
                if pace is not Pace.ACCEPTED:
                    continue
            taken.append(data)
        if not taken:
            return
        data = taken[0] if len(taken) == 1 else b"".join(taken)
        metrics.AUDIO_IN_SECONDS.inc(len(data) / p.BYTES_PER_MS / 1000)
        await self._act(self._turns.audio(data, trio.current_time()))

    async def _act(self, actions: list[tt.Action]) -> None:
        """Carry out the turn-taking machine's decisions, in order. Barge-in, cancels and
        confirmations are synchronous: they happen before anything later is emitted."""
        for action in actions:
            match action:
                case tt.DetectSpeech(detector=detector, chunks=chunks):
                    # Judged off the event loop for a model that blocks (``vad_batch``).
                    probabilities = await vad_batch.probabilities(detector.stream, chunks)
                    await self._act(self._turns.vad(action, probabilities, trio.current_time()))
                case tt.Emit(event=event):
                    await self._emit(event)
                case tt.Fail(code=code, message=message):
                    await self._error(code, message)
                case tt.StartResponse(response=response):
                    self._start(response)
                case tt.Interrupt(response=response):
                    self._turn_of[response].cancel(interrupted=True)
                case tt.CancelResponse(response=response):
                    self._turn_of[response].cancel()
                case tt.ConfirmResponse(response=response):
                    self._turn_of[response].confirm()
                case tt.Judge():
                    self._nursery.start_soon(self._judge, action)
                case tt.ScoreWords():
                    self._nursery.start_soon(self._score_words, action)
                case tt.TranscribePiece(piece=piece):
                    job = self._piece_jobs[piece] = _PieceJob()
                    self._nursery.start_soon(self._transcribe_piece, piece, job)
                case tt.CancelPiece(piece=piece):
                    if (job := self._piece_jobs.get(piece)) is not None:
                        job.scope.cancel()
                case tt.Pause(response=response):
                    self._turn_of[response].pause()
                case tt.Resume(response=response, overlap=overlap, transcript=transcript):
                    self._turn_of[response].resume(overlap, transcript)
                case tt.Transcribe(ticket=ticket, audio=audio, deadline=deadline):
                    if self._overlap_stt is not None:
                        self._overlap_stt.cancel()  # (moot: the user spoke on)
                    self._overlap_stt = trio.CancelScope(deadline=deadline)
                    self._nursery.start_soon(self._transcribe_overlap, self._overlap_stt, ticket, audio)

    def _tell(self, event: Callable[[float], list[tt.Action]]) -> None:
        """Give the machine ``event`` (called with the time) from the reader, woken now. Not a checkpoint."""
        self._told.append(event)
        if self._receiving is not None:
            self._receiving.cancel()

    async def _transcribe_piece(self, piece: tt.Piece, job: _PieceJob) -> None:
        """Transcribe one piece of the speech in progress, after the pieces before it (their
        words are its prompt), and tell the machine. Cancelled (:class:`tt.CancelPiece`), it
        stops at once and frees the engine as soon as the engine's thread allows."""
        try:
            with job.scope:
                prompt = await self._words_of(piece.earlier)
                with trio.fail_after(self.settings.stt_timeout_s):
                    job.text = await self.engines.stt.transcribe(piece.audio, prompt=prompt or None)
        except (EngineError, trio.TooSlowError) as exc:
            log_event(log, "stt.piece_failed", logging.WARNING, reason=str(exc))
        finally:
            job.done.set()
        if job.scope.cancelled_caught:
            return
        text = job.text or ""
        self._tell(lambda now: self._turns.piece_transcribed(piece, text))

    async def _words_of(self, pieces: tuple[tt.Piece, ...]) -> str | None:
        """The words of ``pieces``, once all are transcribed (None if one failed or was dropped)."""
        words = []
        for piece in pieces:
            job = self._piece_jobs.get(piece)
            if job is None:
                return None
            await job.done.wait()
            if job.text is None:
                return None
            words.append(job.text)
        return " ".join(w for w in words if w)

    def _transcriber(self, response: tt.Response) -> Callable[[], Awaitable[str]] | None:
        """How the turn of ``response`` gets its words: its pieces' (transcribed while the user
        spoke), then its rest with them as the prompt; the whole audio if a piece failed."""
        if not response.pieces:
            return None
        stt = self.engines.stt

        async def transcribe() -> str:
            earlier = await self._words_of(response.pieces)
            if earlier is None:
                return await stt.transcribe(response.audio or b"")
            if not response.rest:
                return earlier
            rest = await stt.transcribe(response.rest, prompt=earlier or None)
            return " ".join(w for w in (earlier, rest) if w)

        return transcribe

    async def _judge(self, asked: tt.Judge) -> None:
        """Run the end-of-turn model (off the event loop) and tell the machine its verdict. A
        model that fails counts as "finished" (the turn ends as after a short silence)."""
        assert self.engines.end_of_turn is not None
        try:
            probability = await self.engines.end_of_turn.judge(asked.audio)
        except EngineError as exc:
            log_event(log, "end_of_turn.failed", logging.WARNING, code=exc.code, reason=exc.message)
            probability = 1.0
        self._tell(partial(self._turns.verdict, asked, probability))

    async def _score_words(self, asked: tt.ScoreWords) -> None:
        """Run the text end-of-turn model (off the event loop) and tell the machine its score. A
        model that fails gives no score (the words are judged by the rule alone)."""
        assert self.engines.text_end_of_turn is not None
        probability: float | None = None
        try:
            probability = await self.engines.text_end_of_turn.probability(asked.text)
        except EngineError as exc:
            log_event(log, "text_end_of_turn.failed", logging.WARNING, code=exc.code, reason=exc.message)
        self._tell(partial(self._turns.words_scored, asked, probability))

    async def _transcribe_overlap(self, scope: trio.CancelScope, ticket: int, audio: bytes) -> None:
        """Transcribe speech over paused responses for the turn-taking machine's verdict, by the
        decision's deadline (``scope``; at the deadline the machine decides without it)."""
        text: str | None = None
        started = trio.current_time()
        with scope:
            try:
                text = await self.engines.stt.transcribe(audio)
            except EngineError as exc:
                log_event(log, "overlap.stt_failed", logging.WARNING, code=exc.code)
        stt_ms = round((trio.current_time() - started) * 1000, 1)
        log_event(log, "overlap.transcript", ticket=ticket, audio_ms=p.audio_ms(len(audio)), stt_ms=stt_ms, text=text)
        if scope.cancelled_caught:
            return
        self._tell(partial(self._turns.overlap_transcript, ticket, text))

    def _start(self, response: tt.Response) -> None:
        """Queue the machine's ``response`` as a :class:`Turn` for the responder (the machine
        keeps within the queue's bound)."""
        if response.speculative:
            turn = Turn.speculative(response.turn_id, response.audio or b"", text=response.text)
        else:
            turn = Turn.ended(response.turn_id, audio=response.audio, text=response.text)
        turn.text_only = self.config.output_modalities == ("text",)
        turn.on_transcript = lambda text: self._tell(partial(self._turns.response_transcript, response, text))
        turn.on_transcribed = partial(self._turns.response_transcribed, response)
        turn.transcribe = self._transcriber(response)
        self._turns_send.send_nowait(turn)
        self._turn_of[response] = turn
        self._response_of[turn] = response
        self._unfinished.append(turn)

    async def _on_control(self, text: str) -> None:
        try:
            event = p.parse_client_event(text)
        except p.ProtocolError as exc:
            await self._error(exc.code, exc.message)
            return
        match event:
            case p.SessionUpdate(session=patch):
                try:
                    config = patch.apply(self.config)
                except ValueError as exc:
                    await self._error("invalid_event", f"invalid 'session.update' event: {exc}")
                    return
                taken = {tool.name for tool in config.tools} & self._server_tool_names()
                if taken:
                    await self._error(
                        "tool_name_taken",
                        f"'session.update' refused: the server has tools named {sorted(taken)} already",
                    )
                    return
                self.config = config
                self.conversation.instructions = self.config.instructions
                await self._act(self._turns.configure(self.config.turn_detection))
                await self._emit(p.SessionUpdated(session=self.config))
            case p.InputAudioCommit():
                await self._act(self._turns.commit())
            case p.InputAudioClear():
                await self._act(self._turns.clear())
            case p.InputText(text=text):
                await self._act(self._turns.text(text))
            case p.ResponseCancel():
                await self._act(self._turns.cancel_response())
            case p.PlaybackPosition(turn_id=turn_id, played_ms=played_ms):
                self._on_playback_position(turn_id, played_ms)
            case p.ToolCallOutput(call_id=call_id, output=output):
                await self._on_tool_call_output(call_id, output)
            case p.HistoryAdd(role=role, text=text):
                if not text.strip():
                    await self._error("invalid_event", "history.add needs some text")
                    return
                self.conversation.add_message(role, text.strip())

    async def _on_tool_call_output(self, call_id: str, output: str) -> None:
        """The client's result of a call: to the turn that waits for it, or, if its response
        has ended, into the history as a late result; else ``unknown_tool_call``."""
        if any(turn.ledger.deliver(call_id, output) for turn in self._unfinished):
            return
        if self.conversation.record_late_result(call_id, output):
            log_event(log, "tool.late_result", call_id=call_id)
            return
        await self._error("unknown_tool_call", f"no tool call {call_id!r} is waiting for an output")

    def _server_tool_names(self) -> set[str]:
        return {spec.name for spec in self.engines.tools.specs()} if self.engines.tools is not None else set()

    def _tool_offer(self) -> ToolOffer:
        """The tools of the next response: the client's (as the session has them now) and the server's."""
        server = self.engines.tools.specs() if self.engines.tools is not None else []
        return ToolOffer(
            specs=(*client_specs(self.config.tools), *server),
            choice=self.config.tool_choice,
            server_names=frozenset(spec.name for spec in server),
            client_tools=bool(self.config.tools),
        )

    def _on_playback_position(self, turn_id: str, played_ms: float) -> None:
        """The client's own playback position wins over the server's estimate."""
        for turn in self._unfinished:
            if turn.turn_id == turn_id:
                turn.reported_played_ms = played_ms  # used if the response ends interrupted
                return
        turn = self._last_turn  # whatever its status: a completed reply may not have been all heard
        if turn is not None and turn.turn_id == turn_id:
            self.conversation.revise_reply(turn_id, turn.tail_heard_text(played_ms))
