"""The engine interfaces: what the session needs from speech-to-text, the LLM and text-to-speech.

Engines know nothing of sessions, turns or servers. Each call is a Trio checkpoint and may be
cancelled: an in-process engine runs its blocking model call in a worker thread under its own
``trio.CapacityLimiter`` (Piper's synthesis is stopped inside onnxruntime and gives its slot
back at once; a Whisper thread is told to stop and keeps its slot until its unit of work in
progress ends), a remote engine closes its request. Failures are raised as :class:`EngineError`.
Every STT, LLM and TTS engine inherits :class:`EngineLifecycle` (through the interface it implements).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal, Protocol, Union

import attrs
import trio

if TYPE_CHECKING:
    from .tools import ServerTools, ToolSpec

#: What a reply streams: text deltas, and pieces of tool calls.
ReplyDelta = Union[str, "ToolCallDelta"]
#: ``tool_choice`` of a request, as the OpenAI API has it: ``"auto"``, ``"none"``,
#: ``"required"``, or the name of the one function to call.
ToolChoice = str

#: Audio crossing the engine interfaces: PCM signed 16-bit little-endian, mono, 16 kHz.
SAMPLE_RATE = 16_000
SAMPLE_WIDTH = 2

Role = Literal["system", "user", "assistant", "tool"]


@attrs.frozen(kw_only=True)
class ToolCall:
    """One function call the LLM asked for: its id, the function's name and its arguments (a
    JSON object's text, as the LLM wrote it)."""

    call_id: str
    name: str
    arguments: str


@attrs.frozen(kw_only=True)
class ToolCallDelta:
    """A piece of a tool call as the LLM streams it: call ``index`` of the reply (0, 1, ...),
    with its id and name (on every piece) and the next piece of its ``arguments`` text."""

    index: int
    call_id: str
    name: str
    arguments: str = ""


@attrs.frozen(kw_only=True)
class ChatMessage:
    """One message of an LLM request. An assistant message may carry ``tool_calls`` (its
    ``content`` is then the text said before them, maybe empty); a ``tool`` message is the
    result of call ``tool_call_id``."""

    role: Role
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None


