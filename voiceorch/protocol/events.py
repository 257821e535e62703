"""The events of wire protocol v1, as small frozen attrs classes.

Control messages are JSON text frames whose ``type`` field names the event; audio travels in
binary frames of raw PCM (see :data:`AUDIO_FORMAT`). Each class carries its wire name in
``TYPE``. Fields are keyword-only: order means nothing on the wire.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal, Union

import attrs

from .strict_json import OMIT_IF_DEFAULT

# --- audio ------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class AudioFormat:
    format: Literal["pcm_s16le"] = "pcm_s16le"
    sample_rate: int = 16_000
    channels: int = 1


#: The one audio format of protocol v1, both ways: signed 16-bit little-endian mono at 16 kHz.
AUDIO_FORMAT = AudioFormat()
BYTES_PER_MS = AUDIO_FORMAT.sample_rate * 2 // 1000  # 32


def audio_ms(num_bytes: int) -> float:
    """Duration of ``num_bytes`` of wire-format PCM, in milliseconds."""
    return num_bytes / BYTES_PER_MS


# --- the session ------------------------------------------------------------------------------

_unit = [attrs.validators.ge(0.0), attrs.validators.le(1.0)]
_ms_range = [attrs.validators.ge(0), attrs.validators.le(60_000)]

#: Words that, alone, say "go on" rather than take the turn (``turn_detection.backchannels``).
#: Matched whole, case and punctuation aside, with letters repeated or not ("mm-hmm" = "mm-hm").
DEFAULT_BACKCHANNELS: tuple[str, ...] = (
    "mm-hm",
    "mhm",
    "mm",
    "hm",
    "uh-huh",
    "uh",
    "um",
    "ah",
    "oh",
    "yeah",
    "yes",
    "yep",
    "yup",
    "okay",
    "ok",
    "right",
    "sure",
    "alright",
    "all right",
    "i see",
    "got it",
    "cool",
    "nice",
    "wow",
    "really",
)

InterruptionMode = Literal["immediate", "pause_and_decide"]


def _phrases(_instance: object, attribute: attrs.Attribute, value: tuple[str, ...]) -> None:
    if len(value) > 200:
        raise ValueError(f"{attribute.name} holds at most 200 phrases")
    for phrase in value:
        if not phrase.strip() or len(phrase) > 40:
            raise ValueError(f"{attribute.name}: each phrase has 1 to 40 characters, not {phrase!r}")


@attrs.frozen(kw_only=True)
class TurnDetection:
    """How the end of the user's turn is found (the shape of the OpenAI Realtime API's).

    ``server_vad``: the server detects speech; a turn ends after ``silence_duration_ms`` of
    silence, and speech while a response is in progress interrupts it (barge-in).
    ``semantic_vad``: the same speech detection, but when a pause begins an end-of-turn model
    judges whether the user has finished: the turn ends after a short silence (~200 ms) when
    they have, and after up to ``eagerness``'s cap (1-3 s) when they have not
    (``silence_duration_ms`` is not used). ``none``: push-to-talk, the client ends each turn with
    ``input_audio.commit``.

    ``interruption``: ``immediate`` ends the response at the barge-in; ``pause_and_decide``
    pauses its audio there, then ends it only if the overlapping speech holds at least
    ``interrupt_min_words`` words that are not ``backchannels`` (else it resumes), deciding
    within ``interrupt_decision_ms`` of the pause, or of the speech's latest pause (when the
    time is up, it ends it).
    """

    type: Literal["server_vad", "semantic_vad", "none"] = "server_vad"
    #: Speech probability (0-1) from which a 32 ms chunk counts as speech.
    threshold: float = attrs.field(default=0.5, validator=_unit)
    #: Audio kept from before the detected start of speech and sent to STT with it.
    prefix_padding_ms: int = attrs.field(default=300, validator=_ms_range)
    #: Silence that ends the user's turn.
    silence_duration_ms: int = attrs.field(default=500, validator=_ms_range)
    #: Speech needed before speech counts as started (shorter noises are ignored).
    min_speech_duration_ms: int = attrs.field(default=150, validator=_ms_range)
    #: Whether speech interrupts a response in progress, and after how much speech.
    interrupt_response: bool = True
    interrupt_min_speech_ms: int = attrs.field(default=200, validator=_ms_range)
    #: Under ``semantic_vad``, how long an unfinished-sounding pause may last before the turn ends
    #: anyway: ``high`` 1 s, ``medium`` and ``auto`` 2 s, ``low`` 3 s.
    eagerness: Literal["low", "medium", "high", "auto"] = attrs.field(default="auto", metadata={OMIT_IF_DEFAULT: True})
    interruption: InterruptionMode = "pause_and_decide"
    interrupt_min_words: int = attrs.field(default=1, validator=[attrs.validators.ge(1), attrs.validators.le(20)])
    interrupt_decision_ms: int = attrs.field(
        default=4000, validator=[attrs.validators.ge(100), attrs.validators.le(10_000)]
    )
    backchannels: tuple[str, ...] = attrs.field(default=DEFAULT_BACKCHANNELS, validator=_phrases)


def _optional(validators: list) -> object:
    return attrs.validators.optional(attrs.validators.and_(*validators))


@attrs.frozen(kw_only=True)
class TurnDetectionPatch:
    type: Literal["server_vad", "semantic_vad", "none"] | None = None
    threshold: float | None = attrs.field(default=None, validator=_optional(_unit))
    prefix_padding_ms: int | None = attrs.field(default=None, validator=_optional(_ms_range))
    silence_duration_ms: int | None = attrs.field(default=None, validator=_optional(_ms_range))
    min_speech_duration_ms: int | None = attrs.field(default=None, validator=_optional(_ms_range))
    interrupt_response: bool | None = None
    interrupt_min_speech_ms: int | None = attrs.field(default=None, validator=_optional(_ms_range))
    eagerness: Literal["low", "medium", "high", "auto"] | None = None
    interruption: InterruptionMode | None = None
    interrupt_min_words: int | None = attrs.field(
        default=None, validator=_optional([attrs.validators.ge(1), attrs.validators.le(20)])
    )
    interrupt_decision_ms: int | None = attrs.field(
        default=None, validator=_optional([attrs.validators.ge(100), attrs.validators.le(10_000)])
    )
    backchannels: tuple[str, ...] | None = attrs.field(default=None, validator=attrs.validators.optional(_phrases))


#: A function's name: letters, digits, ``_`` and ``-``, at most 64 (as the OpenAI API has it).
TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: A session declares at most this many tools.
MAX_TOOLS = 128
#: ``tool_choice`` values besides the name of one of the session's tools.
TOOL_CHOICES = ("auto", "none", "required")
#: What a response may be made of: spoken audio (with its text), or text alone.
OUTPUT_MODALITIES = (("audio",), ("text",))
Modality = Literal["audio", "text"]


def _check_modalities(_instance: object, _attribute: object, value: tuple[str, ...] | None) -> None:
    if value is not None and value not in OUTPUT_MODALITIES:
        raise ValueError(f'output_modalities is ["audio"] or ["text"]; got {list(value)}')


def _check_tool_name(_instance: object, _attribute: object, name: str) -> None:
    if not TOOL_NAME.fullmatch(name):
        raise ValueError(f"a tool name is 1-64 letters, digits, '_' or '-'; got {name!r}")


def _check_schema(_instance: object, _attribute: object, schema: dict[str, Any]) -> None:
    if schema.get("type", "object") != "object":
        raise ValueError("a tool's parameters are a JSON Schema of an object (its 'type' is 'object')")


@attrs.frozen(kw_only=True)
class Tool:
    """A function the client offers the LLM; the client runs it when asked (``response.tool_call``)."""

    type: Literal["function"] = "function"
    name: str = attrs.field(validator=_check_tool_name)
    description: str = ""
    #: JSON Schema of the arguments object.
    parameters: dict[str, Any] = attrs.field(
        factory=lambda: {"type": "object", "properties": {}}, validator=_check_schema
    )


def _check_tools(_instance: object, _attribute: object, tools: tuple[Tool, ...] | None) -> None:
    if tools is None:
        return
    if len(tools) > MAX_TOOLS:
        raise ValueError(f"a session has at most {MAX_TOOLS} tools; got {len(tools)}")
    names = [tool.name for tool in tools]
    if len(set(names)) != len(names):
        raise ValueError(f"tool names must be unique; {sorted({n for n in names if names.count(n) > 1})} repeat")


@attrs.frozen(kw_only=True)
class SessionConfig:
    """The effective configuration of one session, echoed whole by ``session.updated``.

    ``tools`` and ``tool_choice`` appear only once set. ``tool_choice`` is ``auto`` (the LLM
    decides), ``none``, ``required`` (it must call a tool), or the name of one of ``tools``
    (it must call that one); it applies to the first LLM request of a response, and ``auto``
    to those that follow a tool's result."""

    instructions: str
    turn_detection: TurnDetection = TurnDetection()
    tools: tuple[Tool, ...] = attrs.field(default=(), metadata={OMIT_IF_DEFAULT: True})
    tool_choice: str = attrs.field(default="auto", metadata={OMIT_IF_DEFAULT: True})
    #: ``["audio"]``: spoken replies (and their text); ``["text"]``: text alone, no audio.
    output_modalities: tuple[Modality, ...] = attrs.field(default=("audio",), metadata={OMIT_IF_DEFAULT: True})

    def __attrs_post_init__(self) -> None:
        if self.tool_choice not in TOOL_CHOICES and self.tool_choice not in {tool.name for tool in self.tools}:
            raise ValueError(
                f"tool_choice is 'auto', 'none', 'required' or the name of one of the session's tools; "
                f"got {self.tool_choice!r}"
            )


