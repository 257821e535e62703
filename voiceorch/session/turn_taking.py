"""Turn-taking: who speaks when, as one sans-I/O state machine (events in, decisions out, no awaits).

:class:`TurnTaking` holds everything the session decides about the user's turns: the input audio
buffer, the speech detector's decisions, the speculative response started in a pause, barge-in,
the audio of interrupted turns carried into the next one, and the wall-clock end of a pause whose
audio stopped arriving. The session feeds it events and carries out the decisions it returns, in
order:

- events in: :meth:`~TurnTaking.audio` (a frame taken in), :meth:`~TurnTaking.vad` (the speech
  probabilities of the chunks it asked about), :meth:`~TurnTaking.tick` (time passing; call it at
  :meth:`~TurnTaking.deadline`), the client's controls (:meth:`~TurnTaking.commit`,
  :meth:`~TurnTaking.clear`, :meth:`~TurnTaking.text`, :meth:`~TurnTaking.cancel_response`,
  :meth:`~TurnTaking.configure`), and the responses' progress (:meth:`~TurnTaking.response_started`,
  :meth:`~TurnTaking.response_transcribed`, :meth:`~TurnTaking.response_ended`);
- decisions out: :class:`DetectSpeech` (judge these chunks, then call ``vad``), :class:`Emit` (an
  event for the client), :class:`Fail` (an ``error`` event), :class:`StartResponse`,
  :class:`Interrupt` (barge-in), :class:`CancelResponse`, :class:`ConfirmResponse`, and under
  ``interruption`` ``pause_and_decide``: :class:`Pause` (speech over a response: stop its audio),
  :class:`Transcribe` (the speech so far, then call :meth:`~TurnTaking.overlap_transcript`) and
  :class:`Resume` (it was no interruption: go on); under ``semantic_vad``: :class:`Judge` (the
  audio end-of-turn model, then :meth:`~TurnTaking.verdict`) and :class:`ScoreWords` (the text
  end-of-turn model on the speculation's transcript, then :meth:`~TurnTaking.words_scored`).

**Pause and decide.** Speech over a response pauses it (where ``immediate`` interrupts it); the
speech is then judged (:mod:`.overlap`) from its transcript at each of its pauses: real words
interrupt the response and become the user's next turn (with that transcript), noise or a
backchannel resumes it and is no turn at all. The verdict comes by ``interrupt_decision_ms``
after the pause: without a transcript by then, the response is interrupted.


Times are plain numbers of seconds (the session passes ``trio.current_time()``), so the machine
is tested alone with scripted probabilities and a clock value. Nothing here blocks or awaits.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import attrs

from .. import protocol as p
from ..engines.base import VoiceActivityStream
from ..logs import log_event
from .end_of_turn_policy import SemanticPolicy, transcript_unfinished
from .overlap import OverlapDecision, Verdict
from .speech_detector import (
    CHUNK_MS,
    Decision,
    PauseStarted,
    SpeechDetector,
    SpeechResumed,
    SpeechStarted,
    SpeechStopped,
)

log = logging.getLogger(__name__)

#: A pending speculation is confirmed by the wall clock only after its silence window's rest plus
#: this long without audio: a real-time client's frames arrive every 20-40 ms, late by a little
#: under load, so a shorter gap is jitter, not a microphone that stopped (the bench saw turns end
#: 17 ms early without it).
AUDIO_STOPPED_MARGIN_S = 0.15


@attrs.define(eq=False)
class Response:
    """The machine's record of one response (queued, in progress, or speculative)."""

    turn_id: str
    audio: bytes | None = None
    text: str | None = None
    #: Started in a pause, not yet confirmed as a turn of its own.
    speculative: bool = False
    cancelled: bool = False
    #: The user's words reached the client (then its audio is never carried into another turn).
    transcribed: bool = False
    #: Waiting in the session's queue (not yet taken by the responder).
    queued: bool = True
    #: Pieces of the utterance already being transcribed, then the audio after them (``rest``,
    #: empty when no speech follows the last cut). No pieces: transcribe ``audio``.
    pieces: tuple[Piece, ...] = ()
    rest: bytes = b""
    #: Its audio is paused while speech over it is judged.
    paused: bool = False


