"""The OpenAI Realtime API's WebSocket events (GA names), as far as voiceorch speaks them.

Small frozen attrs classes, like :mod:`voiceorch.protocol.events`: each event class carries its
wire name in ``TYPE``; fields are keyword-only. Client events are parsed leniently about what
they may carry (unknown fields are ignored) and strictly about the types of the fields that
are read. Server events are complete: every field the official SDK's models require is
always present, a field with no value is ``null``.

The field names and shapes follow ``openai.types.realtime`` of the official Python SDK.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, Union

import attrs

from ..protocol import ResponseMetrics

#: The one audio format this endpoint accepts and sends: 16-bit PCM, mono, 24 kHz.
SAMPLE_RATE = 24_000

# --- values a client sends (all optional: an omitted field keeps its value) -------------------


@attrs.frozen(kw_only=True)
class AudioFormatIn:
    type: str | None = None
    rate: int | None = None


@attrs.frozen(kw_only=True)
class TurnDetectionIn:
    """``audio.input.turn_detection``; JSON ``null`` arrives here as ``type="none"``."""

    type: str
    threshold: float | None = None
    prefix_padding_ms: int | None = None
    silence_duration_ms: int | None = None
    create_response: bool | None = None
    interrupt_response: bool | None = None
    idle_timeout_ms: int | None = None
    eagerness: str | None = None


@attrs.frozen(kw_only=True)
class AudioInputIn:
    format: AudioFormatIn | None = None
    turn_detection: TurnDetectionIn | None = None
    transcription: Any = None
    noise_reduction: Any = None


@attrs.frozen(kw_only=True)
class AudioOutputIn:
    format: AudioFormatIn | None = None
    voice: Any = None
    speed: float | None = None


@attrs.frozen(kw_only=True)
class AudioIn:
    input: AudioInputIn | None = None
    output: AudioOutputIn | None = None


@attrs.frozen(kw_only=True)
class SessionIn:
    """The ``session`` of a ``session.update``."""

    type: str | None = None
    instructions: str | None = None
    audio: AudioIn | None = None
    output_modalities: list[str] | None = None
    tools: list[Any] | None = None
    model: str | None = None
    tool_choice: Any = None
    # Accepted and echoed, without effect (see docs/realtime.md).
    max_output_tokens: Any = None
    tracing: Any = None
    truncation: Any = None
    prompt: Any = None
    include: Any = None
    # Fields of the beta API's session; refused with a pointer to their GA place.
    input_audio_format: Any = None
    output_audio_format: Any = None
    turn_detection: Any = None
    modalities: Any = None
    voice: Any = None
    input_audio_transcription: Any = None


@attrs.frozen(kw_only=True)
class ContentIn:
    type: str
    text: str | None = None
    audio: str | None = None
    transcript: str | None = None


@attrs.frozen(kw_only=True)
class ItemIn:
    type: str
    role: str | None = None
    content: list[ContentIn] | None = None
    id: str | None = None
    #: A ``function_call_output`` item's.
    call_id: str | None = None
    output: str | None = None


@attrs.frozen(kw_only=True)
class ResponseAudioIn:
    output: AudioOutputIn | None = None


@attrs.frozen(kw_only=True)
class ResponseParamsIn:
    """The ``response`` of a ``response.create``."""

    instructions: str | None = None
    conversation: str | None = None
    input: list[Any] | None = None
    tools: list[Any] | None = None
    output_modalities: list[str] | None = None
    audio: ResponseAudioIn | None = None
    # Accepted, without effect.
    metadata: Any = None
    max_output_tokens: Any = None
    tool_choice: Any = None
    prompt: Any = None


# --- client -> server -------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class SessionUpdate:
    TYPE: ClassVar[str] = "session.update"
    session: SessionIn
    event_id: str | None = None


@attrs.frozen(kw_only=True)
class InputAudioBufferAppend:
    TYPE: ClassVar[str] = "input_audio_buffer.append"
    audio: str  # base64 of PCM16 at 24 kHz
    event_id: str | None = None


@attrs.frozen(kw_only=True)
class InputAudioBufferCommit:
    TYPE: ClassVar[str] = "input_audio_buffer.commit"
    event_id: str | None = None


@attrs.frozen(kw_only=True)
class InputAudioBufferClear:
    TYPE: ClassVar[str] = "input_audio_buffer.clear"
    event_id: str | None = None


@attrs.frozen(kw_only=True)
class ConversationItemCreate:
    TYPE: ClassVar[str] = "conversation.item.create"
    item: ItemIn
    previous_item_id: str | None = None
    event_id: str | None = None


@attrs.frozen(kw_only=True)
class ConversationItemTruncate:
    TYPE: ClassVar[str] = "conversation.item.truncate"
    item_id: str
    content_index: int
    audio_end_ms: int
    event_id: str | None = None


@attrs.frozen(kw_only=True)
class ResponseCreate:
    TYPE: ClassVar[str] = "response.create"
    response: ResponseParamsIn | None = None
    event_id: str | None = None


@attrs.frozen(kw_only=True)
class ResponseCancel:
    TYPE: ClassVar[str] = "response.cancel"
    response_id: str | None = None
    event_id: str | None = None


ClientEvent = Union[
    SessionUpdate,
    InputAudioBufferAppend,
    InputAudioBufferCommit,
    InputAudioBufferClear,
    ConversationItemCreate,
    ConversationItemTruncate,
    ResponseCreate,
    ResponseCancel,
]

#: Client events of the Realtime API that this endpoint knows and refuses (``unsupported_event``).
UNSUPPORTED_CLIENT_TYPES = frozenset(
    {"conversation.item.delete", "conversation.item.retrieve", "output_audio_buffer.clear"}
)

# --- values the server sends (complete) -------------------------------------------------------


@attrs.frozen(kw_only=True)
class AudioFormat:
    type: str = "audio/pcm"
    rate: int = SAMPLE_RATE


PCM_24K = AudioFormat()


@attrs.frozen(kw_only=True)
class ServerVad:
    type: Literal["server_vad"] = "server_vad"
    threshold: float
    prefix_padding_ms: int
    silence_duration_ms: int
    create_response: bool = True
    interrupt_response: bool = True
    idle_timeout_ms: int | None = None


@attrs.frozen(kw_only=True)
class SemanticVad:
    type: Literal["semantic_vad"] = "semantic_vad"
    eagerness: Literal["low", "medium", "high", "auto"] = "auto"
    create_response: bool = True
    interrupt_response: bool = True


@attrs.frozen(kw_only=True)
class AudioInput:
    format: AudioFormat = PCM_24K
    transcription: Any = None
    noise_reduction: Any = None
    turn_detection: ServerVad | SemanticVad | None = None


@attrs.frozen(kw_only=True)
class AudioOutput:
    format: AudioFormat = PCM_24K
    voice: Any = None
    speed: float = 1.0


@attrs.frozen(kw_only=True)
class Audio:
    input: AudioInput
    output: AudioOutput


@attrs.frozen(kw_only=True)
class Session:
    """The effective session, sent whole by ``session.created`` and ``session.updated``."""

    type: Literal["realtime"] = "realtime"
    object: Literal["realtime.session"] = "realtime.session"
    id: str
    model: str
    output_modalities: tuple[str, ...] = ("audio",)
    instructions: str
    audio: Audio
    tools: tuple[Any, ...] = ()
    tool_choice: Any = "auto"
    max_output_tokens: Any = "inf"
    tracing: Any = None
    truncation: Any = "auto"
    prompt: Any = None
    include: Any = None


@attrs.frozen(kw_only=True)
class InputTextContent:
    type: Literal["input_text"] = "input_text"
    text: str


@attrs.frozen(kw_only=True)
class InputAudioContent:
    type: Literal["input_audio"] = "input_audio"
    transcript: str | None = None


@attrs.frozen(kw_only=True)
class OutputAudioContent:
    type: Literal["output_audio"] = "output_audio"
    transcript: str = ""


@attrs.frozen(kw_only=True)
class OutputTextContent:
    type: Literal["output_text"] = "output_text"
    text: str = ""


ItemStatus = Literal["completed", "incomplete", "in_progress"]


@attrs.frozen(kw_only=True)
class UserMessage:
    id: str
    type: Literal["message"] = "message"
    object: Literal["realtime.item"] = "realtime.item"
    status: ItemStatus = "completed"
    role: Literal["user"] = "user"
    content: tuple[InputTextContent | InputAudioContent, ...]


@attrs.frozen(kw_only=True)
class AssistantMessage:
    id: str
    type: Literal["message"] = "message"
    object: Literal["realtime.item"] = "realtime.item"
    status: ItemStatus
    role: Literal["assistant"] = "assistant"
    content: tuple[OutputAudioContent | OutputTextContent, ...]


@attrs.frozen(kw_only=True)
class SystemMessage:
    id: str
    type: Literal["message"] = "message"
    object: Literal["realtime.item"] = "realtime.item"
    status: ItemStatus = "completed"
    role: Literal["system"] = "system"
    content: tuple[InputTextContent, ...]


@attrs.frozen(kw_only=True)
class FunctionCallItem:
    """A call of one of the client's functions, made by the model."""

    id: str
    type: Literal["function_call"] = "function_call"
    object: Literal["realtime.item"] = "realtime.item"
    status: ItemStatus
    call_id: str
    name: str
    arguments: str