def _changes(patch: object) -> dict:
    return {f.name: getattr(patch, f.name) for f in attrs.fields(type(patch)) if getattr(patch, f.name) is not None}


@attrs.frozen(kw_only=True)
class SessionPatch:
    """The fields a ``session.update`` may set; an omitted field keeps its value."""

    instructions: str | None = None
    turn_detection: TurnDetectionPatch | None = None
    tools: tuple[Tool, ...] | None = attrs.field(default=None, validator=_check_tools)
    tool_choice: str | None = None
    output_modalities: tuple[Modality, ...] | None = attrs.field(default=None, validator=_check_modalities)

    def apply(self, config: SessionConfig) -> SessionConfig:
        """The configuration with this patch applied. Raises ``ValueError`` if the result is
        inconsistent (a ``tool_choice`` naming a tool the session does not have)."""
        changes = _changes(self)
        if self.turn_detection is not None:
            changes["turn_detection"] = attrs.evolve(config.turn_detection, **_changes(self.turn_detection))
        return attrs.evolve(config, **changes)


# --- client -> server -------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class SessionUpdate:
    TYPE: ClassVar[str] = "session.update"
    session: SessionPatch


@attrs.frozen(kw_only=True)
class InputAudioCommit:
    """The user's turn ends now: answer the audio buffered since the last commit or clear."""

    TYPE: ClassVar[str] = "input_audio.commit"


