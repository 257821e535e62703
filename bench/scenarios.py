"""The client-side latency measurements, each in a fresh session (see bench/README.md).

Every function returns one *sample*: a plain dict (it goes into the JSON file as it is) with
the measured value(s) in ms, what the server said (transcript, reply, ``response.done``
metrics) and what the floors need later (the reply's first sentence; for a voice turn, the
part of the stream the server transcribed). Each session is drained: the function returns
only after the ``response.done`` of every response it caused.
"""

from __future__ import annotations

from pathlib import Path

import attrs
import trio

from voiceorch import protocol as p
from voiceorch.audio_files import read_as_wire_pcm
from voiceorch.session.sentences import SentenceSplitter

from .client import BenchSession, Played, Received, open_session

#: The server's default silence window (turn_detection.silence_duration_ms).
SILENCE_WINDOW_MS = 500
#: The window as the detector applies it: whole 32 ms chunks (16 of them).
SILENCE_WINDOW_CHUNKED_MS = 512
PREFIX_PADDING_MS = 300
#: How long to wait for the VAD turn after the end of a clip before taking an earlier one.
_COMMIT_GRACE_S = 5.0

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"
DEFAULT_WAVS = (DATA / "jfk_16k.wav", DATA / "hotwords_16k.wav")

#: Typed prompts for the text path when no transcript of the clip was measured in this run
#: (the transcripts faster-whisper tiny.en gives, from tests/data/README.md).
FIXED_PROMPTS = {
    "jfk_16k": (
        "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country."
    ),
    "hotwords_16k": "Then you go into your comfy eye folder again in the comfy eye.",
}
FALLBACK_PROMPT = "What is the tallest mountain in the world?"
#: Barge-in speech B: the first 2.3 s of the JFK clip ("And so my fellow Americans").
BARGE_IN_CLIP_MS = 2300
#: The system prompt of barge-in sessions: the default one asks for one to three short
#: sentences, and a reply shorter than B's first ~0.6 s has finished playing before B can
#: interrupt it. Only the barge-in sessions use it.
BARGE_IN_INSTRUCTIONS = (
    "You are a friendly voice assistant. Your replies are spoken aloud, so answer in plain "
    "conversational English, in five or six full sentences. Never use markdown, lists, emojis or code."
)


@attrs.frozen
class Clip:
    """A speech clip in wire format, with where its speech starts and ends (:func:`speech_span`)."""

    name: str
    path: str
    pcm: bytes = attrs.field(repr=False)
    speech_start_ms: float
    speech_end_ms: float

    @property
    def duration_ms(self) -> float:
        return len(self.pcm) / p.BYTES_PER_MS

    @classmethod
    def from_pcm(cls, name: str, path: str, pcm: bytes) -> Clip:
        start, end = speech_span(pcm)
        return cls(name=name, path=path, pcm=pcm, speech_start_ms=start, speech_end_ms=end)

    @classmethod
    def load(cls, path: str | Path) -> Clip:
        path = Path(path)
        return cls.from_pcm(path.stem, str(path), read_as_wire_pcm(path))


_silero = None


def speech_span(pcm: bytes, threshold: float = 0.5) -> tuple[float, float]:
    """Where speech starts and ends in ``pcm``, in ms, as the server's VAD model (Silero, fresh
    state, 32 ms chunks) hears it: the start of the first chunk and the end of the last chunk
    whose speech probability is >= ``threshold``. The whole clip if it hears none."""
    global _silero
    from voiceorch.engines.silero_vad import SileroVAD

    if _silero is None:
        _silero = SileroVAD.load()
    stream = _silero.new_stream()
    chunk = 512 * 2
    speech = [
        i
        for i, offset in enumerate(range(0, len(pcm) - chunk + 1, chunk))
        if stream.probability(pcm[offset : offset + chunk]) >= threshold
    ]
    if not speech:
        return 0.0, len(pcm) / p.BYTES_PER_MS
    return speech[0] * 32.0, (speech[-1] + 1) * 32.0


def barge_in_speech() -> Clip:
    pcm = read_as_wire_pcm(DATA / "jfk_16k.wav")[: BARGE_IN_CLIP_MS * p.BYTES_PER_MS]
    return Clip.from_pcm(f"jfk_16k[:{BARGE_IN_CLIP_MS}ms]", str(DATA / "jfk_16k.wav"), pcm)


def first_sentence(deltas: list[str]) -> tuple[str | None, int]:
    """The first piece the server synthesizes of a reply (cut by its own sentence splitter), and
    how many text deltas (LLM tokens, as llama.cpp streams them) it took to complete it."""
    splitter = SentenceSplitter()
    for count, delta in enumerate(deltas, start=1):
        pieces = splitter.feed(delta)
        if pieces:
            return pieces[0], count
    pieces = splitter.flush()
    return (pieces[0] if pieces else None), len(deltas)


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


