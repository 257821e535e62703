"""What a remote STT/TTS server may send back is bounded, and its audio is converted off the
Trio thread. Against the FAKE Wyoming and OpenAI-compatible servers (loopback, ports chosen by
the OS, a ``fail_after`` bound on every test).

Before the caps, a server that never stopped sending held the turn until its timeout (the
engines here have ``timeout=5``, so that would be ``*_timeout``, not ``*_failed``) and kept
everything it sent in memory.
"""

from __future__ import annotations

import threading

import pytest
import trio

from fake_openai_audio_server import FakeOpenAIAudioServer
from fake_wyoming_server import FakeWyomingServer
from voiceorch.engines import openai_audio, pcm, wyoming_tts
from voiceorch.engines.base import EngineError
from voiceorch.engines.openai_audio import OpenAISTT, OpenAITTS
from voiceorch.engines.remote_errors import MAX_SENTENCE_AUDIO_S, MAX_TRANSCRIPT_BYTES, redact
from voiceorch.engines.wyoming_client import WyomingAddress
from voiceorch.engines.wyoming_stt import WyomingSTT
from voiceorch.engines.wyoming_tts import WyomingTTS

KEY = "sk-test-0123456789"
SPEECH = bytes(3200)


@pytest.fixture
async def wyoming(nursery) -> FakeWyomingServer:
    server = FakeWyomingServer()
    await nursery.start(server.serve)
    return server


@pytest.fixture
async def openai(nursery) -> FakeOpenAIAudioServer:
    server = FakeOpenAIAudioServer()
    await nursery.start(server.serve)
    return server


def _address(server: FakeWyomingServer) -> WyomingAddress:
    return WyomingAddress("127.0.0.1", server.port)


async def _fails(call, code: str) -> EngineError:
    with trio.fail_after(20), pytest.raises(EngineError) as caught:
        await call
    assert caught.value.code == code, caught.value.message
    return caught.value


# --- Wyoming ---------------------------------------------------------------------------------


async def test_wyoming_stt_stops_reading_a_transcript_that_never_ends(wyoming: FakeWyomingServer) -> None:
    wyoming.mode, wyoming.text = "flood", "more words "
    error = await _fails(WyomingSTT(address=_address(wyoming), timeout=5).transcribe(SPEECH), "stt_failed")
    assert f"{MAX_TRANSCRIPT_BYTES}-byte limit" in error.message
    with trio.fail_after(10):
        await wyoming.client_disconnected.wait()


async def test_wyoming_stt_refuses_one_oversize_transcript(wyoming: FakeWyomingServer) -> None:
    wyoming.text = "a" * (MAX_TRANSCRIPT_BYTES + 1)
    error = await _fails(WyomingSTT(address=_address(wyoming)).transcribe(SPEECH), "stt_failed")
    assert "limit" in error.message
    wyoming.text = "a" * MAX_TRANSCRIPT_BYTES  # at the limit: fine
    with trio.fail_after(10):
        assert await WyomingSTT(address=_address(wyoming)).transcribe(SPEECH) == wyoming.text


@pytest.mark.parametrize("streaming", ["on", "off"])
async def test_wyoming_tts_stops_reading_audio_that_never_ends(wyoming: FakeWyomingServer, streaming: str) -> None:
    wyoming.mode, wyoming.rate = "flood", 8000
    tts = WyomingTTS(address=_address(wyoming), streaming=streaming, timeout=5)
    error = await _fails(tts.synthesize("Hello."), "tts_failed")
    assert f"{MAX_SENTENCE_AUDIO_S} s of audio" in error.message
    with trio.fail_after(10):
        await wyoming.client_disconnected.wait()
    assert tts.limiter.statistics().borrowed_tokens == 0


async def test_wyoming_tts_takes_audio_up_to_the_limit(wyoming: FakeWyomingServer) -> None:
    wyoming.rate, wyoming.samples_per_chunk = 8000, 8000
    wyoming.audio_chunks = MAX_SENTENCE_AUDIO_S
    with trio.fail_after(20):
        audio = await WyomingTTS(address=_address(wyoming), streaming="off").synthesize("Hello.")
    assert len(audio) == MAX_SENTENCE_AUDIO_S * 16000 * 2
    wyoming.audio_chunks += 1
    await _fails(WyomingTTS(address=_address(wyoming), streaming="off").synthesize("Hello."), "tts_failed")


