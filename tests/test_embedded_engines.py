"""The real embedded models: faster-whisper tiny.en, Piper joe-medium, SmolLM2 via llama.cpp.

Slow; run with ``-m models`` or by file. Each model is loaded once per module.
"""

from __future__ import annotations

import os
import wave
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import trio

from voiceorch.engines.base import SAMPLE_RATE, ChatMessage
from voiceorch.engines.embedded import piper_voice_path, smollm2_gguf_path, whisper_model_dir
from voiceorch.engines.llama_server import LlamaServerConfig, run_llama_server
from voiceorch.engines.openai_llm import OpenAICompatibleLLM
from voiceorch.engines.piper_tts import PiperTTS
from voiceorch.engines.whisper_stt import WhisperSTT

pytestmark = pytest.mark.models

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def stt() -> WhisperSTT:
    return WhisperSTT.load(whisper_model_dir())


@pytest.fixture(scope="module")
def tts() -> PiperTTS:
    return PiperTTS.load(piper_voice_path())


def read_wav(path: Path) -> bytes:
    with wave.open(str(path), "rb") as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (SAMPLE_RATE, 1, 2)
        return wav.readframes(wav.getnframes())


async def test_whisper_transcribes_jfk(stt: WhisperSTT) -> None:
    pcm = read_wav(DATA / "jfk_16k.wav")
    with trio.fail_after(120):
        text = await stt.transcribe(pcm)
    assert "ask not what your country" in text.lower()
    assert text == text.strip()
    assert stt.limiter.statistics().borrowed_tokens == 0


async def test_whisper_silence_and_empty(stt: WhisperSTT) -> None:
    with trio.fail_after(60):
        await stt.warm_up()
        assert await stt.transcribe(b"") == ""


async def test_piper_synthesizes_16k_speech(tts: PiperTTS) -> None:
    with trio.fail_after(60):
        pcm = await tts.synthesize("Hello there. How are you?")
    samples = np.frombuffer(pcm, dtype="<i2")
    duration = len(samples) / SAMPLE_RATE
    assert 0.5 < duration < 5.0
    rms = float(np.sqrt(np.mean(samples.astype(np.float64) ** 2)))
    assert rms > 300  # silence is ~0; speech at normal level is in the thousands
    with trio.fail_after(10):
        assert await tts.synthesize("   ") == b""


def _children_running(command_part: str) -> list[int]:
    """PIDs of our own child processes whose command line contains ``command_part``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        state = stat.rsplit(")", 1)[1].split()[0]
        if ppid == os.getpid() and state != "Z" and command_part in cmdline:
            found.append(int(entry.name))
    return found


@pytest.fixture
def no_leftover_llama() -> Iterator[None]:
    assert _children_running("llama_cpp.server") == []
    yield


async def test_llama_server_streams_and_stops(no_leftover_llama: None) -> None:
    config = LlamaServerConfig(model_path=smollm2_gguf_path(), port=0)
    with trio.fail_after(240):
        async with trio.open_nursery() as nursery:
            base_url = await nursery.start(run_llama_server, config)
            assert _children_running("llama_cpp.server")
            llm = OpenAICompatibleLLM(base_url=base_url, max_tokens=24)
            try:
                assert await llm.check_ready() is None
                send, receive = trio.open_memory_channel[str](0)
                nursery.start_soon(
                    llm.stream_reply,
                    [ChatMessage(role="user", content="What is the capital of France?")],
                    send,
                )
                reply = "".join([delta async for delta in receive])
            finally:
                await llm.aclose()
            assert reply.strip()
            nursery.cancel_scope.cancel()
    # run_llama_server has terminated and reaped the child before returning.
    assert _children_running("llama_cpp.server") == []
    async with httpx.AsyncClient(trust_env=False) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(f"{base_url}/models")