class EngineError(Exception):
    """An engine could not do its job.

    ``code`` is a short machine-readable reason that reaches the client in an ``error`` event
    (for instance ``llm_unavailable``, ``llm_error``, ``stt_failed``, ``tts_failed``).
    ``retryable`` says the same request may succeed if sent again (to another server): the
    request never reached a server that could answer it, or the server said it was overloaded.
    """

    def __init__(self, code: str, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = retryable


class EngineLifecycle:
    """The optional part of an engine's life, which every STT, LLM and TTS engine declares by
    inheriting it (through :class:`SpeechToText`, :class:`LanguageModel`, :class:`TextToSpeech`).

    The defaults do nothing, so an engine overrides only what it needs; the server calls all
    of them on every engine, without probing.
    """

    __slots__ = ()

    #: The engine's queue of calls (``statistics()`` is exported as metrics), or ``None``.
    limiter: trio.CapacityLimiter | None = None

    async def warm_up(self) -> None:
        """Run the model (or reach the server) once, so the first real call is not slowed down.

        A remote engine logs a server that does not answer and returns; it does not raise.
        """

    async def check_ready(self) -> str | None:
        """``None`` if the engine can serve now, else why not (for ``/readyz``); never raises
        for a backend that is down. Cancellable."""
        return None

    async def aclose(self) -> None:
        """Release what the engine holds (an HTTP client's pooled connections); call it once,
        at shutdown."""


class SpeechToText(EngineLifecycle, abc.ABC):
    __slots__ = ()

    @abc.abstractmethod
    async def transcribe(self, pcm: bytes, *, prompt: str | None = None) -> str:
        """Transcribe one utterance of 16 kHz mono s16le PCM; returns the text, stripped.

        ``prompt``: the text already transcribed before this audio (when an utterance is
        transcribed in pieces), or None. Whisper engines put it in the decoder's previous-text
        context; an OpenAI-compatible server gets it as ``prompt``; an engine that cannot use
        it ignores it.
        """


class LanguageModel(EngineLifecycle, abc.ABC):
    __slots__ = ()

    @abc.abstractmethod
    async def stream_reply(
        self,
        messages: Sequence[ChatMessage],
        deltas: trio.MemorySendChannel[ReplyDelta],
        *,
        tools: Sequence[ToolSpec] = (),
        tool_choice: ToolChoice = "auto",
    ) -> str | None:
        """Stream the assistant's reply to ``messages`` as text deltas into ``deltas``.

        With ``tools``, the reply may call them: their pieces come as :class:`ToolCallDelta`
        items among the text (an engine that cannot call tools ignores ``tools``).
        The engine owns ``deltas`` and closes it when it returns or raises, so the consumer's
        ``async for`` ends. Cancelling the call closes the upstream request (the LLM server
        sees the connection drop and stops generating). Returns why the reply ended, in the
        OpenAI API's words (``finish_reason``): ``"length"`` if the token limit cut it off,
        ``"stop"`` if it ended by itself, ``"tool_calls"`` if it called tools; ``None`` if the
        LLM did not say.
        """


class TextToSpeech(EngineLifecycle, abc.ABC):
    __slots__ = ()

    @abc.abstractmethod
    async def synthesize(self, text: str) -> bytes:
        """Speak ``text`` (one sentence or clause); returns 16 kHz mono s16le PCM."""


#: Voice activity is judged on chunks of this many samples (32 ms at 16 kHz).
VAD_CHUNK_SAMPLES = 512


class VoiceActivityStream(Protocol):
    def probability(self, chunk: bytes) -> float:
        """Speech probability of the next chunk of ``VAD_CHUNK_SAMPLES`` s16le samples.

        Not a checkpoint: it is fast enough (about 0.1 ms) to run on the Trio thread. The
        stream carries the model's state from chunk to chunk; one stream per audio source.
        """
        ...


class VoiceActivityModel(Protocol):
    def new_stream(self) -> VoiceActivityStream:
        """A fresh stream (its own state) sharing the loaded model."""
        ...


class EndOfTurnModel(Protocol):
    async def judge(self, pcm: bytes) -> float:
        """Probability (0-1) that the speaker has finished the turn whose 16 kHz s16le audio so far
        (trailing silence included) is ``pcm``. Runs off the Trio thread; cancellable."""
        ...

    async def warm_up(self) -> None:
        """One judgement, so the first real one is not slowed by the model's set-up."""
        ...


class TextEndOfTurnModel(Protocol):
    async def probability(self, text: str) -> float:
        """Probability (0-1) that ``text``, the transcript of the turn so far, is a finished
        sentence. Runs off the Trio thread; cancellable (it may wait out a call in progress)."""
        ...

    async def warm_up(self) -> None:
        """One judgement, so the first real one is not slowed by the model's set-up."""
        ...


@attrs.frozen(kw_only=True)
class Engines:
    """The engines one process shares among all its sessions (models are loaded once)."""

    stt: SpeechToText
    llm: LanguageModel
    tts: TextToSpeech
    vad: VoiceActivityModel
    #: Tools the server runs itself (:mod:`voiceorch.engines.tools`), offered to the LLM beside
    #: the client's own; None: none.
    tools: ServerTools | None = None
    #: The audio end-of-turn model of ``semantic_vad`` (:mod:`voiceorch.engines.end_of_turn`);
    #: None: ``semantic_vad`` judges by the transcript alone.
    end_of_turn: EndOfTurnModel | None = None
    #: The text end-of-turn model of ``semantic_vad`` (:mod:`voiceorch.engines.text_end_of_turn`):
    #: it scores the transcript of the turn so far; None: the transcript rule alone judges the words.
    text_end_of_turn: TextEndOfTurnModel | None = None
