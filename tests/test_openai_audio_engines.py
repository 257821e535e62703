"""OpenAI-compatible audio engines: a FAKE server for the protocol and every failure, and the
real faster-whisper-server (with the embedded tiny.en folder, offline; marker ``models``).

Loopback only, ports chosen by the OS, a ``fail_after`` bound on every test that does I/O.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import wave
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import trio

from fake_openai_audio_server import FakeOpenAIAudioServer
from voiceorch.engines.base import SAMPLE_RATE, EngineError
from voiceorch.engines.openai_audio import OpenAISTT, OpenAITTS

DATA = Path(__file__).parent / "data"
KEY = "sk-test-0123456789"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
async def fake(nursery) -> FakeOpenAIAudioServer:
    server = FakeOpenAIAudioServer()
    await nursery.start(server.serve)
    return server


def peak_hz(pcm: bytes) -> float:
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32)
    return float(np.argmax(np.abs(np.fft.rfft(samples))) * SAMPLE_RATE / len(samples))


# --- speech-to-text ---------------------------------------------------------------------------


async def test_stt_posts_a_wav_of_the_utterance(fake: FakeOpenAIAudioServer) -> None:
    pcm = np.arange(-8000, 8000, dtype="<i2").tobytes()
    stt = OpenAISTT(base_url=fake.base_url + "/", api_key=KEY, model="tiny.en")
    try:
        with trio.fail_after(10):
            assert await stt.transcribe(pcm) == "hello from the fake"
    finally:
        await stt.aclose()
    request = fake.requests[0]
    assert request["target"] == "/v1/audio/transcriptions"
    assert request["headers"]["authorization"] == f"Bearer {KEY}"
    assert request["fields"] == {"model": "tiny.en", "response_format": "json", "language": "en"}
    filename, content_type, wav_bytes = request["files"]["file"]
    assert (filename, content_type) == ("speech.wav", "audio/wav")
    with wave.open(io.BytesIO(wav_bytes)) as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (16000, 1, 2)
        assert wav.readframes(wav.getnframes()) == pcm
    assert KEY not in repr(stt)


async def test_stt_without_language_lets_the_server_detect_it(fake: FakeOpenAIAudioServer) -> None:
    stt = OpenAISTT(base_url=fake.base_url, language=None)
    with trio.fail_after(10):
        await stt.transcribe(bytes(3200))
    assert "language" not in fake.requests[0]["fields"]
    assert "authorization" not in fake.requests[0]["headers"]
    assert await OpenAISTT(base_url=fake.base_url).transcribe(b"") == ""
    assert len(fake.requests) == 1  # empty audio: no request


async def test_stt_sends_the_earlier_text_as_the_prompt_field(fake: FakeOpenAIAudioServer) -> None:
    stt = OpenAISTT(base_url=fake.base_url)
    with trio.fail_after(10):
        await stt.transcribe(bytes(3200), prompt="  I would like to book a table for ")
        await stt.transcribe(bytes(3200), prompt="   ")
        await stt.transcribe(bytes(3200))
    assert fake.requests[0]["fields"]["prompt"] == "I would like to book a table for"
    assert "prompt" not in fake.requests[1]["fields"] and "prompt" not in fake.requests[2]["fields"]


@pytest.mark.parametrize("mode", ["error500", "malformed", "drop"])
async def test_stt_server_failures_are_stt_failed(fake: FakeOpenAIAudioServer, mode: str) -> None:
    fake.mode = mode
    stt = OpenAISTT(base_url=fake.base_url, api_key=KEY)
    with trio.fail_after(10), pytest.raises(EngineError) as caught:
        await stt.transcribe(bytes(3200))
    assert caught.value.code == "stt_failed"
    assert KEY not in caught.value.message
    if mode == "error500":
        assert "answered 500" in caught.value.message and "***" in caught.value.message
    assert stt.limiter.statistics().borrowed_tokens == 0


async def test_stt_slow_server_times_out_and_the_request_is_dropped(fake: FakeOpenAIAudioServer) -> None:
    fake.mode = "stall"
    with trio.fail_after(10):
        with pytest.raises(EngineError) as caught:
            await OpenAISTT(base_url=fake.base_url, timeout=0.3).transcribe(bytes(3200))
        await fake.client_disconnected.wait()
    assert caught.value.code == "stt_timeout"


async def test_dead_server_is_unavailable() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    with trio.fail_after(10):
        with pytest.raises(EngineError) as stt_error:
            await OpenAISTT(base_url=url).transcribe(bytes(3200))
        with pytest.raises(EngineError) as tts_error:
            await OpenAITTS(base_url=url).synthesize("Hello.")
    assert (stt_error.value.code, tts_error.value.code) == ("stt_unavailable", "tts_unavailable")


# --- text-to-speech ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["ok", "stream_wav"])
async def test_tts_reads_wav_at_any_rate_and_resamples(fake: FakeOpenAIAudioServer, mode: str) -> None:
    fake.mode = mode
    tts = OpenAITTS(base_url=fake.base_url, api_key=KEY, model="piper", voice="joe")
    with trio.fail_after(10):
        audio = await tts.synthesize("Hello there.")
    assert fake.requests[0]["json"] == {
        "model": "piper",
        "input": "Hello there.",
        "voice": "joe",
        "response_format": "wav",
    }
    assert abs(len(audio) / 2 - fake.seconds * SAMPLE_RATE) <= 2
    assert abs(peak_hz(audio) - 440) < 5


async def test_tts_reads_raw_pcm_at_the_configured_rate(fake: FakeOpenAIAudioServer) -> None:
    fake.rate = 24000
    tts = OpenAITTS(base_url=fake.base_url, response_format="pcm", pcm_rate=24000)
    with trio.fail_after(10):
        audio = await tts.synthesize("Hello.")
    assert fake.requests[0]["json"]["response_format"] == "pcm"
    assert abs(len(audio) / 2 - fake.seconds * SAMPLE_RATE) <= 2
    assert abs(peak_hz(audio) - 440) < 5


async def test_tts_blank_text_makes_no_request(fake: FakeOpenAIAudioServer) -> None:
    with trio.fail_after(10):
        assert await OpenAITTS(base_url=fake.base_url).synthesize(" \t") == b""
    assert fake.requests == []


@pytest.mark.parametrize("mode", ["error500", "malformed", "drop"])
async def test_tts_server_failures_are_tts_failed(fake: FakeOpenAIAudioServer, mode: str) -> None:
    fake.mode = mode
    with trio.fail_after(10), pytest.raises(EngineError) as caught:
        await OpenAITTS(base_url=fake.base_url, api_key=KEY).synthesize("Hello.")
    assert caught.value.code == "tts_failed"
    assert KEY not in caught.value.message


async def test_tts_slow_server_times_out(fake: FakeOpenAIAudioServer) -> None:
    fake.mode = "stall"
    with trio.fail_after(10), pytest.raises(EngineError) as caught:
        await OpenAITTS(base_url=fake.base_url, timeout=0.3).synthesize("Hello.")
    assert caught.value.code == "tts_timeout"


async def test_cancelling_a_synthesis_closes_the_connection_at_once(fake: FakeOpenAIAudioServer) -> None:
    fake.mode = "stall"  # headers and a quarter of the audio, then nothing
    tts = OpenAITTS(base_url=fake.base_url)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(tts.synthesize, "A long sentence.")
            await fake.first_bytes_sent.wait()
            assert not fake.client_disconnected.is_set()
            nursery.cancel_scope.cancel()  # barge-in
        await fake.client_disconnected.wait()  # the server saw the connection close
        fake.mode = "ok"
        assert await tts.synthesize("Again.")  # the engine's pool is fine
    assert tts.limiter.statistics().borrowed_tokens == 0
    await tts.aclose()


# --- real OpenAI-compatible servers, offline with the embedded models ---------------------------


def _start_http_server(name: str, args: list[str], port: int, probe: str, env: dict[str, str]) -> subprocess.Popen:
    """Start ``name ARGS`` (from the venv) and wait until ``GET probe`` answers 200."""
    command = shutil.which(name, path=str(Path(sys.executable).parent))
    if command is None:
        pytest.skip(f"{name} is not installed (pip install -e '.[test]')")
    log_path = Path(tempfile.mkdtemp(prefix=f"voiceorch-{name}-")) / "server.log"
    process = subprocess.Popen(
        [command, *args], stdout=log_path.open("w"), stderr=subprocess.STDOUT, env={**os.environ, **env}
    )
    deadline = time.monotonic() + 120
    while True:
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"{name} did not start:\n{log_path.read_text()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}{probe}", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.3)


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def faster_whisper_server() -> Iterator[str]:
    """faster-whisper-server serving the embedded tiny.en folder (offline) on a free port."""
    from voiceorch.engines.embedded import whisper_model_dir

    port = free_port()
    process = _start_http_server(
        "faster-whisper-server",
        [str(whisper_model_dir()), "--host", "127.0.0.1", "--port", str(port)],
        port,
        "/health",
        {"HF_HUB_OFFLINE": "1"},
    )
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        _stop(process)


@pytest.fixture(scope="module")
def local_tts_server() -> Iterator[str]:
    """local-tts-studio (Piper behind /v1/audio/speech) with the embedded joe-medium voice."""
    from voiceorch.engines.embedded import piper_voice_path

    data = Path(tempfile.mkdtemp(prefix="voiceorch-local-tts-"))
    settings = {"voices_dir": str(piper_voice_path().parent), "api_default_voice": "en_US-joe-medium", "device": "cpu"}
    (data / "settings.json").write_text(json.dumps(settings))
    port = free_port()
    process = _start_http_server(
        "local-tts", ["--host", "127.0.0.1", "--port", str(port)], port, "/v1/models", {"LOCAL_TTS_DATA_DIR": str(data)}
    )
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        _stop(process)


def jfk() -> bytes:
    with wave.open(str(DATA / "jfk_16k.wav")) as wav:
        return wav.readframes(wav.getnframes())


@pytest.mark.models
async def test_real_faster_whisper_server_transcribes_jfk(faster_whisper_server: str) -> None:
    stt = OpenAISTT(base_url=faster_whisper_server, timeout=60)
    try:
        with trio.fail_after(120):
            text = await stt.transcribe(jfk())
    finally:
        await stt.aclose()
    assert "ask not what your country can do for you" in text.lower()


@pytest.mark.models
async def test_real_local_tts_speaks_wav_and_pcm_that_whisper_hears(
    local_tts_server: str, faster_whisper_server: str
) -> None:
    wav_tts = OpenAITTS(base_url=local_tts_server, timeout=60)
    pcm_tts = OpenAITTS(base_url=local_tts_server, timeout=60, response_format="pcm", pcm_rate=22050)
    stt = OpenAISTT(base_url=faster_whisper_server, timeout=60)
    sentence = "Ask not what your country can do for you."
    try:
        with trio.fail_after(120):
            from_wav = await wav_tts.synthesize(sentence)
            from_pcm = await pcm_tts.synthesize(sentence)
            heard = await stt.transcribe(from_wav)
    finally:
        for engine in (wav_tts, pcm_tts, stt):
            await engine.aclose()
    assert 1.0 < len(from_wav) / 2 / SAMPLE_RATE < 6.0
    # The same speech either way: Piper draws its phoneme durations at random (12 % apart seen
    # once), while a wrong rate (22.05 against 16 kHz) would make them 27 % apart.
    assert abs(len(from_pcm) - len(from_wav)) / len(from_wav) < 0.2
    assert "country" in heard.lower()


@pytest.mark.models
async def test_serve_with_remote_openai_stt_and_tts_holds_a_spoken_turn(
    local_tts_server: str, faster_whisper_server: str
) -> None:
    import trio_websocket

    from real_server import start_server
    from voiceorch.talk import TurnInput, configure, run_turn

    running = start_server(
        "--stt-url", faster_whisper_server, "--tts-url", local_tts_server + "?voice=en_US-joe-medium"
    )
    try:
        with trio.fail_after(120):
            async with trio_websocket.open_websocket_url(running.url) as ws:
                await ws.get_message()  # session.created
                await configure(ws, vad=False)
                report = await run_turn(ws, TurnInput(wav=DATA / "jfk_16k.wav"))
    finally:
        assert running.stop() == 0
    assert "ask not what your country can do for you" in report.transcript.lower()
    assert report.done.status == "completed", report.errors
    assert report.done.metrics.audio_ms > 500
    assert np.abs(np.frombuffer(bytes(report.audio), dtype="<i2")).max() > 1000
