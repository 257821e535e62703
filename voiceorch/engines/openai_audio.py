"""Speech-to-text and text-to-speech behind OpenAI-compatible audio endpoints (httpx).

``POST {base_url}/audio/transcriptions`` (multipart, a WAV file) and
``POST {base_url}/audio/speech`` (JSON; the reply is WAV or raw PCM), as OpenAI, vLLM,
speaches, faster-whisper-server and the like serve them. ``base_url`` ends in ``/v1``.
Each engine owns a pooled keep-alive ``httpx.AsyncClient``: call ``aclose`` when done. The
API key travels only in the ``Authorization`` header and is never logged, shown in ``repr``
or put in an error message.
"""

from __future__ import annotations

import io
import json
import wave
from typing import Literal

import attrs
import httpx
import numpy as np
import soundfile
import trio

from .base import SAMPLE_RATE, SAMPLE_WIDTH, EngineError, EngineLifecycle, SpeechToText, TextToSpeech
from .pcm import to_engine_pcm
from .remote_errors import (
    MAX_SENTENCE_AUDIO_S,
    MAX_TRANSCRIPT_BODY_BYTES,
    MAX_TRANSCRIPT_BYTES,
    error_snippet,
    read_capped,
    remote_call,
    warm_up_or_warn,
)

#: The largest WAV reply of one sentence: :data:`MAX_SENTENCE_AUDIO_S` of 48 kHz stereo
#: 16-bit audio (about 11 MB), plus room for the header. Its length in seconds at its own
#: rate is checked once it is decoded.
MAX_WAV_BYTES = MAX_SENTENCE_AUDIO_S * 48_000 * 2 * SAMPLE_WIDTH + 4096


@attrs.define(kw_only=True)
class _OpenAIAudioEngine(EngineLifecycle):
    """What the two audio engines share: the server, the key, the timeouts, the queue and
    the pooled HTTP client (closed by :meth:`aclose`)."""

    base_url: str = attrs.field(converter=lambda url: str(url).rstrip("/"))
    api_key: str | None = attrs.field(default=None, repr=False)
    connect_timeout: float = 2.0
    timeout: float = 15.0
    limiter: trio.CapacityLimiter = attrs.field(factory=lambda: trio.CapacityLimiter(4))
    _client: httpx.AsyncClient = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        connections = int(self.limiter.total_tokens)
        self._client = httpx.AsyncClient(
            headers={"Authorization": f"Bearer {self.api_key}"} if self.api_key else {},
            timeout=httpx.Timeout(self.timeout, connect=self.connect_timeout),
            limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
        )

    async def aclose(self) -> None:
        """Close the pooled connections."""
        await self._client.aclose()

    async def _raise_for_status(self, response: httpx.Response, kind: str, where: str) -> None:
        if not response.is_success:
            snippet = await error_snippet(response, self.api_key)
            raise EngineError(f"{kind}_failed", f"{where} answered {response.status_code}: {snippet}")


@attrs.define(kw_only=True)
class OpenAISTT(_OpenAIAudioEngine, SpeechToText):
    """Transcribes with ``POST {base_url}/audio/transcriptions`` (the utterance as a 16 kHz WAV).

    ``connect_timeout`` bounds connecting (``stt_unavailable``), ``timeout`` the whole call
    (``stt_timeout``). At most ``limiter``'s tokens requests go at once; more wait here. The
    reply is read up to :data:`MAX_TRANSCRIPT_BODY_BYTES`, the text up to
    :data:`MAX_TRANSCRIPT_BYTES` (``stt_failed`` beyond).
    """

    model: str = "whisper-1"
    language: str | None = "en"

    async def transcribe(self, pcm: bytes, *, prompt: str | None = None) -> str:
        """Transcribe one utterance of 16 kHz mono s16le PCM; returns the text, stripped.

        ``prompt`` (the text heard before this audio) goes to the server as the form field
        ``prompt`` when not empty. Cancellation closes the request's connection at once. Raises :class:`EngineError`
        ``stt_unavailable``, ``stt_timeout`` or ``stt_failed``.
        """
        if len(pcm) % SAMPLE_WIDTH:
            raise EngineError("stt_failed", "PCM length is not a whole number of 16-bit samples")
        if not pcm:
            return ""
        form = {"model": self.model, "response_format": "json"}
        if self.language:
            form["language"] = self.language
        if prompt and prompt.strip():
            form["prompt"] = prompt.strip()
        files = {"file": ("speech.wav", _wav_bytes(pcm), "audio/wav")}
        where = f"speech-to-text server {self.base_url}"
        url = f"{self.base_url}/audio/transcriptions"
        async with self.limiter:
            with remote_call("stt", where, self.timeout):
                async with self._client.stream("POST", url, data=form, files=files) as response:
                    await self._raise_for_status(response, "stt", where)
                    body = await read_capped(response, MAX_TRANSCRIPT_BODY_BYTES, "stt", where)
        try:
            text = json.loads(body)["text"]
        except (ValueError, KeyError, TypeError):
            text = None
        if not isinstance(text, str):
            raise EngineError("stt_failed", f"{where} did not answer a JSON object with a 'text' string")
        if len(text.encode("utf-8", errors="replace")) > MAX_TRANSCRIPT_BYTES:
            raise EngineError("stt_failed", f"{where} sent a transcript over the {MAX_TRANSCRIPT_BYTES}-byte limit")
        return text.strip()

    async def warm_up(self) -> None:
        """Transcribe one second of silence (checks the server and loads its model); a failure
        is logged as a warning, not raised (see :func:`warm_up_or_warn`)."""
        await warm_up_or_warn("stt", self.base_url, lambda: self.transcribe(bytes(SAMPLE_RATE * SAMPLE_WIDTH)))