@attrs.define(eq=False)
class _Overlap:
    """Speech over paused responses, from the pause to the verdict."""

    decision: OverlapDecision
    responses: list[Response]
    speech_stopped: bool = False  # the speech ended: its audio is held for the verdict
    speech_ms: float = 0.0  # its voiced length so far (all its utterances)
    _base_ms: float = 0.0  # the voiced length of its utterances before the current one

    def heard(self, detector: SpeechDetector) -> None:
        """Note the voiced length of the speech so far."""
        if detector.in_speech:
            self.speech_ms = max(self.speech_ms, self._base_ms + detector.speech_ms)

    def speech_again(self) -> None:
        """A new utterance of the same speech begins (before the verdict)."""
        self._base_ms = self.speech_ms
        self.speech_stopped = False


@attrs.define(eq=False)
class Piece:
    """A stretch of the utterance in progress, cut at one of the speaker's pauses, to be
    transcribed while they speak on (``earlier``: the utterance's pieces before it, whose words
    are its prompt)."""

    audio: bytes
    earlier: tuple[Piece, ...] = ()
    text: str | None = None


# --- decisions out ----------------------------------------------------------------------------


@attrs.frozen
class DetectSpeech:
    """Judge ``chunks`` (32 ms each) with ``detector.stream`` and give the probabilities to :meth:`TurnTaking.vad`."""

    detector: SpeechDetector
    chunks: list[bytes]


@attrs.frozen
class Emit:
    event: p.ServerEvent


@attrs.frozen
class Fail:
    """Tell the client of its mistake (an ``error`` event); nothing else changes."""

    code: str
    message: str


@attrs.frozen
class StartResponse:
    """Queue ``response`` for the responder (speculative: its output held until confirmed)."""

    response: Response


@attrs.frozen
class Interrupt:
    """Barge-in: the user speaks over ``response``, which ends as ``interrupted``."""

    response: Response


@attrs.frozen
class CancelResponse:
    """End ``response`` now (superseded, cancelled by the client, or a dropped speculation)."""

    response: Response


@attrs.frozen
class ConfirmResponse:
    """The speculative ``response``'s turn has really ended: release its output."""

    response: Response


@attrs.frozen(eq=False)
class Judge:
    """Ask the end-of-turn model whether the turn whose audio so far is ``audio`` (its silence
    included) is finished, off the event loop, and give the answer to :meth:`TurnTaking.verdict`.
    A verdict that comes after the pause ended is ignored."""

    audio: bytes
    #: The silence (ms) the audio ends with.
    silence_ms: float


@attrs.frozen(eq=False)
class ScoreWords:
    """Ask the text end-of-turn model whether ``text`` (the transcript of the turn so far) is a
    finished sentence, off the event loop, and give the answer to :meth:`TurnTaking.words_scored`
    (None: no score). A score that comes after the pause ended is ignored."""

    text: str


@attrs.frozen
class TranscribePiece:
    """Transcribe ``piece`` (after its earlier pieces, with their words as the prompt) and give
    the words to :meth:`TurnTaking.piece_transcribed`."""

    piece: Piece


@attrs.frozen
class CancelPiece:
    """No turn needs ``piece`` any more: stop transcribing it (it must not hold the engine)."""

    piece: Piece


@attrs.frozen
class Pause:
    """Speech over ``response``: stop its audio now (the speech is being judged)."""

    response: Response


@attrs.frozen
class Resume:
    """The speech over paused ``response`` was ``overlap`` (its ``transcript``): go on with it."""

    response: Response
    overlap: str
    transcript: str


@attrs.frozen
class Transcribe:
    """Transcribe ``audio`` (the speech over paused responses, so far) by ``deadline`` and give
    the text to :meth:`TurnTaking.overlap_transcript` with ``ticket`` (a later request makes this
    one moot: it may be cancelled)."""

    ticket: int
    audio: bytes
    deadline: float


Action = (
    DetectSpeech
    | Emit
    | Fail
    | StartResponse
    | Interrupt
    | CancelResponse
    | ConfirmResponse
    | Judge
    | ScoreWords
    | TranscribePiece
    | CancelPiece
    | Pause
    | Resume
    | Transcribe
)


@attrs.define
class _Pause:
    """What ``semantic_vad`` knows of the current pause."""

    judging: Judge | None = None  # asked, not answered yet
    probability: float | None = None
    judged_at_ms: float | None = None  # the silence the last verdict was judged at
    transcript: str | None = None  # the speculation's words (the audio up to the pause)
    scoring: ScoreWords | None = None  # the words' score asked, not answered yet
    text_probability: float | None = None  # the text model's score of the words
    until_ms: float | None = None  # the policy waits until this silence