# --- OpenAI-compatible -----------------------------------------------------------------------


async def test_openai_stt_stops_reading_a_reply_that_never_ends(openai: FakeOpenAIAudioServer) -> None:
    openai.mode = "flood"
    error = await _fails(OpenAISTT(base_url=openai.base_url, timeout=5).transcribe(SPEECH), "stt_failed")
    assert "byte limit" in error.message
    with trio.fail_after(10):
        await openai.client_disconnected.wait()


async def test_openai_stt_refuses_an_oversize_transcript(openai: FakeOpenAIAudioServer) -> None:
    openai.text = "a" * (MAX_TRANSCRIPT_BYTES + 1)
    error = await _fails(OpenAISTT(base_url=openai.base_url).transcribe(SPEECH), "stt_failed")
    assert f"{MAX_TRANSCRIPT_BYTES}-byte limit" in error.message


@pytest.mark.parametrize("response_format", ["wav", "pcm"])
async def test_openai_tts_stops_reading_audio_that_never_ends(openai: FakeOpenAIAudioServer, response_format) -> None:
    openai.mode = "flood"
    tts = OpenAITTS(base_url=openai.base_url, response_format=response_format, timeout=5)
    error = await _fails(tts.synthesize("Hello."), "tts_failed")
    assert "byte limit" in error.message
    with trio.fail_after(10):
        await openai.client_disconnected.wait()
    assert tts.limiter.statistics().borrowed_tokens == 0


async def test_openai_tts_refuses_a_wav_longer_than_the_limit(openai: FakeOpenAIAudioServer) -> None:
    openai.rate, openai.seconds = 8000, MAX_SENTENCE_AUDIO_S + 1  # under the byte cap: 8 kHz mono
    error = await _fails(OpenAITTS(base_url=openai.base_url).synthesize("Hello."), "tts_failed")
    assert f"over the {MAX_SENTENCE_AUDIO_S} s limit" in error.message


@pytest.mark.parametrize("kind", ["stt", "tts"])
async def test_openai_error_reply_is_read_only_in_part(openai: FakeOpenAIAudioServer, kind: str) -> None:
    """A 500 with a body that never ends: the message gets its start, and the call fails at once."""
    openai.mode = "error_flood"
    if kind == "stt":
        call = OpenAISTT(base_url=openai.base_url, api_key=KEY, timeout=5).transcribe(SPEECH)
    else:
        call = OpenAITTS(base_url=openai.base_url, api_key=KEY, timeout=5).synthesize("Hello.")
    error = await _fails(call, f"{kind}_failed")
    assert "answered 500" in error.message and error.message.endswith("...")


def test_redact_hides_a_key_cut_off_at_the_end() -> None:
    assert redact(f"bad key {KEY} and {KEY}", KEY) == "bad key *** and ***"
    assert redact(f"bad key {KEY[:7]}", KEY, cut=True) == "bad key ***"
    assert redact(f"bad key {KEY[:7]}", KEY) == f"bad key {KEY[:7]}"  # not cut: a word, not a key
    assert redact("anything", None) == "anything"


# --- conversion off the Trio thread ----------------------------------------------------------


@pytest.fixture
def conversion_threads(monkeypatch) -> list[threading.Thread]:
    """The threads :func:`to_engine_pcm` ran in, as the remote TTS engines call it."""
    threads: list[threading.Thread] = []

    def recording(*args, **kwargs):
        threads.append(threading.current_thread())
        return pcm.to_engine_pcm(*args, **kwargs)

    monkeypatch.setattr(wyoming_tts, "to_engine_pcm", recording)
    monkeypatch.setattr(openai_audio, "to_engine_pcm", recording)
    return threads


async def test_wyoming_tts_resamples_in_a_worker_thread(wyoming: FakeWyomingServer, conversion_threads) -> None:
    with trio.fail_after(10):
        assert await WyomingTTS(address=_address(wyoming)).synthesize("Hello.")
    assert conversion_threads and threading.main_thread() not in conversion_threads


@pytest.mark.parametrize("response_format", ["wav", "pcm"])
async def test_openai_tts_decodes_in_a_worker_thread(
    openai: FakeOpenAIAudioServer, conversion_threads, response_format: str
) -> None:
    with trio.fail_after(10):
        assert await OpenAITTS(base_url=openai.base_url, response_format=response_format).synthesize("Hello.")
    assert conversion_threads and threading.main_thread() not in conversion_threads