@attrs.frozen(kw_only=True)
class InputAudioClear:
    TYPE: ClassVar[str] = "input_audio.clear"


@attrs.frozen(kw_only=True)
class InputText:
    """A typed user turn."""

    TYPE: ClassVar[str] = "input_text"
    text: str


@attrs.frozen(kw_only=True)
class ResponseCancel:
    TYPE: ClassVar[str] = "response.cancel"


@attrs.frozen(kw_only=True)
class PlaybackPosition:
    """How much of a response's audio the client has really played (it wins over the estimate)."""

    TYPE: ClassVar[str] = "playback.position"
    turn_id: str
    played_ms: float = attrs.field(validator=attrs.validators.ge(0.0))


@attrs.frozen(kw_only=True)
class ToolCallOutput:
    """The client's answer to ``response.tool_call`` ``call_id``: the function's result, as
    text for the LLM (usually JSON)."""

    TYPE: ClassVar[str] = "tool_call.output"
    call_id: str
    output: str


@attrs.frozen(kw_only=True)
class HistoryAdd:
    """Add a message to the conversation memory (history injection), without a response: a
    ``user`` or ``assistant`` message of an earlier exchange, or a ``system`` note."""

    TYPE: ClassVar[str] = "history.add"
    role: Literal["user", "assistant", "system"]
    text: str


ClientEvent = Union[
    SessionUpdate,
    InputAudioCommit,
    InputAudioClear,
    InputText,
    ResponseCancel,
    PlaybackPosition,
    ToolCallOutput,
    HistoryAdd,
]

# --- server -> client -------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class SessionCreated:
    TYPE: ClassVar[str] = "session.created"
    session_id: str
    audio: AudioFormat
    session: SessionConfig


@attrs.frozen(kw_only=True)
class SessionUpdated:
    TYPE: ClassVar[str] = "session.updated"
    session: SessionConfig


@attrs.frozen(kw_only=True)
class InputAudioCommitted:
    """The buffered audio became the user's turn ``turn_id``."""

    TYPE: ClassVar[str] = "input_audio.committed"
    turn_id: str
    audio_ms: float


@attrs.frozen(kw_only=True)
class InputAudioCleared:
    TYPE: ClassVar[str] = "input_audio.cleared"
    audio_ms: float


@attrs.frozen(kw_only=True)
class SpeechStartedEvent:
    """Server VAD heard speech start at ``audio_ms`` into the session's input audio."""

    TYPE: ClassVar[str] = "input_audio.speech_started"
    audio_ms: float


@attrs.frozen(kw_only=True)
class SpeechStoppedEvent:
    TYPE: ClassVar[str] = "input_audio.speech_stopped"
    audio_ms: float


