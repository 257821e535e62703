"""Silero's CPU per 32 ms tick for B sessions: each session's chunk judged in its own ONNX call
(as before issue 18) or all of them in one batched call (``SileroVAD.probabilities_many``);
interleaved rounds, median process CPU time per tick.

    .venv/bin/python -m bench.vad_cost 1 10 40 80 160
"""

from __future__ import annotations

import statistics
import sys
import time

from voiceorch.audio_files import read_as_wire_pcm
from voiceorch.engines.silero_vad import SileroVAD

from .scenarios import DATA

ROUNDS = 30


def main(sizes: list[int]) -> None:
    vad = SileroVAD.load()
    audio = read_as_wire_pcm(DATA / "jfk_16k.wav")
    chunks = [audio[i : i + 1024] for i in range(0, len(audio) - 1024, 1024)]
    for size in sizes:
        alone, together = [vad.new_stream() for _ in range(size)], [vad.new_stream() for _ in range(size)]
        per_stream, batched = [], []
        for round_ in range(ROUNDS):
            tick = [chunks[(round_ + i) % len(chunks)] for i in range(size)]
            started = time.process_time()
            for stream, chunk in zip(alone, tick):
                stream.probabilities([chunk])
            per_stream.append(time.process_time() - started)
            started = time.process_time()
            vad.probabilities_many([(stream, [chunk]) for stream, chunk in zip(together, tick)])
            batched.append(time.process_time() - started)
        one, many = statistics.median(per_stream) * 1000, statistics.median(batched) * 1000
        print(
            f"{size} sessions: one call each {one:.2f} ms CPU per tick ({one / size * 1000:.0f} us a session), "
            f"batched {many:.2f} ms ({many / size * 1000:.0f} us a session)"
        )


if __name__ == "__main__":
    main([int(n) for n in sys.argv[1:]] or [1, 10, 40, 80, 160])
