"""The real embedded models: faster-whisper tiny.en, Piper joe-medium, SmolLM2 via llama.cpp.

Slow; run with ``-m models`` or by file. Each model is loaded once per module.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
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


async def test_a_cancelled_piper_synthesis_frees_the_limiter_for_the_next_session(tts: PiperTTS) -> None:
    """Barge-in during a long synthesis: once the cancelled call has returned, the limiter is
    free (the synthesis was stopped inside onnxruntime, not abandoned to run to its end)."""
    text = " ".join(["This sentence is long, and it goes on and on with many more words in it."] * 12)
    with trio.fail_after(60):
        await tts.warm_up()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(tts.synthesize, text)
            while tts.limiter.statistics().borrowed_tokens == 0:
                await trio.sleep(0.01)
            await trio.sleep(0.5)  # well into the model (the whole text takes several seconds)
            nursery.cancel_scope.cancel()  # barge-in
        statistics = tts.limiter.statistics()
        assert (statistics.borrowed_tokens, statistics.tasks_waiting) == (0, 0)
        assert tts.terminated == 1
        assert await tts.synthesize("The next session speaks.")  # the engine is fine


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


async def test_llama_server_does_not_cut_off_a_reply_for_a_new_request() -> None:
    """``--interrupt_requests False``: a second request (here not queued by the client) waits."""
    config = LlamaServerConfig(model_path=smollm2_gguf_path(), port=0)
    question = [ChatMessage(role="user", content="Count from 1 to 30, separated by commas.")]
    replies: dict[str, list[str]] = {"first": [], "second": []}
    with trio.fail_after(240):
        async with trio.open_nursery() as nursery:
            base_url = await nursery.start(run_llama_server, config)
            llm = OpenAICompatibleLLM(base_url=base_url, max_tokens=24, max_concurrent_requests=None)
            first_delta = trio.Event()

            async def ask(name: str) -> None:
                send, receive = trio.open_memory_channel[str](0)
                async with trio.open_nursery() as inner:
                    inner.start_soon(llm.stream_reply, question, send)
                    async for delta in receive:
                        replies[name].append(delta)
                        first_delta.set()

            try:
                async with trio.open_nursery() as both:
                    both.start_soon(ask, "first")
                    await first_delta.wait()
                    both.start_soon(ask, "second")
            finally:
                await llm.aclose()
            nursery.cancel_scope.cancel()
    # With llama-cpp-python's default the first reply would end after a delta or two.
    assert len(replies["first"]) > 10, replies
    assert len(replies["second"]) > 10, replies


async def test_llama_server_start_failure_is_clear(tmp_path: Path) -> None:
    bogus = tmp_path / "not-a-model.gguf"
    bogus.write_bytes(b"this is not a GGUF file")
    config = LlamaServerConfig(model_path=bogus, port=0, start_timeout=60)
    with trio.fail_after(90):
        with pytest.raises(RuntimeError, match="exited during start-up with code") as info:
            await run_llama_server(config)
    assert "last output:" in str(info.value)
    assert _children_running("llama_cpp.server") == []


_SUPERVISOR = """
import sys, trio
from voiceorch.engines.embedded import smollm2_gguf_path
from voiceorch.engines.llama_server import LlamaServerConfig, run_llama_server
async def main():
    async with trio.open_nursery() as nursery:
        url = await nursery.start(run_llama_server, LlamaServerConfig(model_path=smollm2_gguf_path()))
        print(url, flush=True)
trio.run(main)
"""


async def test_llama_server_exits_when_its_parent_is_killed() -> None:
    supervisor = subprocess.Popen(
        [sys.executable, "-c", _SUPERVISOR], stdout=subprocess.PIPE, text=True,
        cwd=Path(__file__).parent.parent,
    )  # fmt: skip
    try:
        with trio.fail_after(120):
            base_url = (await trio.to_thread.run_sync(supervisor.stdout.readline)).strip()
        assert base_url.startswith("http://127.0.0.1:")
    finally:
        supervisor.send_signal(signal.SIGKILL)  # no chance to clean up: the child must notice
        supervisor.wait()
        supervisor.stdout.close()
    async with httpx.AsyncClient(trust_env=False, timeout=1.0) as client:
        with trio.fail_after(15):
            while True:
                try:
                    await client.get(f"{base_url}/models")
                except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError):
                    break  # refused, or reset by the child as it dies: gone either way
                await trio.sleep(0.2)
