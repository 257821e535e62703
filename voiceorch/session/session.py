"""One client connection's session: a nursery of a reader, a responder and a writer.

- The **reader** drains the client promptly (it never waits on a model): audio frames go into
  the bounded input buffer and, under server VAD, through the speech detector; control events
  are handled at once. When the user's turn ends (silence after speech, or a commit) it makes
  a :class:`~voiceorch.session.turn.Turn` and queues it for the responder, cancelling the
  response in progress (the newer turn supersedes it). Speech while a response is in progress
  interrupts that response at once (barge-in).
- The **responder** answers queued turns one at a time with :func:`run_turn`, each inside the
  turn's own cancel scope (there live the STT, LLM, TTS and audio-sender tasks).
- The **writer** owns the sending side of the transport. It takes from an
  :class:`~voiceorch.session.outbox.Outbox` of two lanes: the reader's control events (a
  bounded queue, taken first) and the turns' events and audio (a rendezvous, so each turn's
  events keep their order relative to its audio, and a cancelled turn hands over nothing
  more). A client that stops reading is cut off after ``send_timeout_s``; the reader does not
  wait behind it (barge-in cancels the turn synchronously, before anything is emitted).

Under server VAD a speculative turn waits for the silence window to confirm it; if the audio
stops arriving inside the pause, the rest of the window is counted by the wall clock (as if
the missing audio were silence) and the turn is confirmed then. Unconfirmed turns are not
activity for the idle timeout.

The session ends when the client goes; cancelling :meth:`Session.run` ends it at once.
"""

from __future__ import annotations

import logging
import uuid

import trio

from .. import metrics
from .. import protocol as p
from ..engines import vad_batch
from ..engines.base import Engines
from ..logs import log_event, session_id_var, turn_id_var
from ..protocol import CLOSE_GOING_AWAY, CLOSE_INTERNAL_ERROR, CLOSE_NORMAL, CLOSE_POLICY
from .history import Conversation
from .input_pace import InputPace, Pace
from .outbox import Outbox
from .settings import SessionSettings
from .speech_detector import CHUNK_MS, PauseStarted, SpeechDetector, SpeechResumed, SpeechStarted, SpeechStopped
from .transport import MessageTransport, TransportReply
from .turn import Turn, run_turn

log = logging.getLogger(__name__)

