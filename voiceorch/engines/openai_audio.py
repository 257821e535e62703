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
import wave
from typing import Literal

import attrs
import httpx
import numpy as np
import soundfile
import trio

from .base import SAMPLE_RATE, SAMPLE_WIDTH, EngineError
from .pcm import to_engine_pcm
from .remote_errors import remote_call, warm_up_or_warn

_BODY_SNIPPET = 200


def _client(api_key: str | None, connect_timeout: float, timeout: float, connections: int) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.AsyncClient(
        headers=headers,
        timeout=httpx.Timeout(timeout, connect=connect_timeout),
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
    )


async def _raise_for_status(response: httpx.Response, kind: str, where: str, api_key: str | None) -> None:
    if response.is_success:
        return
    try:
        raw = await response.aread()
    except httpx.HTTPError:
        raw = b"(no body)"
    text = raw.decode("utf-8", errors="replace")
    if api_key:  # a server may echo the request's headers: redact before cutting
        text = text.replace(api_key, "***")
    text = " ".join(text.split())
    text = text[:_BODY_SNIPPET] + ("..." if len(text) > _BODY_SNIPPET else "")
    raise EngineError(f"{kind}_failed", f"{where} answered {response.status_code}: {text}")


@attrs.define(kw_only=True)
class OpenAISTT:
    """Transcribes with ``POST {base_url}/audio/transcriptions`` (the utterance as a 16 kHz WAV).

    ``connect_timeout`` bounds connecting (``stt_unavailable``), ``timeout`` the whole call
    (``stt_timeout``). At most ``limiter``'s tokens requests go at once; more wait here.
    """

    base_url: str = attrs.field(converter=lambda url: str(url).rstrip("/"))
    api_key: str | None = attrs.field(default=None, repr=False)
    model: str = "whisper-1"
    language: str | None = "en"
    connect_timeout: float = 2.0
    timeout: float = 15.0
    limiter: trio.CapacityLimiter = attrs.field(factory=lambda: trio.CapacityLimiter(4))
    _client: httpx.AsyncClient = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        self._client = _client(self.api_key, self.connect_timeout, self.timeout, int(self.limiter.total_tokens))

    async def aclose(self) -> None:
        """Close the pooled connections."""
        await self._client.aclose()

    async def transcribe(self, pcm: bytes) -> str:
        """Transcribe one utterance of 16 kHz mono s16le PCM; returns the text, stripped.

        Cancellation closes the request's connection at once. Raises :class:`EngineError`
        ``stt_unavailable``, ``stt_timeout`` or ``stt_failed``.
        """
        if len(pcm) % SAMPLE_WIDTH:
            raise EngineError("stt_failed", "PCM length is not a whole number of 16-bit samples")
        if not pcm:
            return ""
        form = {"model": self.model, "response_format": "json"}
        if self.language:
            form["language"] = self.language
        files = {"file": ("speech.wav", _wav_bytes(pcm), "audio/wav")}
        where = f"speech-to-text server {self.base_url}"
        async with self.limiter:
            with remote_call("stt", where, self.timeout):
                response = await self._client.post(f"{self.base_url}/audio/transcriptions", data=form, files=files)
                await _raise_for_status(response, "stt", where, self.api_key)
        try:
            text = response.json()["text"]
        except (ValueError, KeyError, TypeError):
            text = None
        if not isinstance(text, str):
            raise EngineError("stt_failed", f"{where} did not answer a JSON object with a 'text' string")
        return text.strip()

    async def warm_up(self) -> None:
        """Transcribe one second of silence (checks the server and loads its model); a failure
        is logged as a warning, not raised (see :func:`warm_up_or_warn`)."""
        await warm_up_or_warn("stt", self.base_url, lambda: self.transcribe(bytes(SAMPLE_RATE * SAMPLE_WIDTH)))


@attrs.define(kw_only=True)
class OpenAITTS:
    """Synthesizes with ``POST {base_url}/audio/speech``.

    ``response_format="wav"`` (the default) reads the rate from the WAV header;
    ``"pcm"`` is raw s16le mono at ``pcm_rate`` (OpenAI's is 24 kHz). Either is resampled to
    16 kHz with soxr. The reply body is streamed, so cancelling mid-answer closes the
    connection at once and the server sees the client go.
    """

    base_url: str = attrs.field(converter=lambda url: str(url).rstrip("/"))
    api_key: str | None = attrs.field(default=None, repr=False)
    model: str = "tts-1"
    voice: str = "alloy"
    response_format: Literal["wav", "pcm"] = "wav"
    pcm_rate: int = 24_000
    connect_timeout: float = 2.0
    timeout: float = 15.0
    limiter: trio.CapacityLimiter = attrs.field(factory=lambda: trio.CapacityLimiter(4))
    _client: httpx.AsyncClient = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        self._client = _client(self.api_key, self.connect_timeout, self.timeout, int(self.limiter.total_tokens))

    async def aclose(self) -> None:
        """Close the pooled connections."""
        await self._client.aclose()

    async def synthesize(self, text: str) -> bytes:
        """Speak ``text`` (one sentence or clause); returns 16 kHz mono s16le PCM.

        Blank text gives ``b""`` without a request. Cancellation (barge-in) closes the
        connection at once. Raises :class:`EngineError` ``tts_unavailable``, ``tts_timeout``
        or ``tts_failed``.
        """
        if not text.strip():
            return b""
        body = {"model": self.model, "input": text, "voice": self.voice, "response_format": self.response_format}
        where = f"text-to-speech server {self.base_url}"
        async with self.limiter:
            with remote_call("tts", where, self.timeout):
                async with self._client.stream("POST", f"{self.base_url}/audio/speech", json=body) as response:
                    await _raise_for_status(response, "tts", where, self.api_key)
                    audio = bytearray()
                    async for piece in response.aiter_bytes():
                        audio += piece
        try:
            return self._decode(bytes(audio))
        except ValueError as exc:
            raise EngineError("tts_failed", f"{where} sent unusable audio: {exc}") from exc

    def _decode(self, audio: bytes) -> bytes:
        if self.response_format == "pcm":
            return to_engine_pcm(audio[: len(audio) - len(audio) % 2], rate=self.pcm_rate, width=2, channels=1)
        try:
            samples, rate = soundfile.read(io.BytesIO(audio), dtype="int16", always_2d=True)
        except (soundfile.LibsndfileError, RuntimeError, TypeError) as exc:
            raise ValueError(f"not a readable WAV file ({exc})") from None
        channels = samples.shape[1]
        return to_engine_pcm(np.ascontiguousarray(samples).astype("<i2").tobytes(), rate=rate, width=2, channels=channels)

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