@attrs.frozen(kw_only=True)
class ResponseCreated:
    TYPE: ClassVar[str] = "response.created"
    turn_id: str


@attrs.frozen(kw_only=True)
class TranscriptFinal:
    TYPE: ClassVar[str] = "transcript.final"
    turn_id: str
    text: str


@attrs.frozen(kw_only=True)
class TranscriptDelta:
    """Words of the user's speech in progress, transcribed while they speak on (a piece of
    their turn, cut at one of their pauses). The turn's ``transcript.final`` has them all."""

    TYPE: ClassVar[str] = "transcript.delta"
    delta: str


@attrs.frozen(kw_only=True)
class ResponseTextDelta:
    TYPE: ClassVar[str] = "response.text.delta"
    turn_id: str
    delta: str


@attrs.frozen(kw_only=True)
class ResponseToolCallDelta:
    """The LLM is writing a call of the client's function ``name``: the next piece of its
    arguments (for display; run nothing before ``response.tool_call``)."""

    TYPE: ClassVar[str] = "response.tool_call.delta"
    turn_id: str
    call_id: str
    name: str
    delta: str


@attrs.frozen(kw_only=True)
class ResponseToolCall:
    """Run the client's function ``name`` with ``arguments`` (a JSON object's text) and answer
    with ``tool_call.output`` ``call_id``; the response goes on with its result."""

    TYPE: ClassVar[str] = "response.tool_call"
    turn_id: str
    call_id: str
    name: str
    arguments: str


@attrs.frozen(kw_only=True)
class ResponseInterrupted:
    """The user spoke over response ``turn_id``: drop its buffered audio now.

    ``played_ms`` is how much of its audio the user heard, ``heard_text`` the words of it.
    """

    TYPE: ClassVar[str] = "response.interrupted"
    turn_id: str
    played_ms: float
    heard_text: str


@attrs.frozen(kw_only=True)
class ResponsePaused:
    """The user began speaking over response ``turn_id`` (``interruption``
    ``pause_and_decide``): stop playing it now and drop its buffered audio. Either
    ``response.resumed`` (it goes on) or ``response.interrupted`` (it ends) follows.

    ``played_ms`` is the server's estimate of how much of its audio the user heard.
    """

    TYPE: ClassVar[str] = "response.paused"
    turn_id: str
    played_ms: float


@attrs.frozen(kw_only=True)
class ResponseResumed:
    """The speech over paused response ``turn_id`` was not an interruption: ``overlap`` says
    what it was (``noise``: no words; ``backchannel``: only words of ``backchannels``;
    ``too_few_words``: fewer than ``interrupt_min_words`` other words), ``transcript`` what
    speech-to-text made of it. The audio that follows starts ``resume_ms`` into the
    response's audio, at the start of the first word the user did not hear; ``heard_text``
    is the reply's text before it. ``played_ms`` is where it was paused."""

    TYPE: ClassVar[str] = "response.resumed"
    turn_id: str
    played_ms: float
    resume_ms: float
    heard_text: str
    overlap: Literal["noise", "backchannel", "too_few_words"]
    transcript: str


ResponseStatus = Literal["completed", "cancelled", "interrupted", "failed"]


@attrs.frozen(kw_only=True)
class ResponseMetrics:
    """Milliseconds; ``None`` where the stage did not run (a text turn has no ``stt_ms``)."""

    stt_ms: float | None = None
    llm_ttft_ms: float | None = None
    tts_first_audio_ms: float | None = None
    ttfb_ms: float | None = None
    total_ms: float | None = None
    audio_ms: float = 0.0


@attrs.frozen(kw_only=True)
class ResponseDone:
    """``truncated``: the LLM's reply was cut off at its token limit (sent only when true)."""

    TYPE: ClassVar[str] = "response.done"
    turn_id: str
    status: ResponseStatus
    text: str
    metrics: ResponseMetrics
    truncated: bool = attrs.field(default=False, metadata={OMIT_IF_DEFAULT: True})


@attrs.frozen(kw_only=True)
class Error:
    TYPE: ClassVar[str] = "error"
    code: str
    message: str
    turn_id: str | None = None


ServerEvent = Union[
    SessionCreated,
    SessionUpdated,
    InputAudioCommitted,
    InputAudioCleared,
    SpeechStartedEvent,
    SpeechStoppedEvent,
    ResponseCreated,
    TranscriptFinal,
    TranscriptDelta,
    ResponseTextDelta,
    ResponseToolCallDelta,
    ResponseToolCall,
    ResponseInterrupted,
    ResponsePaused,
    ResponseResumed,
    ResponseDone,
    Error,
]