# --- following one response ---------------------------------------------------------------


@attrs.define
class Response:
    turn_id: str
    created: int
    first_audio: int | None
    done: int


async def follow(s: BenchSession, turn_id: str, *, start: int = 0) -> Response:
    """Wait for ``turn_id``'s response.created, first reply frame (if any) and response.done."""
    created = await s.wait_event(p.ResponseCreated, turn_id=turn_id, start=start)

    def audio_or_done(item: Received) -> bool:
        return item.is_audio or (isinstance(item.event, p.ResponseDone) and item.event.turn_id == turn_id)

    first = await s.wait_for(audio_or_done, start=created)
    first_audio = first if s.received[first].is_audio else None
    done = await s.wait_event(p.ResponseDone, turn_id=turn_id, start=created)
    return Response(turn_id, created, first_audio, done)


def describe(s: BenchSession, r: Response) -> dict:
    """What the server sent for one response: transcript, reply text, status and metrics."""
    transcript = None
    reply = []
    audio_bytes = 0
    for item in s.received[r.created : r.done + 1]:
        match item.event:
            case p.TranscriptFinal(turn_id=r.turn_id, text=text):
                transcript = text
            case p.ResponseTextDelta(turn_id=r.turn_id, delta=delta):
                reply.append(delta)
            case None:
                audio_bytes += item.audio_bytes
    done = s.received[r.done].event
    assert isinstance(done, p.ResponseDone)
    sentence, deltas = first_sentence(reply) if r.first_audio is not None else (None, None)
    return {
        "session_id": s.session_id,
        "turn_id": r.turn_id,
        "status": done.status,
        "transcript": transcript,
        "reply_text": "".join(reply),
        "first_sentence": sentence,
        "first_sentence_deltas": deltas,
        "spoken_text": done.text,
        "reply_audio_received_ms": audio_bytes / p.BYTES_PER_MS,
        "metrics": attrs.asdict(done.metrics),
    }


async def drain(s: BenchSession) -> int:
    """Wait until every response of the session has ended (its ``response.done``), including
    one for a turn committed but not yet started; returns how many responses there were."""
    while True:
        created = [item.event.turn_id for _, item in s.events(p.ResponseCreated)]
        done = {item.event.turn_id for _, item in s.events(p.ResponseDone)}
        unfinished = [turn_id for turn_id in created if turn_id not in done]
        if unfinished:
            await s.wait_event(p.ResponseDone, turn_id=unfinished[0])
            continue
        committed = {item.event.turn_id for _, item in s.events(p.InputAudioCommitted)}
        if committed - set(created):  # its response.created may still be on its way
            count = len(s.received)
            with trio.move_on_after(1.0):
                await s.wait_for(lambda item: True, start=count)
                continue
        return len(created)


def _errors(s: BenchSession) -> list[dict]:
    return [
        {"code": item.event.code, "message": item.event.message, "turn_id": item.event.turn_id}
        for _, item in s.events(p.Error)
    ]


async def turn_after(s: BenchSession, played: Played, clip: Clip) -> tuple[int, bool]:
    """The ``input_audio.committed`` of the VAD turn that ended after the clip's speech ended
    (received after the frame carrying its last speech sample was sent: earlier turns, cut at
    pauses inside the clip, came before).

    Returns its index, and False if no such turn came within a grace period, in which case the
    last turn committed before is taken."""
    assert played.start_pos_ms is not None and played.last_sent_at is not None
    speech_end_at = s.mic.sent_at(played.start_pos_ms + clip.speech_end_ms) or played.last_sent_at
    with trio.move_on_after(_COMMIT_GRACE_S):
        return await s.wait_event(p.InputAudioCommitted, after=speech_end_at), True
    earlier = s.events(p.InputAudioCommitted)
    if not earlier:
        return await s.wait_event(p.InputAudioCommitted), True
    return earlier[-1][0], False


def vad_details(s: BenchSession, committed: int, played: Played) -> dict:
    """The server VAD's view of the turn: when it heard speech start and stop (in stream ms),
    how many turns it cut the clip into, and the stream span it transcribed (as the protocol
    defines a VAD turn: prefix padding + speech + the chunked silence window)."""
    started = [item.event.audio_ms for _, item in s.events(p.SpeechStartedEvent, stop=committed)]
    stopped = [item.event.audio_ms for _, item in s.events(p.SpeechStoppedEvent, stop=committed)]
    event = s.received[committed].event
    assert isinstance(event, p.InputAudioCommitted)
    details = {
        "clip_start_pos_ms": played.start_pos_ms,
        "clip_end_pos_ms": played.end_pos_ms,
        "vad_turns": len(s.events(p.InputAudioCommitted, stop=committed + 1)),
        "speech_started_ms": started[-1] if started else None,
        "speech_stopped_ms": stopped[-1] if stopped else None,
        "committed_audio_ms": event.audio_ms,
        "vad_stop_minus_clip_end_ms": None,
        "stt_window_ms": None,
    }
    if started and stopped and played.end_pos_ms is not None:
        details["vad_stop_minus_clip_end_ms"] = round(stopped[-1] - played.end_pos_ms, 1)
        details["stt_window_ms"] = [
            max(0.0, started[-1] - PREFIX_PADDING_MS),
            stopped[-1] + SILENCE_WINDOW_CHUNKED_MS,
        ]
    return details


