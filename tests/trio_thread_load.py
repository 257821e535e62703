"""Run: .venv/bin/python tests/trio_thread_load.py N SECONDS (from the repository root;
PYTHONPATH=. to measure another checkout).

N in-process sessions (fake STT/LLM/TTS, real Silero), each fed jfk_16k.wav at real time in
20 ms frames plus one refused frame every 100 ms; reports the Trio thread's CPU per session and
loop lag (p50/p99/max of a 10 ms sleep's overshoot)."""

import json
import sys
import time
import wave

import trio

sys.path.insert(0, "tests")
from voiceorch import logs
from voiceorch.engines.base import Engines
from voiceorch.engines.fakes import FakeLLM, FakeSTT, FakeTTS
from voiceorch.engines.silero_vad import SileroVAD
from voiceorch.session import Session, SessionSettings, memory_transport_pair

N = int(sys.argv[1])
SECONDS = float(sys.argv[2])
logs.configure("info", open("/dev/null", "w"))
with wave.open("tests/data/jfk_16k.wav") as f:
    AUDIO = f.readframes(f.getnframes())
VAD = SileroVAD.load()


async def client(end, stop):
    async def drain():
        while True:
            try:
                await end.receive()
            except trio.EndOfChannel:
                return

    async with trio.open_nursery() as n:
        n.start_soon(drain)
        i, t0, k = 0, trio.current_time(), 0
        while trio.current_time() < stop:
            frame = AUDIO[i : i + 640]
            i = (i + 640) % (len(AUDIO) - 640)
            await end.send(frame)
            k += 1
            if k % 5 == 0:
                await end.send('{"type": "bogus"}')
            await trio.sleep_until(t0 + k * 0.02)
        await end.close()
        n.cancel_scope.cancel()


async def main():
    engines = Engines(stt=FakeSTT(text="hello"), llm=FakeLLM(), tts=FakeTTS(), vad=VAD)
    stop = trio.current_time() + SECONDS
    lags = []
    cpu0 = time.thread_time()
    async with trio.open_nursery() as n:
        for _ in range(N):
            s_end, c_end = memory_transport_pair()
            n.start_soon(Session(s_end, engines, SessionSettings()).run)
            n.start_soon(client, c_end, stop)
        while trio.current_time() < stop:
            t = time.perf_counter()
            await trio.sleep(0.01)
            lags.append((time.perf_counter() - t - 0.01) * 1000)
    cpu = time.thread_time() - cpu0
    lags.sort()
    print(
        json.dumps(
            {
                "sessions": N,
                "seconds": SECONDS,
                "trio_thread_cpu_s": round(cpu, 2),
                "trio_cpu_per_session_pct": round(100 * cpu / SECONDS / N, 2),
                "lag_p50_ms": round(lags[len(lags) // 2], 2),
                "lag_p99_ms": round(lags[int(len(lags) * 0.99)], 2),
                "lag_max_ms": round(lags[-1], 2),
            }
        )
    )


trio.run(main)
