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
  when the previous reply was cut by a barge-in). Also the median time between two deltas
  (``token_interval``), from which the time to generate the server's first sentence follows.
- ``tts_first``: ``PiperTTS.synthesize`` of the first sentence of the reply the server produced.
"""

from __future__ import annotations

import statistics
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from . import machine

from voiceorch import protocol as p
from voiceorch.engines.base import ChatMessage

#: The last user message of the request sent just before each measured one, so that llama.cpp's
#: prefix cache holds the conversation up to the measured user message, and not that message.
_FLUSH_PROMPT = "Say one word."


def messages_key(messages: list[dict]) -> tuple:
    return tuple((m["role"], m["content"]) for m in messages)


async def _time(fn: Callable[[], Awaitable[object]]) -> float:
    started = trio.current_time()
    await fn()
    return round((trio.current_time() - started) * 1000, 2)


def _floor(samples_ms: list[float]) -> dict:
    return {"samples_ms": samples_ms, "median_ms": round(statistics.median(samples_ms), 2)}


#: Awaited before the measurements of each input: waits (bounded) for the machine to be quiet.
Quiet = Callable[[], Awaitable[object]]


async def _measured(quiet: Quiet, repeat: int, fn: Callable[[], Awaitable[object]]) -> dict:
    """``repeat`` timings of ``fn`` after a quiet wait, with the other processes' CPU load."""
    await quiet()
    before = machine.snapshot()
    samples = [await _time(fn) for _ in range(repeat)]
    return {**_floor(samples), "foreign_cpu_percent": machine.foreign_cpu_percent(before, machine.snapshot())}


async def measure_stt(
    inputs: dict[str, bytes], repeat: int, say: Callable[[str], None], quiet: Quiet
) -> dict[str, dict]:
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

        floors[name] = {**await _measured(quiet, repeat, run), "audio_ms": len(pcm) / p.BYTES_PER_MS, "text": texts[-1]}
    return floors


async def measure_tts(
    sentences: list[str], repeat: int, say: Callable[[str], None], quiet: Quiet
) -> dict[str, dict]:
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

        floors[sentence] = {**await _measured(quiet, repeat, run), "audio_ms": lengths[-1] / p.BYTES_PER_MS}
    return floors


async def measure_llm(
    prompts: list[list[dict]], repeat: int, say: Callable[[str], None], log_path: Path | None, quiet: Quiet
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
        # TTFT does not depend on the reply length: a few dozen tokens give the token interval too.
        llm = OpenAICompatibleLLM(base_url=url, max_tokens=32)
        flusher = OpenAICompatibleLLM(base_url=url, max_tokens=2)
        try:
            await llm.warm_up()
            samples: list[list[float]] = [[] for _ in prompts]
            intervals: list[list[float]] = [[] for _ in prompts]
            loads: list[float | None] = []
            for _ in range(repeat):
                await quiet()
                before = machine.snapshot()
                for index, messages in enumerate(prompts):
                    chat = [ChatMessage(role=m["role"], content=m["content"]) for m in messages]
                    before_last = chat[:-1] if chat and chat[-1].role == "user" else chat
                    await _drain(flusher, [*before_last, ChatMessage(role="user", content=_FLUSH_PROMPT)])
                    ttft, gaps = await _ttft(llm, chat)
                    samples[index].append(ttft)
                    intervals[index] += gaps
                loads.append(machine.foreign_cpu_percent(before, machine.snapshot()))
            known = [load for load in loads if load is not None]
            for messages, values, gaps in zip(prompts, samples, intervals):
                interval = round(statistics.median(gaps), 2) if gaps else None
                results.append(
                    {
                        "messages": messages,
                        **_floor(values),
                        "token_interval_ms": interval,
                        "foreign_cpu_percent": max(known) if known else None,
                    }
                )
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


async def _ttft(llm, messages: list[ChatMessage]) -> tuple[float, list[float]]:
    """From the call to the first non-empty delta (the server's llm_ttft_ms), and the gaps (ms)
    between the deltas after it; the reply is read to its end so the next request finds the LLM
    idle."""
    send, receive = trio.open_memory_channel[str](64)
    times: list[float] = []
    async with trio.open_nursery() as nursery:
        started = trio.current_time()
        nursery.start_soon(llm.stream_reply, messages, send)
        async for delta in receive:
            if delta or times:
                times.append(trio.current_time())
    if not times:
        raise RuntimeError("the LLM sent no text")
    gaps = [round((b - a) * 1000, 2) for a, b in zip(times, times[1:])]
    return round((times[0] - started) * 1000, 2), gaps