@attrs.frozen(kw_only=True)
class FunctionCallOutputItem:
    """The client's result of a function call."""

    id: str
    type: Literal["function_call_output"] = "function_call_output"
    object: Literal["realtime.item"] = "realtime.item"
    status: ItemStatus = "completed"
    call_id: str
    output: str


OutputItem = Union[AssistantMessage, FunctionCallItem]
Item = Union[UserMessage, AssistantMessage, SystemMessage, FunctionCallItem, FunctionCallOutputItem]


@attrs.frozen(kw_only=True)
class ContentPart:
    """The part of ``response.content_part.added`` / ``.done``."""

    type: Literal["audio"] = "audio"
    transcript: str = ""


@attrs.frozen(kw_only=True)
class TextPart:
    """The part of a text-only response (``output_modalities: ["text"]``)."""

    type: Literal["text"] = "text"
    text: str = ""


@attrs.frozen(kw_only=True)
class StatusError:
    type: str
    code: str | None = None
    message: str | None = None


@attrs.frozen(kw_only=True)
class StatusDetails:
    type: Literal["completed", "cancelled", "incomplete", "failed"]
    reason: str | None = None
    error: StatusError | None = None


@attrs.frozen(kw_only=True)
class ResponseAudioOutput:
    format: AudioFormat = PCM_24K
    voice: Any = None