#: A pending speculation is confirmed by the wall clock only after its silence window's rest plus
#: this long without audio: a real-time client's frames arrive every 20-40 ms, late by a little
#: under load, so a shorter gap is jitter, not a microphone that stopped (the bench saw turns end
#: 17 ms early without it).
AUDIO_STOPPED_MARGIN_S = 0.15


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
        self._input = bytearray()
        self._input_overflowed = False
        self._pace = (
            None
            if settings.max_audio_ahead_ms is None
            else InputPace(settings.max_audio_ahead_ms, speed=settings.max_audio_speed)
        )
        self._detector: SpeechDetector | None = None
        self._over_response = False  # the current utterance began over a response in progress
        self._speculative: Turn | None = None  # started in the current pause, not yet confirmed
        self._carried: list[Turn] = []  # interrupted turns whose audio may belong to the next
        self._configure_detector()
        self._turn_count = 0
        self._unfinished: list[Turn] = []  # queued or in progress, oldest first
        self._last_turn: Turn | None = None  # the last turn answered
        self._turns_send, self._turns_recv = trio.open_memory_channel[Turn](settings.max_pending_turns)
        # Items: protocol events, audio (bytes), TransportReply, and trio.Event markers, which the
        # writer sets when it gets there (see wait_responses_done).
        self._outbox = Outbox()
        # Until the session ends for a reason of its own, an end means the server is going.
        self._close = (CLOSE_GOING_AWAY, "server shutting down")
        self._quiet_since = trio.current_time()  # last client message or end of a response
        self._audio_at = trio.current_time()  # when the last audio frame was taken in
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
            log_event(log, "session.end", turns=self._turn_count)
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
        self._drop_speculation()

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
        response is in progress (then the session closes with 1000 "idle timeout"). A pending
        speculation is confirmed when the audio stops arriving inside its pause
        (:meth:`_speculation_deadline`)."""
        while True:
            idle_at = self._quiet_since + self.settings.idle_timeout_s
            confirm_at = self._speculation_deadline()
            with trio.move_on_at(idle_at if confirm_at is None else min(idle_at, confirm_at)) as waited:
                try:
                    message = await self.transport.receive()
                except trio.EndOfChannel:
                    self._close = (CLOSE_NORMAL, "")
                    return
            if waited.cancelled_caught:
                confirm_at = self._speculation_deadline()
                if confirm_at is not None and trio.current_time() >= confirm_at:
                    await self._on_audio_stopped()
                    continue
                if any(turn.confirmed.is_set() for turn in self._unfinished):
                    self._quiet_since = trio.current_time()  # a reply is playing: not idle
                if trio.current_time() < self._quiet_since + self.settings.idle_timeout_s:
                    continue
                log_event(log, "session.idle_timeout", idle_timeout_s=self.settings.idle_timeout_s)
                self._close = (CLOSE_NORMAL, "idle timeout")
                return
            self._quiet_since = trio.current_time()
            if isinstance(message, TransportReply):
                await self._outbox.send_control(message)  # the transport's own answer, via the writer
            elif isinstance(message, bytes):
                await self._on_audio(message)
            else:
                await self._on_control(message)

    def _speculation_deadline(self) -> float | None:
        """When a pending speculation's silence window closes if no more audio comes: the last
        frame's arrival plus the rest of the window, plus :data:`AUDIO_STOPPED_MARGIN_S` so that
        only audio that really stopped counts, never the jitter of a client streaming in real
        time (None if no speculation is pending)."""
        turn, detector = self._speculative, self._detector
        if turn is None or turn.scope.cancel_called or detector is None or detector.quiet_ms is None:
            return None
        return self._audio_at + max(0.0, detector.silence_ms - detector.quiet_ms) / 1000 + AUDIO_STOPPED_MARGIN_S

    async def _on_audio_stopped(self) -> None:
        """The audio stopped inside a pause and the silence window has passed by the wall
        clock: the user's turn has ended (as a file ending in a short silence expects)."""
        assert self._detector is not None
        decision = self._detector.assume_silence()
        if decision is not None:
            log_event(log, "speech.audio_stopped", audio_ms=decision.audio_ms)
            await self._on_decision(self._detector, decision)

    async def _respond(self) -> None:
        async for turn in self._turns_recv:
            token = turn_id_var.set(turn.turn_id)
            try:
                done = await run_turn(
                    turn,
                    engines=self.engines,
                    conversation=self.conversation,
                    outbox=self._outbox,
                    settings=self.settings,
                )
                if done is not None:  # (None: a dropped speculation, unknown to the client)
                    self._last_turn = turn
                    if turn.reported_played_ms is not None and turn.scope.cancelled_caught:
                        # A report that came while the response was ending counts too.
                        self.conversation.revise_reply(turn.turn_id, turn.heard_text(turn.reported_played_ms))
            finally:
                self._unfinished.remove(turn)
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

    async def _on_audio(self, data: bytes) -> None:
        try:
            p.check_audio_frame(data)
        except p.ProtocolError as exc:
            await self._error(exc.code, exc.message)
            return
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
                return
        metrics.AUDIO_IN_SECONDS.inc(len(data) / p.BYTES_PER_MS / 1000)
        limit = self.settings.max_input_audio_ms * p.BYTES_PER_MS
        if self._input_overflowed or len(self._input) + len(data) > limit:
            if not self._input_overflowed:
                self._input_overflowed = True
                await self._error(
                    "input_audio_buffer_full",
                    f"a turn holds at most {self.settings.max_input_audio_ms} ms of audio; "
                    "further audio is dropped until the turn ends or input_audio.clear",
                )
        else:
            self._input += data
        self._audio_at = trio.current_time()
        if self._detector is not None:  # it hears everything, so silence still ends the turn
            await self._detect_speech(self._detector, data)

    async def _detect_speech(self, detector: SpeechDetector, data: bytes) -> None:
        """Judge ``data`` (off the event loop for a model that blocks: ``vad_batch``), then act:
        a barge-in first, synchronously, then the events of the decisions, in order."""
        vad = self.config.turn_detection
        probabilities = await vad_batch.probabilities(detector.stream, detector.chunks(data))
        if detector is not self._detector:
            return  # turned off or reset (input_audio.clear) meanwhile: this audio was before it
        decisions = [d for d in map(detector.feed_probability, probabilities) if d is not None]
        barge_in = detector.in_speech and vad.interrupt_response and detector.speech_ms >= vad.interrupt_min_speech_ms
        if barge_in:
            self._interrupt()
        for decision in decisions:
            await self._on_decision(detector, decision)
        if barge_in:
            self._over_response = False
        elif not detector.in_speech:
            # Outside speech keep only what a speech start could still need as its prefix.
            keep_ms = vad.prefix_padding_ms + vad.min_speech_duration_ms + 2 * CHUNK_MS
            del self._input[: max(0, len(self._input) - int(keep_ms) * p.BYTES_PER_MS)]

    async def _on_decision(self, detector: SpeechDetector, decision) -> None:
        vad = self.config.turn_detection
        match decision:
            case SpeechStarted(audio_ms=at):
                # Keep the prefix padding before the speech, drop what came before it.
                keep_ms = vad.prefix_padding_ms + (detector.fed_ms - at)
                del self._input[: max(0, len(self._input) - int(keep_ms) * p.BYTES_PER_MS)]
                self._over_response = any(not turn.scope.cancel_called for turn in self._unfinished)
                await self._emit(p.SpeechStartedEvent(audio_ms=at))
            case PauseStarted() if not (self._over_response and vad.interrupt_response):
                await self._speculate()
            case SpeechResumed():
                self._drop_speculation()
            case SpeechStopped(audio_ms=at):
                await self._emit(p.SpeechStoppedEvent(audio_ms=at))
                if self._over_response and vad.interrupt_response:
                    # Speech over a response, too short to interrupt it (a cough, an
                    # "uh-huh"): not a turn of its own.
                    log_event(log, "speech.ignored", audio_ms=p.audio_ms(len(self._input)))
                    self._clear_input()
                else:
                    # Without interrupt_response, speech over a response queues behind it.
                    await self._commit(supersede=not self._over_response)

    def _interrupt(self) -> None:
        """Barge-in: the user speaks over the responses in progress. Not a checkpoint.

        A spoken turn interrupted before its words were transcribed is not lost: its audio
        goes in front of the next turn's (the user paused, then went on)."""
        for turn in self._unfinished:
            if turn.confirmed.is_set() and not turn.scope.cancel_called:
                turn.cancel(interrupted=True)
                if turn.audio:
                    self._carried.append(turn)

    def _turn_audio(self) -> bytes:
        """The audio of the turn now ending: any carried over, then the input buffer."""
        carried = b"".join(turn.audio for turn in self._carried if not turn.transcribed)
        return carried + self._input

    async def _speculate(self) -> None:
        """A pause began: start answering the audio so far, output held back until the turn
        really ends (or dropped if the user speaks on)."""
        busy = self._turns_send.statistics().current_buffer_used >= self.settings.max_pending_turns
        if self.settings.speculate_after_ms is None or not self._input or busy or self._draining:
            return
        self._turn_count += 1
        turn = Turn.speculative(f"turn_{self._turn_count}", self._turn_audio())
        await self._start(turn, supersede=False)
        if turn in self._unfinished:
            self._speculative = turn

    def _drop_speculation(self) -> None:
        """The user spoke on: the speculative turn never happened. Not a checkpoint."""
        if self._speculative is not None:
            self._speculative.cancel()
            if self._speculative.turn_id == f"turn_{self._turn_count}":
                self._turn_count -= 1  # the client never saw this id
            self._speculative = None

    def _configure_detector(self) -> None:
        vad = self.config.turn_detection
        if vad.type == "none":
            self._drop_speculation()
            self._detector = None
            return
        if self._detector is None:
            self._detector = SpeechDetector(self.engines.vad.new_stream())
        self._detector.threshold = vad.threshold
        self._detector.min_speech_ms = vad.min_speech_duration_ms
        self._detector.silence_ms = vad.silence_duration_ms
        self._detector.pause_ms = self.settings.speculate_after_ms

    async def _on_control(self, text: str) -> None:
        try:
            event = p.parse_client_event(text)
        except p.ProtocolError as exc:
            await self._error(exc.code, exc.message)
            return
        match event:
            case p.SessionUpdate(session=patch):
                self.config = patch.apply(self.config)
                self.conversation.instructions = self.config.instructions
                self._configure_detector()
                await self._emit(p.SessionUpdated(session=self.config))
            case p.InputAudioCommit():
                if not self._input:
                    await self._error("input_audio_buffer_empty", "there is no audio to commit")
                    return
                await self._commit()
            case p.InputAudioClear():
                cleared_ms = p.audio_ms(len(self._input))
                self._drop_speculation()
                self._clear_input()
                if self._detector is not None:
                    self._detector = None
                    self._configure_detector()  # forget any speech in progress
                await self._emit(p.InputAudioCleared(audio_ms=cleared_ms))
            case p.InputText(text=text):
                if not text.strip():
                    await self._error("invalid_event", "input_text needs some text")
                    return
                if self._turns_send.statistics().current_buffer_used >= self.settings.max_pending_turns:
                    await self._error("busy", "too many turns are waiting; send this one again later")
                    return
                await self._start(self._new_turn(text=text.strip()))
            case p.ResponseCancel():
                self._drop_speculation()
                if not any(turn.confirmed.is_set() and not turn.scope.cancel_called for turn in self._unfinished):
                    await self._error("no_active_response", "there is no response to cancel")
                for turn in self._unfinished:
                    turn.cancel()
            case p.PlaybackPosition(turn_id=turn_id, played_ms=played_ms):
                self._on_playback_position(turn_id, played_ms)

    def _on_playback_position(self, turn_id: str, played_ms: float) -> None:
        """The client's own playback position wins over the server's estimate."""
        for turn in self._unfinished:
            if turn.turn_id == turn_id:
                turn.reported_played_ms = played_ms  # used if the response ends interrupted
                return
        turn = self._last_turn  # whatever its status: a completed reply may not have been all heard
        if turn is not None and turn.turn_id == turn_id:
            self.conversation.revise_reply(turn_id, turn.heard_text(played_ms))

    async def _commit(self, *, supersede: bool = True) -> None:
        """End the user's turn: ``input_audio.committed``, then its response (a speculation's
        output released, or a new turn queued). While the server is shutting down the turn is
        refused with ``server_shutting_down`` before anything is acknowledged."""
        if self._draining:
            self._drop_speculation()
            self._clear_input()
            await self._error("server_shutting_down", "the server is shutting down; no new response starts")
            return
        turn, self._speculative = self._speculative, None
        if turn is not None and turn.scope.cancel_called:
            turn = None
        if turn is not None:  # the work began in the pause: the turn it answers has ended now
            committed_ms = p.audio_ms(len(turn.audio))
            self._clear_input()
            await self._emit(p.InputAudioCommitted(turn_id=turn.turn_id, audio_ms=committed_ms))
            if supersede:
                for earlier in self._unfinished:
                    if earlier is not turn:
                        earlier.cancel()
            turn.confirm()
            return
        if self._turns_send.statistics().current_buffer_used >= self.settings.max_pending_turns:
            await self._error("busy", "too many turns are waiting; commit again later")
            return
        audio = self._turn_audio()
        if not audio:
            return
        turn = self._new_turn(audio=audio)
        committed_ms = p.audio_ms(len(audio))
        self._clear_input()
        await self._emit(p.InputAudioCommitted(turn_id=turn.turn_id, audio_ms=committed_ms))
        await self._start(turn, supersede=supersede)

    def _clear_input(self) -> None:
        self._input.clear()
        self._input_overflowed = False
        self._carried.clear()

    def _new_turn(self, *, audio: bytes | None = None, text: str | None = None) -> Turn:
        self._drop_speculation()
        self._turn_count += 1
        return Turn.ended(f"turn_{self._turn_count}", audio=audio, text=text)

    async def _start(self, turn: Turn, *, supersede: bool = True) -> None:
        """Queue ``turn``; unless told otherwise, the response in progress and any queued turn
        are cancelled first (the newer turn supersedes them)."""
        if self._draining:
            await self._error("server_shutting_down", "the server is shutting down; no new response starts")
            return
        try:
            self._turns_send.send_nowait(turn)
        except trio.WouldBlock:
            await self._error("busy", "too many turns are waiting; send this one again later")
            return
        if supersede:
            for earlier in self._unfinished:
                earlier.cancel()
        self._unfinished.append(turn)
