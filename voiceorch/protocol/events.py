"""The events of wire protocol v1, as small frozen attrs classes.

Control messages are JSON text frames whose ``type`` field names the event; audio travels in
binary frames of raw PCM (see :data:`AUDIO_FORMAT`). Each class carries its wire name in
``TYPE``. Fields are keyword-only: order means nothing on the wire.
"""

from __future__ import annotations

from typing import ClassVar, Literal, Union

import attrs

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


@attrs.frozen(kw_only=True)
class SessionConfig:
    """The effective configuration of one session, echoed whole by ``session.updated``."""

    instructions: str


@attrs.frozen(kw_only=True)
class SessionPatch:
    """The fields a ``session.update`` may set; an omitted field keeps its value."""

    instructions: str | None = None

    def apply(self, config: SessionConfig) -> SessionConfig:
        changes = {k: v for k, v in attrs.asdict(self).items() if v is not None}
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


ClientEvent = Union[SessionUpdate, InputAudioCommit, InputAudioClear, InputText, ResponseCancel]

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
class ResponseCreated:
    TYPE: ClassVar[str] = "response.created"
    turn_id: str


@attrs.frozen(kw_only=True)
class TranscriptFinal:
    TYPE: ClassVar[str] = "transcript.final"
    turn_id: str
    text: str


@attrs.frozen(kw_only=True)
class ResponseTextDelta:
    TYPE: ClassVar[str] = "response.text.delta"
    turn_id: str
    delta: str


ResponseStatus = Literal["completed", "cancelled", "failed"]


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
    TYPE: ClassVar[str] = "response.done"
    turn_id: str
    status: ResponseStatus
    text: str
    metrics: ResponseMetrics


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
    ResponseCreated,
    TranscriptFinal,
    ResponseTextDelta,
    ResponseDone,
    Error,
]
