"""Remote STT and TTS engines chosen by one URL per engine (``serve --stt-url/--tts-url``).

The URL's scheme picks the protocol, its query the engine's options:

============================================  ==============================================
``wyoming://HOST:PORT``                       Wyoming over TCP (wyoming-faster-whisper, wyoming-piper)
``wyoming+unix:///PATH``                      Wyoming over a Unix socket
``http://HOST:PORT/v1``, ``https://.../v1``   OpenAI-compatible audio endpoints (like ``--llm-url``)
============================================  ==============================================

Options (``?name=value&...``), per protocol and engine:

- Wyoming STT: ``language`` (``en``; empty: the server detects it), ``model``
- Wyoming TTS: ``voice``, ``speaker``, ``streaming`` (``auto``, ``on``, ``off``)
- OpenAI STT: ``model`` (``whisper-1``), ``language`` (``en``; empty: the server detects it)
- OpenAI TTS: ``model`` (``tts-1``), ``voice`` (``alloy``), ``format`` (``wav`` or ``pcm``),
  ``pcm_rate`` (``24000``, the rate of ``format=pcm``)
- all: ``concurrency`` (4): requests in flight to that server at once; more wait in voiceorch

Secrets never go in the URL (it is printed and logged): API keys come from their own options.
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import attrs
import trio

from .base import SpeechToText, TextToSpeech
from .wyoming_client import WyomingAddress

Kind = Literal["stt", "tts"]

_OPTIONS: dict[tuple[str, Kind], frozenset[str]] = {
    ("wyoming", "stt"): frozenset({"language", "model", "concurrency"}),
    ("wyoming", "tts"): frozenset({"voice", "speaker", "streaming", "concurrency"}),
    ("openai", "stt"): frozenset({"model", "language", "concurrency"}),
    ("openai", "tts"): frozenset({"model", "voice", "format", "pcm_rate", "concurrency"}),
}


@attrs.frozen(kw_only=True)
class RemoteEngineSpec:
    """A parsed engine URL: which protocol, where, and the engine's options."""

    kind: Kind
    protocol: Literal["wyoming", "openai"]
    #: The URL as given (it holds no secret), for messages.
    url: str
    address: WyomingAddress | None = None
    #: For ``openai``: the base URL without the query, ending in ``/v1``.
    base_url: str | None = None
    options: tuple[tuple[str, str], ...] = ()

    def option(self, name: str, default: str | None = None) -> str | None:
        return dict(self.options).get(name, default)

    def describe(self) -> str:
        what = {"stt": "speech-to-text", "tts": "text-to-speech"}[self.kind]
        server = "Wyoming" if self.protocol == "wyoming" else "OpenAI-compatible"
        return f"{what}: {server} server {self.url}"


def parse_engine_url(kind: Kind, url: str) -> RemoteEngineSpec:
    """Parse ``url`` for engine ``kind``; ``ValueError`` with a message meant for the user."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        raise ValueError(f"{url!r}: the query is not name=value pairs") from None
    if scheme in ("wyoming", "wyoming+tcp"):
        protocol = "wyoming"
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"{url!r}: the port is not a number from 0 to 65535") from None
        if not parts.hostname or port is None or parts.path not in ("", "/"):
            raise ValueError(f"{url!r}: a Wyoming TCP URL is wyoming://HOST:PORT")
        address = WyomingAddress(host=parts.hostname, port=port)
        spec_fields = {"address": address}
    elif scheme == "wyoming+unix":
        protocol = "wyoming"
        if parts.netloc or not parts.path:
            raise ValueError(f"{url!r}: a Wyoming Unix socket URL is wyoming+unix:///PATH")
        spec_fields = {"address": WyomingAddress(path=parts.path)}
    elif scheme in ("http", "https"):
        protocol = "openai"
        if not parts.hostname:
            raise ValueError(f"{url!r}: an OpenAI-compatible URL is http(s)://HOST[:PORT]/v1")
        if parts.username or parts.password:
            raise ValueError(f"{url!r}: put no credentials in the URL; use the API key option")
        spec_fields = {"base_url": urlunsplit((scheme, parts.netloc, parts.path.rstrip("/"), "", ""))}
    else:
        raise ValueError(f"{url!r}: use wyoming://HOST:PORT, wyoming+unix:///PATH or http(s)://HOST:PORT/v1")
    allowed = _OPTIONS[(protocol, kind)]
    for name, _value in pairs:
        if name not in allowed:
            raise ValueError(f"{url!r}: unknown option {name!r} (this engine takes: {', '.join(sorted(allowed))})")
    options = dict(pairs)
    if options.get("streaming", "auto") not in ("auto", "on", "off"):
        raise ValueError(f"{url!r}: streaming is auto, on or off")
    if options.get("format", "wav") not in ("wav", "pcm"):
        raise ValueError(f"{url!r}: format is wav or pcm")
    for name in ("concurrency", "pcm_rate"):
        if name in options and not (options[name].isdigit() and int(options[name]) >= 1):
            raise ValueError(f"{url!r}: {name} is a whole number of at least 1")
    return RemoteEngineSpec(kind=kind, protocol=protocol, url=url, options=tuple(pairs), **spec_fields)


def _language(spec: RemoteEngineSpec) -> str | None:
    return spec.option("language", "en") or None


def build_stt(spec: RemoteEngineSpec, *, timeout: float, api_key: str | None = None) -> SpeechToText:
    """The speech-to-text engine ``spec`` names; ``timeout`` bounds one transcription."""
    limiter = trio.CapacityLimiter(int(spec.option("concurrency", "4")))
    if spec.protocol == "wyoming":
        from .wyoming_stt import WyomingSTT

        assert spec.address is not None
        return WyomingSTT(
            address=spec.address, language=_language(spec), model=spec.option("model"), timeout=timeout, limiter=limiter
        )
    from .openai_audio import OpenAISTT

    return OpenAISTT(
        base_url=spec.base_url,
        api_key=api_key,
        model=spec.option("model", "whisper-1"),
        language=_language(spec),
        timeout=timeout,
        limiter=limiter,
    )


def build_tts(spec: RemoteEngineSpec, *, timeout: float, api_key: str | None = None) -> TextToSpeech:
    """The text-to-speech engine ``spec`` names; ``timeout`` bounds one sentence."""
    limiter = trio.CapacityLimiter(int(spec.option("concurrency", "4")))
    if spec.protocol == "wyoming":
        from .wyoming_tts import WyomingTTS

        assert spec.address is not None
        return WyomingTTS(
            address=spec.address,
            voice=spec.option("voice"),
            speaker=spec.option("speaker"),
            streaming=spec.option("streaming", "auto"),
            timeout=timeout,
            limiter=limiter,
        )
    from .openai_audio import OpenAITTS

    return OpenAITTS(
        base_url=spec.base_url,
        api_key=api_key,
        model=spec.option("model", "tts-1"),
        voice=spec.option("voice", "alloy"),
        response_format=spec.option("format", "wav"),
        pcm_rate=int(spec.option("pcm_rate", "24000")),
        timeout=timeout,
        limiter=limiter,
    )