@attrs.frozen(kw_only=True)
class ResponseAudio:
    output: ResponseAudioOutput = ResponseAudioOutput()


@attrs.frozen(kw_only=True)
class VoiceorchDetails:
    """An extension field of ``response.done``: what the user heard, and the timings (v1's own
    ``response.done`` metrics, unchanged)."""

    status: str
    heard_text: str
    metrics: ResponseMetrics


ResponseStatus = Literal["in_progress", "completed", "cancelled", "incomplete", "failed"]


@attrs.frozen(kw_only=True)
class Response:
    id: str
    object: Literal["realtime.response"] = "realtime.response"
    status: ResponseStatus
    status_details: StatusDetails | None = None
    output: tuple[OutputItem, ...] = ()
    conversation_id: str | None = None
    output_modalities: tuple[str, ...] = ("audio",)
    max_output_tokens: Any = "inf"
    audio: ResponseAudio = ResponseAudio()
    usage: Any = None
    metadata: Any = None
    voiceorch: VoiceorchDetails | None = None


@attrs.frozen(kw_only=True)
class ErrorInfo:
    type: str  # "invalid_request_error" (the client's event) or "server_error"
    code: str | None
    message: str
    param: str | None = None
    event_id: str | None = None  # the client event that caused it, when known


@attrs.frozen(kw_only=True)
class DurationUsage:
    type: Literal["duration"] = "duration"
    seconds: float