def voice_latencies(
    s: BenchSession, response: Response, played: Played, speech_end_ms: float, stopped_ms: float | None
) -> dict:
    """voice_to_voice_ms: the frame carrying the clip's last speech sample sent -> first reply
    frame received. voice_to_voice_from_clip_end_ms: the same from the clip's last frame (they
    differ when the clip ends with non-speech, as jfk_16k does: 0.5 s of it).
    after_vad_window_ms: the frame that completed the server's (chunked) silence window sent ->
    first reply frame received: the server's reaction alone, without the window or the VAD's
    own judgement of where speech ended."""
    names = ("voice_to_voice_ms", "voice_to_voice_from_clip_end_ms", "after_vad_window_ms")
    if response.first_audio is None or played.start_pos_ms is None:
        return dict.fromkeys(names)
    first_audio_at = s.received[response.first_audio].at
    sent = [
        s.mic.sent_at(played.start_pos_ms + speech_end_ms),
        played.last_sent_at,
        None if stopped_ms is None else s.mic.sent_at(stopped_ms + SILENCE_WINDOW_CHUNKED_MS),
    ]
    return {name: None if at is None else _ms(first_audio_at - at) for name, at in zip(names, sent)}


# --- the four measurements -------------------------------------------------------------------


async def voice_to_voice(url: str, clip: Clip) -> dict:
    """Server VAD, default settings: the clip at real time, then silence. From the moment the
    frame carrying the clip's last speech sample was sent to the first reply frame received."""
    async with open_session(url, vad=True, silence=True) as s:
        played = await s.mic.play(clip.pcm)
        committed, after_end = await turn_after(s, played, clip)
        event = s.received[committed].event
        response = await follow(s, event.turn_id, start=committed)
        sample = describe(s, response)
        sample.update(vad_details(s, committed, played))
        sample["turn_ended_after_speech"] = after_end
        sample.update(voice_latencies(s, response, played, clip.speech_end_ms, sample["speech_stopped_ms"]))
        sample["responses"] = await drain(s)
        sample["send_lag_p99_ms"] = _p99_ms(s.mic.lags)
        sample["errors"] = _errors(s)
    return sample


async def commit(url: str, clip: Clip) -> dict:
    """Push-to-talk (turn_detection none): the clip at real time, then input_audio.commit.
    From the commit sent to the first reply frame received."""
    async with open_session(url, vad=False, silence=False) as s:
        await s.mic.play(clip.pcm)
        start = len(s.received)
        sent_at = await s.send(p.InputAudioCommit())
        committed = await s.wait_event(p.InputAudioCommitted, start=start)
        response = await follow(s, s.received[committed].event.turn_id, start=committed)
        sample = describe(s, response)
        sample["commit_ms"] = (
            _ms(s.received[response.first_audio].at - sent_at) if response.first_audio is not None else None
        )
        sample["responses"] = await drain(s)
        sample["send_lag_p99_ms"] = _p99_ms(s.mic.lags)
        sample["errors"] = _errors(s)
    return sample


async def text(url: str, prompt: str) -> dict:
    """A typed turn (input_text): from its frame sent to the first reply frame received."""
    async with open_session(url, vad=True, silence=False, start_mic=False) as s:
        start = len(s.received)
        sent_at = await s.send(p.InputText(text=prompt))
        created = await s.wait_event(p.ResponseCreated, start=start)
        response = await follow(s, s.received[created].event.turn_id, start=created)
        sample = describe(s, response)
        sample["prompt"] = prompt
        sample["text_ms"] = (
            _ms(s.received[response.first_audio].at - sent_at) if response.first_audio is not None else None
        )
        sample["responses"] = await drain(s)
        sample["errors"] = _errors(s)
    return sample


