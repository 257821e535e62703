"""Thread counts on a shared machine: Piper's first synthesis and Whisper's STT while llama.cpp generates beside them.

    nice .venv/bin/python -m bench.thread_eval [--repeat 5] [--out bench/baselines/thread_eval.md]

For each llama.cpp setting (no LLM running; the embedded SmolLM2 server with 1 thread; with 2
threads), a background task keeps the LLM generating (one streamed chat completion after another,
as a reply being written while the next sentence is spoken), and in the foreground, interleaved
rep by rep: Piper synthesises the same first sentence with onnxruntime intra-op threads 1 and 2,
and ``WindowedWhisperSTT`` (the default STT) transcribes the 4 s hotwords clip with CTranslate2
``cpu_threads`` 1 and 2. It prints the p50 and max of each, with the LLM's tokens per second
during the measurements and the machine's load average. (Silero already runs with 1 thread; the
end-of-turn model is not measured here.)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
import wave
from pathlib import Path

import httpx
import onnxruntime
import trio

from voiceorch.engines import embedded
from voiceorch.engines.llama_server import LlamaServerConfig, run_llama_server
from voiceorch.engines.piper_tts import PiperTTS
from voiceorch.engines.whisper_windowed import WindowedWhisperSTT

SENTENCE = "Sure, the capital of France is Paris, a city on the Seine."
CLIP = Path(__file__).resolve().parent.parent / "tests" / "data" / "hotwords_16k.wav"


def piper(threads: int) -> PiperTTS:
    tts = PiperTTS.load(embedded.piper_voice_path())
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    tts.voice.session = onnxruntime.InferenceSession(
        str(embedded.piper_voice_path()), sess_options=options, providers=["CPUExecutionProvider"]
    )
    return tts


async def keep_generating(base_url: str, tokens: list[float]) -> None:
    """Stream one reply after another until cancelled; the time of every streamed chunk goes to ``tokens``."""
    body = {
        "messages": [{"role": "user", "content": "Tell me a long story about a dragon and a knight."}],
        "max_tokens": 300,
        "stream": True,
    }
    async with httpx.AsyncClient(timeout=60) as client:
        while True:
            async with client.stream("POST", f"{base_url}/chat/completions", json=body) as response:
                async for line in response.aiter_lines():
                    if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
                        tokens.append(time.monotonic())


async def measure(args, llm_threads: int, rows: dict, engines: dict, pcm: bytes) -> None:
    tokens: list[float] = []
    async with trio.open_nursery() as nursery:
        if llm_threads:
            config = LlamaServerConfig(model_path=embedded.smollm2_gguf_path(), n_threads=llm_threads)
            base_url = await nursery.start(run_llama_server, config)
            nursery.start_soon(keep_generating, base_url, tokens)
            while not tokens:  # generating
                await trio.sleep(0.05)
        t0 = time.monotonic()
        for rep in range(args.repeat):
            names = list(engines)
            for name in names[rep % len(names) :] + names[: rep % len(names)]:
                engine = engines[name]
                start = time.perf_counter()
                if isinstance(engine, PiperTTS):
                    await engine.synthesize(SENTENCE)
                else:
                    await engine.transcribe(pcm)
                rows.setdefault((name, llm_threads), []).append((time.perf_counter() - start) * 1000)
        t1 = time.monotonic()
        rate = sum(t0 <= t <= t1 for t in tokens) / (t1 - t0) if llm_threads else 0.0
        rows[("llm tokens/s", llm_threads)] = [rate]
        rows[("load", llm_threads)] = [os.getloadavg()[0]]
        nursery.cancel_scope.cancel()


async def main_async(args) -> None:
    with wave.open(str(CLIP)) as w:
        pcm = w.readframes(w.getnframes())
    engines: dict[str, object] = {}
    for threads in (1, 2):
        engines[f"Piper first synthesis, onnxruntime {threads} thread(s)"] = piper(threads)
        engines[f"Whisper tiny.en (windowed), CTranslate2 {threads} thread(s)"] = WindowedWhisperSTT.load(
            embedded.whisper_model_dir(), cpu_threads=threads
        )
    for engine in engines.values():
        await engine.warm_up()
    rows: dict = {}
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    loads = [os.getloadavg()[0]]
    for llm_threads in (0, 1, 2):
        await measure(args, llm_threads, rows, engines, pcm)
        loads.append(os.getloadavg()[0])
    heads = ["no LLM", "llama.cpp 1 thread, generating", "llama.cpp 2 threads, generating"]
    lines = [
        f"# Thread counts beside a generating LLM ({started})",
        "",
        f"Machine: {os.cpu_count()} cores ({platform.machine()}, Python {platform.python_version()}), shared with "
        f"other agents: load average (1 min) {min(loads):.1f}-{max(loads):.1f}. `python -m bench.thread_eval "
        f"--repeat {args.repeat}`; p50 / max in ms over {args.repeat} runs, engines interleaved. Piper: "
        f'"{SENTENCE}" (en_US-joe-medium); Whisper: tests/data/hotwords_16k.wav (4 s).',
        "",
        "| engine | " + " | ".join(heads) + " |",
        "| --- | " + " | ".join("---" for _ in heads) + " |",
    ]
    for name in engines:
        cells = [rows[(name, n)] for n in (0, 1, 2)]
        lines.append(f"| {name} | " + " | ".join(f"{statistics.median(c):.0f} / {max(c):.0f}" for c in cells) + " |")
    lines.append(
        "| LLM tokens/s during the measurements | - | "
        + " | ".join(f"{rows[('llm tokens/s', n)][0]:.1f}" for n in (1, 2))
        + " |"
    )
    lines.append("| load average after | " + " | ".join(f"{rows[('load', n)][0]:.1f}" for n in (0, 1, 2)) + " |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "baselines" / "thread_eval.md")
    trio.run(main_async, parser.parse_args())


if __name__ == "__main__":
    main()