@attrs.frozen(kw_only=True)
class TranscriptionError:
    type: str
    code: str | None
    message: str
    param: str | None = None


# --- server -> client -------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class SessionCreated:
    TYPE: ClassVar[str] = "session.created"
    event_id: str
    session: Session


@attrs.frozen(kw_only=True)
class SessionUpdated:
    TYPE: ClassVar[str] = "session.updated"
    event_id: str
    session: Session


@attrs.frozen(kw_only=True)
class InputAudioBufferCommitted:
    TYPE: ClassVar[str] = "input_audio_buffer.committed"
    event_id: str
    item_id: str
    previous_item_id: str | None = None


@attrs.frozen(kw_only=True)
class InputAudioBufferCleared:
    TYPE: ClassVar[str] = "input_audio_buffer.cleared"
    event_id: str


@attrs.frozen(kw_only=True)
class InputAudioBufferSpeechStarted:
    TYPE: ClassVar[str] = "input_audio_buffer.speech_started"
    event_id: str
    audio_start_ms: int
    item_id: str


@attrs.frozen(kw_only=True)
class InputAudioBufferSpeechStopped:
    TYPE: ClassVar[str] = "input_audio_buffer.speech_stopped"
    event_id: str
    audio_end_ms: int
    item_id: str


@attrs.frozen(kw_only=True)
class ConversationItemAdded:
    TYPE: ClassVar[str] = "conversation.item.added"
    event_id: str
    item: Item
    previous_item_id: str | None = None


@attrs.frozen(kw_only=True)
class ConversationItemDone:
    TYPE: ClassVar[str] = "conversation.item.done"
    event_id: str
    item: Item
    previous_item_id: str | None = None


@attrs.frozen(kw_only=True)
class TranscriptionCompleted:
    TYPE: ClassVar[str] = "conversation.item.input_audio_transcription.completed"
    event_id: str
    item_id: str
    content_index: int = 0
    transcript: str
    usage: DurationUsage


@attrs.frozen(kw_only=True)
class TranscriptionDelta:
    TYPE: ClassVar[str] = "conversation.item.input_audio_transcription.delta"
    event_id: str
    item_id: str
    content_index: int = 0
    delta: str


@attrs.frozen(kw_only=True)
class TranscriptionFailed:
    TYPE: ClassVar[str] = "conversation.item.input_audio_transcription.failed"
    event_id: str
    item_id: str
    content_index: int = 0
    error: TranscriptionError


@attrs.frozen(kw_only=True)
class ConversationItemTruncated:
    TYPE: ClassVar[str] = "conversation.item.truncated"
    event_id: str
    item_id: str
    content_index: int
    audio_end_ms: int


@attrs.frozen(kw_only=True)
class ResponseCreated:
    TYPE: ClassVar[str] = "response.created"
    event_id: str
    response: Response


@attrs.frozen(kw_only=True)
class ResponseOutputItemAdded:
    TYPE: ClassVar[str] = "response.output_item.added"
    event_id: str
    response_id: str
    output_index: int = 0
    item: OutputItem


@attrs.frozen(kw_only=True)
class ResponseOutputItemDone:
    TYPE: ClassVar[str] = "response.output_item.done"
    event_id: str
    response_id: str
    output_index: int = 0
    item: OutputItem


@attrs.frozen(kw_only=True)
class ResponseContentPartAdded:
    TYPE: ClassVar[str] = "response.content_part.added"
    event_id: str
    response_id: str
    item_id: str
    output_index: int = 0
    content_index: int = 0
    part: ContentPart | TextPart