async def barge_in(url: str, clip: Clip, speech_b: Clip) -> dict:
    """Server VAD: clip A, silence; at A's first reply frame, speech B over the reply.

    barge_in_ms: B's first frame sent -> response.interrupted received.
    barge_in_audio_stop_ms: B's first frame sent -> the last reply frame of A's response received.
    interrupt_after_vad_ms: input_audio.speech_started (of B) received -> response.interrupted received.
    barge_in_from_speech_ms: the frame carrying B's first speech sample sent -> response.interrupted.
    stop_after_vad_ms: input_audio.speech_started (of B) received -> the event that stops A's audio
    (``response.paused`` under the default ``interruption`` ``pause_and_decide``, where
    ``response.interrupted`` comes after the verdict; ``response.interrupted`` under ``immediate``).
    Then B's own turn is answered and drained too.
    """
    async with open_session(url, vad=True, silence=True, instructions=BARGE_IN_INSTRUCTIONS) as s:
        played_a = await s.mic.play(clip.pcm)
        committed, after_end = await turn_after(s, played_a, clip)
        turn_a = s.received[committed].event.turn_id
        created = await s.wait_event(p.ResponseCreated, turn_id=turn_a, start=committed)

        def audio_or_end(item: Received) -> bool:
            return item.is_audio or (isinstance(item.event, p.ResponseDone) and item.event.turn_id == turn_a)

        first = await s.wait_for(audio_or_end, start=created)
        sample: dict = {
            "turn_ended_after_speech": after_end,
            "vad_turns": len(s.events(p.InputAudioCommitted, stop=committed + 1)),
            "interrupted": False,
        }
        if not s.received[first].is_audio:  # A's response ended with no audio: nothing to talk over
            sample.update(describe(s, Response(turn_a, created, None, first)))
            sample["responses"] = await drain(s)
            sample["errors"] = _errors(s)
            return sample

        played_b = s.mic.queue(speech_b.pcm)
        await played_b.started.wait()
        b_at = played_b.first_sent_at

        def interrupted_or_done(item: Received) -> bool:
            return isinstance(item.event, (p.ResponseInterrupted, p.ResponseDone)) and item.event.turn_id == turn_a

        def stopped_or_done(item: Received) -> bool:
            kinds = (p.ResponsePaused, p.ResponseInterrupted, p.ResponseDone)
            return isinstance(item.event, kinds) and item.event.turn_id == turn_a

        stop = await s.wait_for(stopped_or_done, start=first)
        end = await s.wait_for(interrupted_or_done, start=stop)
        done_a = await s.wait_event(p.ResponseDone, turn_id=turn_a, start=created)
        response_a = Response(turn_a, created, first, done_a)
        sample.update(describe(s, response_a))
        audio_a = [i for i in range(created, end) if s.received[i].is_audio]
        last_audio = s.received[audio_a[-1]]
        sample["reply_audio_before_b_ms"] = (
            sum(s.received[i].audio_bytes for i in audio_a if s.received[i].at < b_at) / p.BYTES_PER_MS
        )
        interrupted = s.received[end].event
        if isinstance(interrupted, p.ResponseInterrupted):
            t_interrupt = s.received[end].at
            started = [item for _, item in s.events(p.SpeechStartedEvent, start=first, stop=end) if item.at >= b_at]
            sample["paused"] = isinstance(s.received[stop].event, p.ResponsePaused)
            sample["stop_after_vad_ms"] = _ms(s.received[stop].at - started[0].at) if started else None
            b_speech_at = s.mic.sent_at(played_b.start_pos_ms + speech_b.speech_start_ms, first=True)
            sample.update(
                interrupted=True,
                barge_in_ms=_ms(t_interrupt - b_at),
                barge_in_from_speech_ms=None if b_speech_at is None else _ms(t_interrupt - b_speech_at),
                barge_in_audio_stop_ms=_ms(last_audio.at - b_at),
                interrupt_after_vad_ms=_ms(t_interrupt - started[0].at) if started else None,
                b_speech_onset_ms=(round(started[0].event.audio_ms - played_b.start_pos_ms, 1) if started else None),
                played_ms=interrupted.played_ms,
                heard_text=interrupted.heard_text,
            )

        # Drain B's own turn (it is committed once B's speech has stopped).
        await played_b.finished.wait()
        b_commit, _ = await turn_after(s, played_b, speech_b)
        b_event = s.received[b_commit].event
        if b_event.turn_id != turn_a:
            response_b = await follow(s, b_event.turn_id, start=b_commit)
            described = describe(s, response_b)
            sample["b_turn"] = {k: described[k] for k in ("turn_id", "status", "transcript", "metrics")}
        sample["responses"] = await drain(s)
        sample["send_lag_p99_ms"] = _p99_ms(s.mic.lags)
        sample["errors"] = _errors(s)
    return sample


async def warm_up(url: str) -> dict:
    """One typed turn, drained and not counted: the first response of a fresh server."""
    return await text(url, "Hello.")


def _p99_ms(lags: list[float]) -> float | None:
    if not lags:
        return None
    ordered = sorted(lags)
    return round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000, 2)
