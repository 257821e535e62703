"""Every engine declares the optional lifecycle (EngineLifecycle) and the server calls it without
probing: the defaults do nothing, and what an engine overrides is what runs."""

from __future__ import annotations

import pytest
import trio

from voiceorch.engines import EngineLifecycle, LanguageModel, SpeechToText, TextToSpeech
from voiceorch.engines.base import Engines
from voiceorch.engines.fakes import FakeLLM, FakeSTT, FakeTTS, FakeVAD
from voiceorch.engines.openai_audio import OpenAISTT, OpenAITTS
from voiceorch.engines.openai_llm import OpenAICompatibleLLM
from voiceorch.engines.wyoming_stt import WyomingSTT
from voiceorch.engines.wyoming_tts import WyomingTTS
from voiceorch.server.http import HttpApp


@pytest.mark.parametrize(
    ("engine", "interface"),
    [
        (WyomingSTT, SpeechToText),
        (OpenAISTT, SpeechToText),
        (FakeSTT, SpeechToText),
        (OpenAICompatibleLLM, LanguageModel),
        (FakeLLM, LanguageModel),
        (WyomingTTS, TextToSpeech),
        (OpenAITTS, TextToSpeech),
        (FakeTTS, TextToSpeech),
    ],
)
def test_every_engine_declares_its_interface_and_the_lifecycle(engine: type, interface: type) -> None:
    assert issubclass(engine, interface) and issubclass(engine, EngineLifecycle)


def test_the_in_process_engines_declare_it_too() -> None:
    pytest.importorskip("faster_whisper")
    pytest.importorskip("piper")
    from voiceorch.engines.piper_tts import PiperTTS
    from voiceorch.engines.whisper_stt import WhisperSTT

    assert issubclass(WhisperSTT, SpeechToText) and issubclass(PiperTTS, TextToSpeech)


def test_an_interface_without_its_call_cannot_be_made() -> None:
    class Mute(TextToSpeech):
        pass

    with pytest.raises(TypeError):
        Mute()


async def test_the_defaults_do_nothing_and_the_server_calls_them() -> None:
    stt, llm, tts = FakeSTT(), FakeLLM(), FakeTTS()
    for engine in (stt, llm, tts):
        assert engine.limiter is None
        await engine.warm_up()
        assert await engine.check_ready() is None
        await engine.aclose()

    class DownTTS(FakeTTS):
        async def check_ready(self) -> str | None:
            return "the TTS server is down"

    app = HttpApp(Engines(stt=stt, llm=llm, tts=DownTTS(), vad=FakeVAD()), voice_port=1)
    with trio.fail_after(10):
        assert await app.not_ready_reason() == "the TTS server is down"
        app.engines = Engines(stt=stt, llm=llm, tts=tts, vad=FakeVAD())
        assert await app.not_ready_reason() is None
