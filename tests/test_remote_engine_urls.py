"""Engine URLs (``serve --stt-url/--tts-url``): parsing, the engines they build, CLI errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from voiceorch.engines.openai_audio import OpenAISTT, OpenAITTS
from voiceorch.engines.remote import build_stt, build_tts, parse_engine_url
from voiceorch.engines.wyoming_client import WyomingAddress
from voiceorch.engines.wyoming_stt import WyomingSTT
from voiceorch.engines.wyoming_tts import WyomingTTS


def test_wyoming_tcp_url_builds_wyoming_engines() -> None:
    stt = build_stt(parse_engine_url("stt", "wyoming://10.0.0.5:10300?language=&model=tiny.en"), timeout=7)
    assert isinstance(stt, WyomingSTT)
    assert (stt.address, stt.language, stt.model, stt.timeout) == (
        WyomingAddress("10.0.0.5", 10300),
        None,
        "tiny.en",
        7,
    )
    tts = build_tts(
        parse_engine_url("tts", "wyoming://[::1]:10200?voice=en_US-joe-medium&streaming=off&concurrency=2"), timeout=3
    )
    assert isinstance(tts, WyomingTTS)
    assert (tts.address.host, tts.voice, tts.streaming, tts.limiter.total_tokens) == (
        "::1",
        "en_US-joe-medium",
        "off",
        2,
    )
    assert str(tts.address) == "wyoming://[::1]:10200"


def test_wyoming_unix_url() -> None:
    spec = parse_engine_url("tts", "wyoming+unix:///run/piper.sock")
    assert spec.address == WyomingAddress(path="/run/piper.sock")
    assert str(build_tts(spec, timeout=1).address) == "wyoming+unix:///run/piper.sock"


def test_http_url_builds_openai_engines_with_defaults_and_options() -> None:
    stt = build_stt(parse_engine_url("stt", "http://asr:8000/v1/"), timeout=5, api_key="k")
    assert isinstance(stt, OpenAISTT)
    assert (stt.base_url, stt.model, stt.language, stt.api_key) == ("http://asr:8000/v1", "whisper-1", "en", "k")
    spec = parse_engine_url("tts", "https://api.example.com/v1?model=tts-1-hd&voice=nova&format=pcm&pcm_rate=24000")
    tts = build_tts(spec, timeout=5)
    assert isinstance(tts, OpenAITTS)
    assert (tts.base_url, tts.model, tts.voice, tts.response_format, tts.pcm_rate) == (
        "https://api.example.com/v1",
        "tts-1-hd",
        "nova",
        "pcm",
        24000,
    )
    assert spec.describe() == "text-to-speech: OpenAI-compatible server " + spec.url


@pytest.mark.parametrize(
    "kind, url, complaint",
    [
        ("stt", "wyoming://host", "wyoming://HOST:PORT"),
        ("stt", "wyoming://host:notaport", "port"),
        ("stt", "wyoming://host:10300/path", "wyoming://HOST:PORT"),
        ("tts", "wyoming+unix://", "wyoming+unix:///PATH"),
        ("stt", "tcp://host:10300", "use wyoming://"),
        ("stt", "host:10300", "use wyoming://"),
        ("stt", "wyoming://host:1?voice=x", "unknown option 'voice'"),
        ("tts", "http://h/v1?language=en", "unknown option 'language'"),
        ("tts", "wyoming://h:1?streaming=maybe", "auto, on or off"),
        ("tts", "http://h/v1?format=mp3", "wav or pcm"),
        ("tts", "http://h/v1?concurrency=0", "at least 1"),
        ("stt", "http://user:secret@h/v1", "no credentials"),
        ("stt", "http://h/v1?model", "name=value"),
    ],
)
def test_bad_urls_say_what_is_wrong(kind: str, url: str, complaint: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_engine_url(kind, url)
    assert complaint in str(caught.value)


def test_serve_refuses_a_bad_url_and_a_model_with_a_url() -> None:
    def serve(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "voiceorch", "serve", *args], capture_output=True, text=True, timeout=60
        )

    bad = serve("--tts-url", "wyoming://piper")
    assert bad.returncode == 2 and "--tts-url" in bad.stderr and "wyoming://HOST:PORT" in bad.stderr
    both = serve("--stt-url", "wyoming://127.0.0.1:10300", "--stt-model", "/models/whisper")
    assert both.returncode == 2 and "exclude each other" in both.stderr
