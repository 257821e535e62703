"""Floors: each embedded model alone, on the same inputs as the measured turns.

Run in the bench's own process after the voice server has stopped, so nothing else competes
for the two cores. Each engine is loaded exactly as ``voiceorch serve`` loads it (same classes,
same default settings) and warmed up the same way; each input is measured ``repeat`` times and
the median is the floor. What each floor includes is written in bench/README.md:

- ``stt``: ``WhisperSTT.transcribe`` of the clip (the push-to-talk turn's audio), and of the
  stream span the server VAD turned into the measured voice turn (``stt_window_ms``).
- ``llm_ttft``: ``OpenAICompatibleLLM.stream_reply`` against our own ``run_llama_server`` (same
  model, same settings as the server's child): from the call to the first non-empty delta, for
  the exact messages the server sent (its debug log). Just before each measured request goes
  the same conversation with another last user message, so llama.cpp's prefix cache holds
  everything but the last user message: the best case (the server's cache may hold less, e.g.
  when the previous reply was cut by a barge-in).
- ``tts_first``: ``PiperTTS.synthesize`` of the first sentence of the reply the server produced.
"""

from __future__ import annotations

import statistics
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from voiceorch import protocol as p
from voiceorch.engines.base import ChatMessage

#: The last user message of the request sent just before each measured one, so that llama.cpp's
#: prefix cache holds the conversation up to the measured user message, and not that message.
_FLUSH_PROMPT = "Say one word."


def _key(messages: list[dict]) -> tuple:
    return tuple((m["role"], m["content"]) for m in messages)


async def _time(fn: Callable[[], Awaitable[object]]) -> float:
    started = trio.current_time()
    await fn()
    return round((trio.current_time() - started) * 1000, 2)


def _floor(samples_ms: list[float]) -> dict:
    return {"samples_ms": samples_ms, "median_ms": round(statistics.median(samples_ms), 2)}


async def measure_stt(inputs: dict[str, bytes], repeat: int, say: Callable[[str], None]) -> dict[str, dict]:
    from voiceorch.engines import embedded
    from voiceorch.engines.whisper_stt import WhisperSTT

    say("floors: loading faster-whisper (as the server does)")
    stt = await trio.to_thread.run_sync(WhisperSTT.load, embedded.whisper_model_dir())
    await stt.warm_up()
    floors: dict[str, dict] = {}
    for name, pcm in inputs.items():
        texts: list[str] = []

        async def run(pcm: bytes = pcm) -> None:
            texts.append(await stt.transcribe(pcm))

        samples = [await _time(run) for _ in range(repeat)]
        floors[name] = {**_floor(samples), "audio_ms": len(pcm) / p.BYTES_PER_MS, "text": texts[-1]}
    return floors


async def measure_tts(sentences: list[str], repeat: int, say: Callable[[str], None]) -> dict[str, dict]:
    from voiceorch.engines import embedded
    from voiceorch.engines.piper_tts import PiperTTS

    say("floors: loading Piper (as the server does)")
    tts = await trio.to_thread.run_sync(PiperTTS.load, embedded.piper_voice_path())
    await tts.warm_up()
    floors: dict[str, dict] = {}
    for sentence in sentences:
        lengths: list[int] = []

        async def run(sentence: str = sentence) -> None:
            lengths.append(len(await tts.synthesize(sentence)))

        samples = [await _time(run) for _ in range(repeat)]
        floors[sentence] = {**_floor(samples), "audio_ms": lengths[-1] / p.BYTES_PER_MS}
    return floors


async def measure_llm(
    prompts: list[list[dict]], repeat: int, say: Callable[[str], None], log_path: Path | None
) -> list[dict]:
    """TTFT of each message list; returns one entry per list, in order."""
    from voiceorch.engines import embedded
    from voiceorch.engines.llama_server import LlamaServerConfig, run_llama_server
    from voiceorch.engines.openai_llm import OpenAICompatibleLLM

    say("floors: starting our own llama.cpp server (as the voice server does)")
    results: list[dict] = []
    async with trio.open_nursery() as nursery:
        config = LlamaServerConfig(model_path=embedded.smollm2_gguf_path(), log_path=log_path)
        url = await nursery.start(run_llama_server, config)
        # TTFT does not depend on the reply length: ask for a few tokens to keep the floors short.
        llm = OpenAICompatibleLLM(base_url=url, max_tokens=8)
        flusher = OpenAICompatibleLLM(base_url=url, max_tokens=2)
        try:
            await llm.warm_up()
            samples: list[list[float]] = [[] for _ in prompts]
            for _ in range(repeat):
                for index, messages in enumerate(prompts):
                    chat = [ChatMessage(role=m["role"], content=m["content"]) for m in messages]
                    before_last = chat[:-1] if chat and chat[-1].role == "user" else chat
                    await _drain(flusher, [*before_last, ChatMessage(role="user", content=_FLUSH_PROMPT)])
                    samples[index].append(await _ttft(llm, chat))
            for messages, values in zip(prompts, samples):
                results.append({"messages": messages, **_floor(values)})
        finally:
            with trio.CancelScope(shield=True):
                await llm.aclose()
                await flusher.aclose()
            nursery.cancel_scope.cancel()  # stops (and reaps) the llama.cpp child
    return results


async def _drain(llm, messages: list[ChatMessage]) -> None:
    send, receive = trio.open_memory_channel[str](64)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(llm.stream_reply, messages, send)
        async for _ in receive:
            pass


async def _ttft(llm, messages: list[ChatMessage]) -> float:
    """From the call to the first non-empty delta (the server's llm_ttft_ms); the rest of the
    reply is read to its end so that the next request finds the LLM idle."""
    send, receive = trio.open_memory_channel[str](64)
    first: float | None = None
    async with trio.open_nursery() as nursery:
        started = trio.current_time()
        nursery.start_soon(llm.stream_reply, messages, send)
        async for delta in receive:
            if first is None and delta:
                first = trio.current_time()
    if first is None:
        raise RuntimeError("the LLM sent no text")
    return round((first - started) * 1000, 2)



