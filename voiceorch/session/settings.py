"""Per-session behaviour and limits, shared by every session of a server."""

from __future__ import annotations

import attrs

from ..protocol import TurnDetection
from .history import DEFAULT_INSTRUCTIONS


@attrs.frozen(kw_only=True)
class SessionSettings:
    #: System prompt of a new session (a client may replace it with ``session.update``).
    instructions: str = DEFAULT_INSTRUCTIONS
    #: Turn detection of a new session (server VAD by default; ``session.update`` changes it).
    turn_detection: TurnDetection = TurnDetection()
    #: Under server (or semantic) VAD, start answering speculatively once a pause has lasted this long (the
    #: output is held back until the silence window confirms the turn); None: don't.
    speculate_after_ms: int | None = 160
    #: Under server (or semantic) VAD, transcribe the user's speech while they speak, in pieces
    #: cut at their pauses (``speculate_after_ms`` long), each with the earlier words as its
    #: prompt: the words come as ``transcript.delta`` events, and only the audio after the last
    #: piece is left to transcribe when the turn ends.
    transcribe_pieces: bool = False
    #: Audio buffered for one user turn; past it, audio is dropped with an ``error`` event.
    max_input_audio_ms: int = 60_000
    #: How far the client's audio may run ahead of real time (a burst of one full turn by
    #: default); past it, frames are dropped with an ``error`` event (see input_pace.py).
    #: None: no bound.
    max_audio_ahead_ms: int | None = 60_000
    #: ... ahead of this many times real time: the pace a client may keep up for ever. Above 1,
    #: because push-to-talk clients upload whole recordings and then wait for the reply (at 1x
    #: their uploads would run ever further ahead over a long session); still bounded, since
    #: every second of audio costs speech detection, and every turn a transcription.
    max_audio_speed: float = 4.0
    #: Conversation memory sent with each LLM request.
    history_max_messages: int = 20
    history_max_chars: int = 6_000
    #: Sentences of a reply held between the LLM and synthesis. The LLM's stream is drained into
    #: this buffer, so its request (and its slot of ``--llm-concurrency``) ends when generation
    #: ends, not when the reply's audio has played; a reply with more sentences than this is
    #: held back by synthesis again. 256 is more than a reply of ``--llm-max-tokens`` 120 can have.
    reply_buffer_sentences: int = 256
    #: Reply audio is sent in binary frames of this length, ...
    audio_frame_ms: int = 40
    #: ... paced to real time, at most this far ahead of the client's playback.
    playback_lead_ms: int = 200
    #: A client that does not take a message within this many seconds is disconnected (1008).
    send_timeout_s: float = 10.0
    #: A session whose client sends nothing for this long, with no response in progress,
    #: is closed (1000, "idle timeout").
    idle_timeout_s: float = 300.0
    #: No session lasts longer than this (then: 1008, "maximum session duration").
    max_session_s: float = 3600.0
    #: A transcription (or one sentence's synthesis) taking longer than this fails the turn
    #: with ``stt_timeout`` (``tts_timeout``); the session goes on. The wait for the engine's
    #: thread counts too.
    stt_timeout_s: float = 30.0
    tts_timeout_s: float = 30.0
    #: A tool call's time limit: a server tool taking longer gives the LLM an error result; a
    #: client that does not answer ``response.tool_call`` within it fails the turn
    #: (``tool_call_timeout``).
    tool_call_timeout_s: float = 30.0
    #: Said while a reply's tool calls run, when the reply said nothing before them (e.g.
    #: "One moment."); None: nothing is said (the default). Spoken replies only.
    tool_filler: str | None = None
    #: LLM requests one response may make (each after the previous one's tool calls); a reply
    #: still calling tools at the last fails the turn (``tool_loop_limit``).
    max_tool_steps: int = 8
    #: User turns waiting to be answered (each new turn cancels the response in progress).
    max_pending_turns: int = 4