@attrs.define
class TurnTaking:
    """The turn-taking decisions of one session (see the module's docstring)."""

    #: Makes the speech detector's voice-activity stream (a new one after ``input_audio.clear``).
    new_vad_stream: Callable[[], VoiceActivityStream]
    turn_detection: p.TurnDetection = p.TurnDetection()
    #: Under server VAD, start a speculative response once a pause has lasted this long (None: don't).
    speculate_after_ms: int | None = 160
    max_input_audio_ms: int = 60_000
    #: Responses that may wait in the session's queue.
    max_pending_turns: int = 4
    #: An end-of-turn model can judge (``Judge``); without one ``semantic_vad`` uses the transcript alone.
    end_of_turn_model: bool = False
    #: A text end-of-turn model can score the transcript (``ScoreWords``); without one the
    #: transcript rule alone judges the words.
    text_end_of_turn_model: bool = False
    #: Transcribe the utterance in pieces cut at the speaker's pauses, while they speak.
    transcribe_pieces: bool = False
    detector: SpeechDetector | None = None
    _pieces: list[Piece] = attrs.field(factory=list)  # of the utterance in progress
    _cut: int = 0  # where in the input buffer the last piece ends
    _voiced_after_cut: bool = False
    _deltas_sent: int = 0  # of the utterance's pieces
    _policy: SemanticPolicy | None = None  # under semantic_vad
    _pause: _Pause | None = None  # under semantic_vad, the pause in progress
    _input: bytearray = attrs.field(factory=bytearray)
    _overflowed: bool = False
    _over_response: bool = False  # the current utterance began over a response in progress
    _speculative: Response | None = None  # started in the current pause, not yet confirmed
    _carried: list[Response] = attrs.field(factory=list)  # interrupted turns whose audio may belong to the next
    _responses: list[Response] = attrs.field(factory=list)  # queued or in progress, oldest first
    _turn_count: int = 0
    _draining: bool = False
    _audio_at: float = 0.0  # when the last audio frame was taken in
    _overlap: _Overlap | None = None  # speech over paused responses, being judged
    _overlap_settled: bool = False  # the current speech was judged no interruption

    def __attrs_post_init__(self) -> None:
        self._configure_detector()

    # --- what the session asks ------------------------------------------------------------

    @property
    def input_bytes(self) -> int:
        """Audio held for the turn in progress (bytes)."""
        return len(self._input)

    @property
    def turns_started(self) -> int:
        return self._turn_count

    @property
    def responding(self) -> bool:
        """A confirmed response is queued or in progress (the session is not idle)."""
        return any(not r.speculative for r in self._responses)

    @property
    def judging(self) -> bool:
        """Speech over paused responses is being judged."""
        return self._overlap is not None

    def deadline(self) -> float | None:
        """When :meth:`tick` has something to decide if no audio comes before (None: nothing).

        A pending speculation's silence window closes at the last frame's arrival plus the rest of
        the window, plus :data:`AUDIO_STOPPED_MARGIN_S` so that only audio that really stopped
        counts, never the jitter of a client streaming in real time. Speech over paused responses
        is judged by its decision's deadline."""
        judged = None if self._overlap is None else self._overlap.decision.deadline
        turn = self._turn_deadline()
        return turn if judged is None else judged if turn is None else min(turn, judged)

    def _turn_deadline(self) -> float | None:
        spec, detector, pause = self._speculative, self.detector, self._pause
        if detector is None or detector.quiet_ms is None:
            return None
        if self._policy is not None:  # semantic_vad: the policy's next look, or its cap
            if pause is None:
                return None
            waiting = pause.until_ms is None or pause.judging is not None or self._transcript_coming()
            until_ms = self._policy.cap_ms if waiting else pause.until_ms
            return self._audio_at + max(0.0, until_ms - detector.quiet_ms) / 1000 + AUDIO_STOPPED_MARGIN_S
        if spec is None or spec.cancelled:
            return None
        return self._audio_at + max(0.0, detector.silence_ms - detector.quiet_ms) / 1000 + AUDIO_STOPPED_MARGIN_S

    # --- events in ------------------------------------------------------------------------

    def configure(self, turn_detection: p.TurnDetection) -> list[Action]:
        """The session's turn detection changed (``session.update``)."""
        self.turn_detection = turn_detection
        return self._configure_detector()

    def stop_new_turns(self) -> list[Action]:
        """The server is shutting down: no new response starts (a turn ending now is refused)."""
        self._draining = True
        return self._drop_speculation()

    def audio(self, data: bytes, now: float) -> list[Action]:
        """A valid frame of input audio was taken in at ``now``."""
        actions: list[Action] = []
        limit = self.max_input_audio_ms * p.BYTES_PER_MS
        if self._overflowed or len(self._input) + len(data) > limit:
            if not self._overflowed:
                self._overflowed = True
                actions.append(
                    Fail(
                        "input_audio_buffer_full",
                        f"a turn holds at most {self.max_input_audio_ms} ms of audio; "
                        "further audio is dropped until the turn ends or input_audio.clear",
                    )
                )
        else:
            self._input += data
        self._audio_at = now
        if self.detector is not None:  # it hears everything, so silence still ends the turn
            actions.append(DetectSpeech(self.detector, self.detector.chunks(data)))
        return actions

    def vad(self, asked: DetectSpeech, probabilities: list[float], now: float) -> list[Action]:
        """The speech probabilities of ``asked.chunks``: a barge-in first, then the decisions' actions, in order."""
        detector = self.detector
        if asked.detector is not detector or detector is None:
            return []  # turned off or reset (input_audio.clear) meanwhile: this audio was before it
        decisions = [d for d in map(detector.feed_probability, probabilities) if d is not None]
        vad = self.turn_detection
        barge_in = detector.in_speech and vad.interrupt_response and detector.speech_ms >= vad.interrupt_min_speech_ms
        immediate = vad.interruption == "immediate"
        actions = self._judge_by_deadline(now)
        if barge_in:
            actions += self._barge_in() if immediate else self._pause_responses(now)
        if self._overlap is not None:
            self._overlap.heard(detector)
        for decision in decisions:
            actions += self._on_decision(detector, decision, now)
        actions += self._decide_end(now)
        if barge_in and immediate:
            self._over_response = False
        elif not detector.in_speech and self._overlap is None:  # (speech being judged is held whole)
            if self._pieces:  # an utterance that made no turn (its end was refused)
                actions += self._drop_pieces()
                self._pieces, self._cut, self._voiced_after_cut, self._deltas_sent = [], 0, False, 0
            # Outside speech keep only what a speech start could still need as its prefix.
            keep_ms = vad.prefix_padding_ms + vad.min_speech_duration_ms + 2 * CHUNK_MS
            del self._input[: max(0, len(self._input) - int(keep_ms) * p.BYTES_PER_MS)]
        return actions

    def tick(self, now: float) -> list[Action]:
        """Time passed without audio: at :meth:`deadline`, the audio stopped inside a pause and the
        silence window has passed by the wall clock, so the user's turn has ended (as a file ending
        in a short silence expects)."""
        deadline = self.deadline()
        if deadline is None or now < deadline:
            return []
        actions = self._judge_by_deadline(now)
        if actions or self.detector is None:
            return actions
        turn_deadline = self._turn_deadline()
        if turn_deadline is None or now < turn_deadline:
            return []
        if self._policy is not None:
            return self._decide_end(now)
        decision = self.detector.assume_silence()
        if decision is None:
            return []
        log_event(log, "speech.audio_stopped", audio_ms=decision.audio_ms)
        return self._on_decision(self.detector, decision, now)

    def commit(self) -> list[Action]:
        """``input_audio.commit``: the user's turn ends now."""
        if not self._input:
            return [Fail("input_audio_buffer_empty", "there is no audio to commit")]
        return self._commit()

    def clear(self) -> list[Action]:
        """``input_audio.clear``: forget the audio of the turn in progress and any speech in progress."""
        cleared_ms = p.audio_ms(len(self._input))
        actions = self._drop_speculation() + self._drop_pieces()
        self._clear_input()
        if self.detector is not None:
            self.detector = None
            self._configure_detector()
        actions.append(Emit(p.InputAudioCleared(audio_ms=cleared_ms)))
        return actions

    def text(self, text: str) -> list[Action]:
        """``input_text``: a typed turn (it supersedes the responses in progress)."""
        if not text.strip():
            return [Fail("invalid_event", "input_text needs some text")]
        if self._busy():
            return [Fail("busy", "too many turns are waiting; send this one again later")]
        actions = self._drop_speculation()
        return actions + self._start(self._new_turn(text=text.strip()))

    def cancel_response(self) -> list[Action]:
        """``response.cancel``: end every response queued or in progress."""
        actions = self._drop_speculation()
        if not any(not r.speculative and not r.cancelled for r in self._responses):
            actions.append(Fail("no_active_response", "there is no response to cancel"))
        for response in self._responses:
            actions += self._cancel(response)
        return actions

    def verdict(self, asked: Judge, probability: float, now: float) -> list[Action]:
        """The end-of-turn model's answer to ``asked``: the probability that the turn is finished."""
        pause = self._pause
        if pause is None or pause.judging is not asked:
            return []  # the pause it was about is over
        pause.judging, pause.probability, pause.judged_at_ms = None, probability, asked.silence_ms
        log_event(log, "speech.verdict", logging.DEBUG, probability=round(probability, 3), silence_ms=asked.silence_ms)
        return self._decide_end(now)

    def response_transcript(self, response: Response, text: str, now: float) -> list[Action]:
        """``response``'s speech-to-text is done (its words are not sent yet): under
        ``semantic_vad`` the words of a speculation are the transcript of the turn so far."""
        if self._pause is None or response is not self._speculative:
            return []
        pause, policy = self._pause, self._policy
        pause.transcript = text
        unfinished = transcript_unfinished(text)
        log_event(log, "speech.pause_transcript", logging.DEBUG, unfinished_words=unfinished)
        wanted = policy is not None and policy.use_transcript and text.strip() and not unfinished
        if self.text_end_of_turn_model and wanted:
            pause.scoring = ScoreWords(text)
            return [pause.scoring, *self._decide_end(now)]
        return self._decide_end(now)

    def words_scored(self, asked: ScoreWords, probability: float | None, now: float) -> list[Action]:
        """The text end-of-turn model's answer to ``asked``: the probability that the words are a
        finished sentence (None: the model failed; the words are judged by the rule alone)."""
        pause = self._pause
        if pause is None or pause.scoring is not asked:
            return []  # the pause it was about is over
        pause.scoring, pause.text_probability = None, probability
        log_event(log, "speech.words_scored", logging.DEBUG, probability=probability)
        return self._decide_end(now)

    def piece_transcribed(self, piece: Piece, text: str) -> list[Action]:
        """``piece``'s words: ``transcript.delta`` events for the utterance in progress, in order."""
        piece.text = text
        actions: list[Action] = []
        while self._deltas_sent < len(self._pieces) and self._pieces[self._deltas_sent].text is not None:
            words = self._pieces[self._deltas_sent].text or ""
            if words:
                said = any(earlier.text for earlier in self._pieces[: self._deltas_sent])
                actions.append(Emit(p.TranscriptDelta(delta=" " + words if said else words)))
            self._deltas_sent += 1
        return actions

    def response_started(self, response: Response) -> None:
        """The responder took ``response`` from the queue."""
        response.queued = False

    def response_transcribed(self, response: Response) -> None:
        """The user's words of ``response`` reached the client."""
        response.transcribed = True

    def response_ended(self, response: Response) -> None:
        """``response`` is over (answered, failed, cancelled or dropped)."""
        if response in self._responses:
            self._responses.remove(response)

    def overlap_transcript(self, ticket: int, text: str | None, now: float) -> list[Action]:
        """The transcript asked for by :class:`Transcribe` ``ticket`` (None: speech-to-text
        failed, which interrupts)."""
        overlap = self._overlap
        if overlap is None:
            return []
        decision = overlap.decision
        verdict = decision.on_failure(ticket) if text is None else decision.on_transcript(ticket, text)
        return [] if verdict is None else self._on_verdict(overlap, verdict, now)

    # --- barge-in ---------------------------------------------------------------------------

    def _pause_responses(self, now: float) -> list[Action]:
        """The user speaks over the responses in progress (``pause_and_decide``): pause them and
        judge the speech, unless that is under way or this speech was judged already."""
        if self._overlap is not None or self._overlap_settled:
            return []
        paused = [r for r in self._responses if not r.speculative and not r.cancelled and not r.paused]
        if not paused:
            # The responses it began over have ended (cancelled meanwhile): as under
            # ``immediate``, speech long enough to barge in is the user's turn.
            self._over_response = False
            return []
        vad = self.turn_detection
        decision = OverlapDecision.start(
            now, decision_ms=vad.interrupt_decision_ms, backchannels=vad.backchannels, min_words=vad.interrupt_min_words
        )
        self._overlap = _Overlap(decision, paused)
        log_event(log, "overlap.paused", turns=[r.turn_id for r in paused])
        for response in paused:
            response.paused = True
        return [Pause(r) for r in paused]

    def _ask(self, now: float) -> list[Action]:
        """A pause in the speech being judged (or its end): transcribe it so far."""
        assert self._overlap is not None
        decision = self._overlap.decision
        ticket = decision.on_pause(now, self._overlap.speech_ms)
        return [] if ticket is None else [Transcribe(ticket, bytes(self._input), decision.deadline)]

    def _judge_by_deadline(self, now: float) -> list[Action]:
        overlap = self._overlap
        if overlap is None:
            return []
        verdict = overlap.decision.on_deadline(now)
        return [] if verdict is None else self._on_verdict(overlap, verdict, now)

    def _on_verdict(self, overlap: _Overlap, verdict: Verdict, now: float) -> list[Action]:
        """Interrupt the paused responses (the speech is the user's next turn, committed now if it
        has ended, with the transcript that decided) or resume them (the speech is no turn)."""
        self._overlap = None
        paused = [r for r in overlap.responses if r.paused and not r.cancelled and r in self._responses]
        for response in overlap.responses:
            response.paused = False
        log_event(
            log,
            "overlap.verdict",
            interrupt=verdict.interrupt,
            overlap=verdict.overlap and verdict.overlap.value,
            transcript=verdict.transcript,
            decision_ms=round((now - overlap.decision.paused_at) * 1000, 1),
            paused=len(paused),
        )
        if verdict.interrupt:
            actions = self._barge_in() if paused else []
            self._over_response = False
            # Only silence came after the audio of the transcript (speech would have voided it).
            transcript = verdict.transcript if verdict.overlap is not None else None
            if overlap.speech_stopped and self._input:
                actions += self._commit(supersede=False, transcript=transcript)
            elif self.detector is not None and self.detector.quiet_ms is not None:
                actions += self._speculate(transcript)  # in a pause: confirmed when the silence ends
            return actions
        assert verdict.overlap is not None
        actions: list[Action] = [Resume(r, verdict.overlap.value, verdict.transcript) for r in paused]
        if overlap.speech_stopped:
            log_event(log, "speech.ignored", audio_ms=p.audio_ms(len(self._input)))
            actions += self._drop_pieces()
            self._clear_input()
        else:
            self._overlap_settled = True  # until the user speaks again
        return actions

    def _barge_in(self) -> list[Action]:
        """The user speaks over the responses in progress: interrupt them.

        A spoken turn interrupted before its words were transcribed is not lost: its audio goes in
        front of the next turn's (the user paused, then went on)."""
        actions: list[Action] = []
        for response in self._responses:
            if not response.speculative and not response.cancelled:
                response.cancelled = True
                actions.append(Interrupt(response))
                actions += [CancelPiece(piece) for piece in response.pieces]
                if response.audio:
                    self._carried.append(response)
        return actions

    # --- the detector's decisions ---------------------------------------------------------

    def _on_decision(self, detector: SpeechDetector, decision: Decision, now: float) -> list[Action]:
        vad = self.turn_detection
        match decision:
            case SpeechStarted(audio_ms=at) if self._overlap is not None:
                # Speech again before the verdict on the speech before it: judged as one.
                self._overlap.speech_again()
                self._overlap.decision.on_speech_resumed()
                return [Emit(p.SpeechStartedEvent(audio_ms=at))]
            case SpeechStarted(audio_ms=at):
                # Keep the prefix padding before the speech, drop what came before it.
                keep_ms = vad.prefix_padding_ms + (detector.fed_ms - at)
                del self._input[: max(0, len(self._input) - int(keep_ms) * p.BYTES_PER_MS)]
                self._over_response = any(not r.cancelled for r in self._responses)
                self._overlap_settled = False
                return [Emit(p.SpeechStartedEvent(audio_ms=at))]
            case PauseStarted() if self._overlap is not None:
                return self._ask(now)
            case PauseStarted() if not (self._over_response and vad.interrupt_response):
                actions = self._cut_piece()
                actions += self._speculate()
                if self._policy is not None:  # semantic_vad: the policy judges it (vad() asks it next)
                    self._pause = _Pause()
                return actions
            case SpeechResumed():
                self._pause = None
                self._voiced_after_cut = True
                self._overlap_settled = False
                if self._overlap is not None:
                    self._overlap.decision.on_speech_resumed()
                return self._drop_speculation()
            case SpeechStopped(audio_ms=at):
                self._pause = None
                actions: list[Action] = [Emit(p.SpeechStoppedEvent(audio_ms=at))]
                self._overlap_settled = False
                if self._overlap is not None:
                    self._overlap.speech_stopped = True
                    return actions + self._ask(now)
                if self._over_response and vad.interrupt_response:
                    # Speech over a response, too short to interrupt it (a cough, an "uh-huh"):
                    # not a turn of its own.
                    log_event(log, "speech.ignored", audio_ms=p.audio_ms(len(self._input)))
                    actions += self._drop_pieces()
                    self._clear_input()
                    return actions
                # Without interrupt_response, speech over a response queues behind it.
                return actions + self._commit(supersede=not self._over_response)
        return []

    # --- semantic end of turn ----------------------------------------------------------------

    def _decide_end(self, now: float) -> list[Action]:
        """Under ``semantic_vad``, in a pause: ask the policy whether the turn has ended (the
        silence counted by the wall clock too, once the audio stopped arriving)."""
        pause, policy, detector = self._pause, self._policy, self.detector
        if pause is None or policy is None or detector is None or detector.quiet_ms is None:
            return []
        lag_s = max(0.0, now - self._audio_at - AUDIO_STOPPED_MARGIN_S)
        silence = detector.quiet_ms + lag_s * 1000
        step = policy.step(
            int(silence), pause.probability, pause.judged_at_ms, pause.transcript, pause.text_probability
        )
        pause.until_ms = step.until_ms
        if step.action == "judge":
            if not (self.end_of_turn_model and policy.use_model):
                pause.judged_at_ms = silence  # the transcript alone decides
                return self._decide_end(now)
            if pause.judging is None:
                pause.judging = Judge(self._turn_audio(), silence)
                return [pause.judging]
            return []
        if step.action != "end":
            return []
        if step.reason == "complete" and self._transcript_coming():
            return []  # the speculation's words, due soon, may still say "unfinished"
        log_event(
            log,
            "speech.end_of_turn",
            reason=step.reason,
            silence_ms=round(silence),
            probability=pause.probability,
            unfinished_words=transcript_unfinished(pause.transcript),
            text_probability=pause.text_probability,
        )
        decision = detector.assume_silence()
        return [] if decision is None else self._on_decision(detector, decision, now)

    def _transcript_coming(self) -> bool:
        """A running speculation will soon tell the words of the turn so far (or the text model
        their score)."""
        spec, pause = self._speculative, self._pause
        if pause is not None and pause.scoring is not None:
            return True
        return (
            self._policy is not None
            and self._policy.use_transcript
            and pause is not None
            and pause.transcript is None
            and spec is not None
            and not spec.cancelled
            and not spec.queued
        )

    # --- speculation --------------------------------------------------------------------------

    def _speculate(self, transcript: str | None = None) -> list[Action]:
        """A pause began: start answering the audio so far, output held back until the turn really
        ends (or dropped if the user speaks on). ``transcript``: its words, if known."""
        if self.speculate_after_ms is None or not self._input or self._busy() or self._draining:
            return []
        self._turn_count += 1
        text = self._known(transcript)
        response = Response(f"turn_{self._turn_count}", audio=self._turn_audio(), text=text, speculative=True)
        if text is None:
            response.pieces, response.rest = self._pieces_and_rest()
        self._speculative = response
        return self._start(response, supersede=False)

    def _drop_speculation(self) -> list[Action]:
        """The user spoke on: the speculative turn never happened."""
        response, self._speculative = self._speculative, None
        if response is None:
            return []
        if response.turn_id == f"turn_{self._turn_count}":
            self._turn_count -= 1  # the client never saw this id
        return self._cancel(response)

    # --- ending a turn ----------------------------------------------------------------------

    def _known(self, transcript: str | None) -> str | None:
        """``transcript`` (of the input buffer) if it is the whole turn's: no audio carried."""
        return transcript if transcript and all(r.transcribed for r in self._carried) else None

    def _commit(self, *, supersede: bool = True, transcript: str | None = None) -> list[Action]:
        """End the user's turn: ``input_audio.committed``, then its response (a speculation's output
        released, or a new turn queued). While the server is shutting down the turn is refused with
        ``server_shutting_down`` before anything is acknowledged."""
        if self._draining:
            actions = self._drop_speculation() + self._drop_pieces()
            self._clear_input()
            return actions + [_shutting_down()]
        response, self._speculative = self._speculative, None
        if response is not None and not response.cancelled:  # the work began in the pause
            self._clear_input()
            actions: list[Action] = [
                Emit(p.InputAudioCommitted(turn_id=response.turn_id, audio_ms=p.audio_ms(len(response.audio or b""))))
            ]
            if supersede:
                for earlier in self._responses:
                    if earlier is not response:
                        actions += self._cancel(earlier)
            response.speculative = False
            return actions + [ConfirmResponse(response)]
        if self._busy():
            return [Fail("busy", "too many turns are waiting; commit again later")]
        audio = self._turn_audio()
        if not audio:
            return []
        response = self._new_turn(audio=audio, text=self._known(transcript))
        if response.text is None:
            response.pieces, response.rest = self._pieces_and_rest()
        self._clear_input()
        actions = [Emit(p.InputAudioCommitted(turn_id=response.turn_id, audio_ms=p.audio_ms(len(audio))))]
        return actions + self._start(response, supersede=supersede)

    def _new_turn(self, *, audio: bytes | None = None, text: str | None = None) -> Response:
        """A turn that has ended (call :meth:`_drop_speculation` first)."""
        self._turn_count += 1
        return Response(f"turn_{self._turn_count}", audio=audio, text=text)

    def _start(self, response: Response, *, supersede: bool = True) -> list[Action]:
        """Queue ``response``; unless told otherwise, the responses queued or in progress are
        cancelled (the newer turn supersedes them)."""
        if self._draining:
            if self._speculative is response:
                self._speculative = None
            return [_shutting_down()]
        actions: list[Action] = [StartResponse(response)]
        if supersede:
            for earlier in self._responses:
                actions += self._cancel(earlier)
        self._responses.append(response)
        return actions

    def _cancel(self, response: Response) -> list[Action]:
        if response.cancelled:
            return []
        response.cancelled = True
        # A speculation's pieces stay with the utterance; a turn's are its own.
        pieces = [] if response.speculative else [CancelPiece(piece) for piece in response.pieces]
        return [CancelResponse(response), *pieces]

    def _busy(self) -> bool:
        return sum(r.queued for r in self._responses) >= self.max_pending_turns

    # --- the input buffer and the detector --------------------------------------------------

    def _turn_audio(self) -> bytes:
        """The audio of the turn now ending: any carried over, then the input buffer."""
        carried = b"".join(r.audio or b"" for r in self._carried if not r.transcribed)
        return carried + self._input

    def _clear_input(self) -> None:
        """Forget the turn's audio (its pieces, if any, go with the response made of it)."""
        self._input.clear()
        self._overflowed = False
        self._carried.clear()
        self._pieces, self._cut, self._voiced_after_cut, self._deltas_sent = [], 0, False, 0

    # --- transcription in pieces ------------------------------------------------------------

    def _cut_piece(self) -> list[Action]:
        """A pause began: the speech since the last cut becomes a piece, transcribed at once."""
        if not self.transcribe_pieces or len(self._input) <= self._cut or self._overflowed:
            return []
        piece = Piece(bytes(self._input[self._cut :]), earlier=tuple(self._pieces))
        self._pieces.append(piece)
        self._cut, self._voiced_after_cut = len(self._input), False
        return [TranscribePiece(piece)]

    def _pieces_and_rest(self) -> tuple[tuple[Piece, ...], bytes]:
        """The pieces a response of the turn now can reuse, and the audio after them. Audio carried
        from an interrupted turn is transcribed whole with the rest (no pieces)."""
        if not self._pieces or any(not r.transcribed for r in self._carried) or self._overflowed:
            return (), b""
        return tuple(self._pieces), bytes(self._input[self._cut :]) if self._voiced_after_cut else b""

    def _drop_pieces(self) -> list[Action]:
        """The utterance's pieces will never be used (no turn is made of it)."""
        return [CancelPiece(piece) for piece in self._pieces]

    def _configure_detector(self) -> list[Action]:
        vad = self.turn_detection
        self._pause = None
        if vad.type == "none":
            actions = self._drop_speculation()
            self.detector, self._policy = None, None
            return actions
        if self.detector is None:
            self.detector = SpeechDetector(self.new_vad_stream())
        self.detector.threshold = vad.threshold
        self.detector.min_speech_ms = vad.min_speech_duration_ms
        if vad.type == "semantic_vad":
            self._policy = SemanticPolicy.for_eagerness(vad.eagerness, use_model=self.end_of_turn_model)
            self.detector.silence_ms = self._policy.cap_ms  # the detector itself ends the turn at the cap
            # The pause is noticed when speculation starts, or (without it) at the first judgement.
            spec_ms = self.speculate_after_ms
            self.detector.pause_ms = spec_ms if spec_ms is not None else self._policy.judge_after_ms
        else:
            self._policy = None
            self.detector.silence_ms = vad.silence_duration_ms
            self.detector.pause_ms = self.speculate_after_ms
        return []


def _shutting_down() -> Fail:
    return Fail("server_shutting_down", "the server is shutting down; no new response starts")
