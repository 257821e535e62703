"""Floors: each embedded model alone, on the same inputs as the measured turns.

Run in the bench's own process after the voice server has stopped, so nothing else competes
for the two cores. Each engine is loaded exactly as ``voiceorch serve`` loads it (same classes,
same default settings) and warmed up the same way; each input is measured ``repeat`` times and
the median is the floor. What each floor includes is written in bench/README.md:

- ``stt``: ``WindowedWhisperSTT.transcribe`` of the clip (the push-to-talk turn's audio), and of the
  stream span the server VAD turned into the measured voice turn (``stt_window_ms``).
- ``llm_ttft``: ``OpenAICompatibleLLM.stream_reply`` against our own ``run_llama_server`` (same
  model, same settings as the server's child): from the call to the first non-empty delta, for
  the exact messages the server sent (its debug log). Just before each measured request goes
  the same conversation with another last user message, so llama.cpp's prefix cache holds
  everything but the last user message: the best case (the server's cache may hold less, e.g.
  when the previous reply was cut by a barge-in). Also the median time between two deltas
  (``token_interval``), from which the time to generate the server's first sentence follows.
- ``tts_first``: ``PiperTTS.synthesize`` of the first sentence of the reply the server produced.

Remote floors (``--engines remote``): the same STT and TTS inputs also go through
``WyomingSTT.transcribe`` / ``WyomingTTS.synthesize``, built from the URLs ``serve`` was given
exactly as ``serve`` builds them, against the same servers; the in-process and the remote call
alternate (L R, R L, ...) so both see the same machine, and ``hop_ms`` is the median of the
paired differences (remote - in-process). The LLM floor then uses the llama.cpp server the
voice server used. In both modes the LLM is an HTTP server on loopback: ``http_round_trip``
times one small request to it (``GET /v1/models`` on a warm connection), the fixed cost of
that hop; ``connection`` times a bare connect and close to each Wyoming server, the fixed cost
of the connection that each STT/TTS call opens.
"""

from __future__ import annotations

import statistics
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from voiceorch import protocol as p
from voiceorch.engines.base import ChatMessage

from . import machine

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


async def _measured_pair(
    quiet: Quiet, repeat: int, local: Callable[[], Awaitable[object]], remote: Callable[[], Awaitable[object]]
) -> dict:
    """``repeat`` timings of each of ``local`` and ``remote``, alternating which goes first;
    the local floor's fields, with ``remote`` (its floor), ``hop_samples_ms`` (remote - local,
    pair by pair) and ``hop_ms`` (their median)."""
    await quiet()
    before = machine.snapshot()
    local_ms: list[float] = []
    remote_ms: list[float] = []
    for index in range(repeat):
        order = [(local_ms, local), (remote_ms, remote)]
        for samples, fn in order if index % 2 == 0 else reversed(order):
            samples.append(await _time(fn))
    hops = [round(remote - local, 2) for local, remote in zip(local_ms, remote_ms)]
    return {
        **_floor(local_ms),
        "foreign_cpu_percent": machine.foreign_cpu_percent(before, machine.snapshot()),
        "remote": _floor(remote_ms),
        "hop_samples_ms": hops,
        "hop_ms": round(statistics.median(hops), 2),
    }


async def measure_stt(
    inputs: dict[str, bytes], repeat: int, say: Callable[[str], None], quiet: Quiet, remote_url: str | None = None
) -> dict[str, dict]:
    """The in-process floor of each input; with ``remote_url`` (``serve --stt-url``) also the
    remote floor through that server, interleaved (see :func:`_measured_pair`)."""
    from voiceorch.engines import embedded
    from voiceorch.engines.whisper_windowed import WindowedWhisperSTT

    say("floors: loading faster-whisper (as the server does)")
    stt = await trio.to_thread.run_sync(WindowedWhisperSTT.load, embedded.whisper_model_dir())
    await stt.warm_up()
    remote = await _remote_engine("stt", remote_url, say) if remote_url else None
    floors: dict[str, dict] = {}
    for name, pcm in inputs.items():
        texts: list[str] = []
        remote_texts: list[str] = []

        async def run(pcm: bytes = pcm) -> None:
            texts.append(await stt.transcribe(pcm))

        async def run_remote(pcm: bytes = pcm) -> None:
            remote_texts.append(await remote.transcribe(pcm))

        measured = await (_measured_pair(quiet, repeat, run, run_remote) if remote else _measured(quiet, repeat, run))
        floors[name] = {**measured, "audio_ms": len(pcm) / p.BYTES_PER_MS, "text": texts[-1]}
        if remote:
            floors[name]["remote"]["text"] = remote_texts[-1]
    return floors


#: Timed connections to each Wyoming server.
CONNECTIONS = 20


async def measure_connections(
    remote: dict[str, str], say: Callable[[str], None], quiet: Quiet, count: int = CONNECTIONS
) -> dict[str, dict]:
    """For the Wyoming STT and TTS servers in ``remote``: ``count`` times what every call pays
    before and after its events: a fresh TCP connection opened and closed (``open_wyoming``, as
    the engines connect; no event sent)."""
    from voiceorch.engines.wyoming_client import open_wyoming

    found: dict[str, dict] = {}
    for kind in ("stt", "tts"):
        if not remote.get(kind):
            continue
        engine = await _remote_engine(kind, remote[kind], say, warm=False)
        address = getattr(engine, "address", None)
        if address is None:  # not a Wyoming engine
            continue
        await quiet()
        before = machine.snapshot()
        samples = []
        for _ in range(count):
            started = trio.current_time()
            async with open_wyoming(address, connect_timeout=engine.connect_timeout):
                pass
            samples.append(round((trio.current_time() - started) * 1000, 3))
        found[kind] = {
            "what": "TCP connect and close (open_wyoming), no event",
            **_floor(samples),
            "foreign_cpu_percent": machine.foreign_cpu_percent(before, machine.snapshot()),
        }
    return found