@attrs.define(kw_only=True)
class OpenAITTS(_OpenAIAudioEngine, TextToSpeech):
    """Synthesizes with ``POST {base_url}/audio/speech``.

    ``response_format="wav"`` (the default) reads the rate from the WAV header;
    ``"pcm"`` is raw s16le mono at ``pcm_rate`` (OpenAI's is 24 kHz). Either is resampled to
    16 kHz with soxr, in a worker thread (under :attr:`decode_limiter`). The reply body is
    streamed, so cancelling mid-answer closes the connection at once and the server sees the
    client go; more than :data:`MAX_SENTENCE_AUDIO_S` of audio (or, for WAV, more than
    :data:`MAX_WAV_BYTES`) is ``tts_failed``.
    """

    model: str = "tts-1"
    voice: str = "alloy"
    response_format: Literal["wav", "pcm"] = "wav"
    pcm_rate: int = 24_000
    #: Decoding and resampling of replies, one at a time, in a worker thread.
    decode_limiter: trio.CapacityLimiter = attrs.field(factory=lambda: trio.CapacityLimiter(1), repr=False)

    async def synthesize(self, text: str) -> bytes:
        """Speak ``text`` (one sentence or clause); returns 16 kHz mono s16le PCM.

        Blank text gives ``b""`` without a request. Cancellation (barge-in) closes the
        connection at once, and abandons a decoding under way (its thread finishes on its
        own). Raises :class:`EngineError` ``tts_unavailable``, ``tts_timeout`` or ``tts_failed``.
        """
        if not text.strip():
            return b""
        body = {"model": self.model, "input": text, "voice": self.voice, "response_format": self.response_format}
        where = f"text-to-speech server {self.base_url}"
        limit = MAX_SENTENCE_AUDIO_S * self.pcm_rate * SAMPLE_WIDTH if self.response_format == "pcm" else MAX_WAV_BYTES
        async with self.limiter:
            with remote_call("tts", where, self.timeout):
                async with self._client.stream("POST", f"{self.base_url}/audio/speech", json=body) as response:
                    await self._raise_for_status(response, "tts", where)
                    audio = await read_capped(response, limit, "tts", where)
        try:
            return await trio.to_thread.run_sync(
                self._decode, audio, abandon_on_cancel=True, limiter=self.decode_limiter
            )
        except ValueError as exc:
            raise EngineError("tts_failed", f"{where} sent unusable audio: {exc}") from exc

    def _decode(self, audio: bytes) -> bytes:
        """Blocking: the reply as 16 kHz mono s16le; ``ValueError`` if it is not usable audio."""
        if self.response_format == "pcm":
            return to_engine_pcm(audio[: len(audio) - len(audio) % 2], rate=self.pcm_rate, width=2, channels=1)
        try:
            samples, rate = soundfile.read(io.BytesIO(audio), dtype="int16", always_2d=True)
        except (soundfile.LibsndfileError, RuntimeError, TypeError) as exc:
            raise ValueError(f"not a readable WAV file ({exc})") from None
        if len(samples) > MAX_SENTENCE_AUDIO_S * rate:
            raise ValueError(f"{len(samples) / rate:.0f} s of audio, over the {MAX_SENTENCE_AUDIO_S} s limit")
        channels = samples.shape[1]
        return to_engine_pcm(
            np.ascontiguousarray(samples).astype("<i2").tobytes(), rate=rate, width=2, channels=channels
        )

    async def warm_up(self) -> None:
        """Synthesize one short sentence (checks the server and loads its voice); a failure
        is logged as a warning, not raised (see :func:`warm_up_or_warn`)."""
        await warm_up_or_warn("tts", self.base_url, lambda: self.synthesize("Hello."))


def _wav_bytes(pcm: bytes) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(SAMPLE_WIDTH)
        wav.setframerate(SAMPLE_RATE)
        wav.writeframes(pcm)
    return buffer.getvalue()