@attrs.frozen(kw_only=True)
class ResponseContentPartDone:
    TYPE: ClassVar[str] = "response.content_part.done"
    event_id: str
    response_id: str
    item_id: str
    output_index: int = 0
    content_index: int = 0
    part: ContentPart | TextPart


@attrs.frozen(kw_only=True)
class ResponseOutputAudioDelta:
    TYPE: ClassVar[str] = "response.output_audio.delta"
    event_id: str
    response_id: str
    item_id: str
    output_index: int = 0
    content_index: int = 0
    delta: str  # base64 of PCM16 at 24 kHz


@attrs.frozen(kw_only=True)
class ResponseOutputAudioDone:
    TYPE: ClassVar[str] = "response.output_audio.done"
    event_id: str
    response_id: str
    item_id: str
    output_index: int = 0
    content_index: int = 0


@attrs.frozen(kw_only=True)
class ResponseOutputAudioTranscriptDelta:
    TYPE: ClassVar[str] = "response.output_audio_transcript.delta"
    event_id: str
    response_id: str
    item_id: str
    output_index: int = 0
    content_index: int = 0
    delta: str


@attrs.frozen(kw_only=True)
class ResponseOutputAudioTranscriptDone:
    TYPE: ClassVar[str] = "response.output_audio_transcript.done"
    event_id: str
    response_id: str
    item_id: str
    output_index: int = 0
    content_index: int = 0
    transcript: str


@attrs.frozen(kw_only=True)
class ResponseOutputTextDelta:
    TYPE: ClassVar[str] = "response.output_text.delta"
    event_id: str
    response_id: str
    item_id: str
    output_index: int = 0
    content_index: int = 0
    delta: str


@attrs.frozen(kw_only=True)
class ResponseOutputTextDone:
    TYPE: ClassVar[str] = "response.output_text.done"
    event_id: str
    response_id: str
    item_id: str
    output_index: int = 0
    content_index: int = 0
    text: str


@attrs.frozen(kw_only=True)
class ResponseFunctionCallArgumentsDelta:
    TYPE: ClassVar[str] = "response.function_call_arguments.delta"
    event_id: str
    response_id: str
    item_id: str
    output_index: int
    call_id: str
    delta: str


@attrs.frozen(kw_only=True)
class ResponseFunctionCallArgumentsDone:
    TYPE: ClassVar[str] = "response.function_call_arguments.done"
    event_id: str
    response_id: str
    item_id: str
    output_index: int
    call_id: str
    name: str
    arguments: str


@attrs.frozen(kw_only=True)
class ResponseDone:
    TYPE: ClassVar[str] = "response.done"
    event_id: str
    response: Response


@attrs.frozen(kw_only=True)
class Error:
    TYPE: ClassVar[str] = "error"
    event_id: str
    error: ErrorInfo


ServerEvent = Union[
    SessionCreated,
    SessionUpdated,
    InputAudioBufferCommitted,
    InputAudioBufferCleared,
    InputAudioBufferSpeechStarted,
    InputAudioBufferSpeechStopped,
    ConversationItemAdded,
    ConversationItemDone,
    TranscriptionCompleted,
    TranscriptionDelta,
    TranscriptionFailed,
    ConversationItemTruncated,
    ResponseCreated,
    ResponseOutputItemAdded,
    ResponseOutputItemDone,
    ResponseContentPartAdded,
    ResponseContentPartDone,
    ResponseOutputAudioDelta,
    ResponseOutputAudioDone,
    ResponseOutputAudioTranscriptDelta,
    ResponseOutputAudioTranscriptDone,
    ResponseOutputTextDelta,
    ResponseOutputTextDone,
    ResponseFunctionCallArgumentsDelta,
    ResponseFunctionCallArgumentsDone,
    ResponseDone,
    Error,
]