async def _remote_engine(kind: str, url: str, say: Callable[[str], None], *, warm: bool = True):
    """The remote engine ``serve --{kind}-url URL`` uses, built the same way, checked and (with
    ``warm``) warmed up: one request, so a server that loads its model on first use has loaded
    it."""
    from voiceorch.engines.base import SAMPLE_RATE, SAMPLE_WIDTH
    from voiceorch.engines.remote import build_stt, build_tts, parse_engine_url
    from voiceorch.session.settings import SessionSettings

    settings = SessionSettings()
    spec = parse_engine_url(kind, url)
    say(f"floors: remote {spec.describe()}")
    if kind == "stt":
        engine = build_stt(spec, timeout=settings.stt_timeout_s)
    else:
        engine = build_tts(spec, timeout=settings.tts_timeout_s)
    reason = await engine.check_ready()
    if reason is not None:
        raise RuntimeError(f"remote {kind} server {url} is not ready: {reason}")
    if not warm:
        return engine
    if kind == "stt":
        await engine.transcribe(bytes(SAMPLE_RATE * SAMPLE_WIDTH))
    else:
        await engine.synthesize("Hello.")
    return engine


async def measure_tts(
    sentences: list[str], repeat: int, say: Callable[[str], None], quiet: Quiet, remote_url: str | None = None
) -> dict[str, dict]:
    """The in-process floor of each sentence; with ``remote_url`` (``serve --tts-url``) also the
    remote floor through that server, interleaved (see :func:`_measured_pair`)."""
    from voiceorch.engines import embedded
    from voiceorch.engines.piper_tts import PiperTTS

    say("floors: loading Piper (as the server does)")
    tts = await trio.to_thread.run_sync(PiperTTS.load, embedded.piper_voice_path())
    await tts.warm_up()
    remote = await _remote_engine("tts", remote_url, say) if remote_url else None
    floors: dict[str, dict] = {}
    for sentence in sentences:
        lengths: list[int] = []
        remote_lengths: list[int] = []

        async def run(sentence: str = sentence) -> None:
            lengths.append(len(await tts.synthesize(sentence)))

        async def run_remote(sentence: str = sentence) -> None:
            remote_lengths.append(len(await remote.synthesize(sentence)))

        measured = await (_measured_pair(quiet, repeat, run, run_remote) if remote else _measured(quiet, repeat, run))
        floors[sentence] = {**measured, "audio_ms": lengths[-1] / p.BYTES_PER_MS}
        if remote:
            floors[sentence]["remote"]["audio_ms"] = remote_lengths[-1] / p.BYTES_PER_MS
    return floors


#: Timed requests of the HTTP round trip to the LLM server (after one untimed).
HTTP_ROUND_TRIPS = 20


async def measure_llm(
    prompts: list[list[dict]],
    repeat: int,
    say: Callable[[str], None],
    log_path: Path | None,
    quiet: Quiet,
    url: str | None = None,
) -> tuple[list[dict], dict]:
    """TTFT of each message list (one entry per list, in order), and the HTTP round trip to the
    server (:func:`measure_http_round_trip`). Against ``url`` (``serve --llm-url``) if given,
    else against our own llama.cpp server, started and stopped here."""
    from voiceorch.engines import embedded
    from voiceorch.engines.llama_server import LlamaServerConfig, run_llama_server

    async with trio.open_nursery() as nursery:
        if url is None:
            say("floors: starting our own llama.cpp server (as the voice server does)")
            config = LlamaServerConfig(model_path=embedded.smollm2_gguf_path(), log_path=log_path)
            url = await nursery.start(run_llama_server, config)
        else:
            say(f"floors: the llama.cpp server the voice server used ({url})")
        try:
            results = await _llm_floors(url, prompts, repeat, quiet)
            await quiet()
            round_trip = await measure_http_round_trip(url)
        finally:
            nursery.cancel_scope.cancel()  # stops (and reaps) our llama.cpp child, if any
    return results, round_trip


async def measure_http_round_trip(url: str, count: int = HTTP_ROUND_TRIPS) -> dict:
    """``GET {url}/models`` ``count`` times on one warm keep-alive connection (httpx, as
    ``OpenAICompatibleLLM`` talks to the server), after one untimed request: the fixed cost of
    one HTTP exchange with the LLM server (request, the server's routing, response), which every
    LLM request pays in both modes. No token streaming is in it."""
    import httpx

    before = machine.snapshot()
    async with httpx.AsyncClient(timeout=10.0, trust_env=False) as client:
        (await client.get(f"{url}/models")).raise_for_status()
        samples = []
        for _ in range(count):
            started = trio.current_time()
            (await client.get(f"{url}/models")).raise_for_status()
            samples.append(round((trio.current_time() - started) * 1000, 3))
    return {
        "request": f"GET {url}/models",
        **_floor(samples),
        "foreign_cpu_percent": machine.foreign_cpu_percent(before, machine.snapshot()),
    }


async def _llm_floors(url: str, prompts: list[list[dict]], repeat: int, quiet: Quiet) -> list[dict]:
    from voiceorch.engines.openai_llm import OpenAICompatibleLLM

    results: list[dict] = []
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
