"""Word error rate and latency of Whisper tiny.en: the full 30 s window vs windows sized to the utterance.

    nice .venv/bin/python -m bench.stt_eval [--out bench/baselines/stt_window.md]

Held-out utterances: the real speech of tests/data (JFK, hotwords) and the 60 synthetic sentences of
``bench.corpus.make_corpus`` (generated on first use; 7 voices). The settings are interleaved
utterance by utterance (the order rotates), so load from other processes hits them alike; the
machine's load average is printed with the table. WER: lowercase, punctuation removed, jiwer-style
(substitutions + deletions + insertions over reference words, summed over the set).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import wave
from pathlib import Path

from bench.corpus.make_corpus import ensure
from bench.wer import edit_distance, words
from voiceorch.engines.embedded import whisper_model_dir
from voiceorch.engines.whisper_stt import WhisperSTT
from voiceorch.engines.whisper_windowed import WindowedWhisperSTT

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"
REAL = {
    "jfk_16k.wav": "And so my fellow Americans, ask not what your country can do for you, "
    "ask what you can do for your country.",
    "hotwords_16k.wav": "Then you go into your comfy eye folder again in the comfy eye.",
}


def _pcm(path: Path) -> bytes:
    with wave.open(str(path)) as w:
        return w.readframes(w.getnframes())


def settings(model) -> dict:
    today = WhisperSTT(model=model)

    def full_bounded(pcm: bytes) -> str:
        import numpy as np

        audio = np.frombuffer(pcm, "<i2").astype(np.float32) / 32768.0
        segments, _ = model.transcribe(
            audio,
            language="en",
            beam_size=1,
            vad_filter=False,
            condition_on_previous_text=False,
            temperature=[0.0, 0.4],
        )
        return " ".join(s.text.strip() for s in segments if s.text.strip())

    out = {"full 30 s (today)": today._transcribe_sync, "full 30 s, temps (0, 0.4)": full_bounded}
    for margin in (1.0, 3.0, 8.0):
        out[f"window = utterance + {margin:g} s"] = WindowedWhisperSTT(model=model, margin_s=margin).transcribe_sync
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "baselines" / "stt_window.md")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    folder, manifest = ensure()
    items = [(name, _pcm(DATA / name), ref) for name, ref in REAL.items()]
    items += [(e["file"] + " " + e["voice"], _pcm(folder / e["file"]), e["text"]) for e in manifest["stt"]]
    stt = WindowedWhisperSTT.load(whisper_model_dir(), cpu_threads=args.threads)
    runs = settings(stt.model)
    for fn in runs.values():  # warm-up
        fn(items[0][1])
    names = list(runs)
    stats = {n: {"err": 0, "ref": 0, "ms": [], "real_err": 0, "real_ref": 0} for n in names}
    loads = [os.getloadavg()[0]]
    rows = []
    for k, (label, pcm, ref) in enumerate(items):
        order = names[k % len(names) :] + names[: k % len(names)]
        texts = {}
        for n in order:
            t0 = time.perf_counter()
            texts[n] = runs[n](pcm)
            stats[n]["ms"].append((time.perf_counter() - t0) * 1000)
            err = edit_distance(words(ref), words(texts[n]))
            stats[n]["err"] += err
            stats[n]["ref"] += len(words(ref))
            if label in REAL:
                stats[n]["real_err"] += err
                stats[n]["real_ref"] += len(words(ref))
        rows.append((label, ref, texts))
        loads.append(os.getloadavg()[0])
    lines = [
        f"# Whisper tiny.en window sizes ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
        "",
        f"{len(items)} utterances (2 real, {len(items) - 2} synthetic, 7 voices); CTranslate2 int8, "
        f"{args.threads} threads; settings interleaved; load average during the run "
        f"{min(loads):.1f}-{max(loads):.1f} (2 cores, shared).",
        "",
        "| setting | WER all | WER real | p50 ms | p95 ms | max ms |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for n in names:
        s = stats[n]
        ms = sorted(s["ms"])
        p95 = ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]
        lines.append(
            f"| {n} | {100 * s['err'] / s['ref']:.1f} % | {100 * s['real_err'] / s['real_ref']:.1f} % "
            f"| {statistics.median(ms):.0f} | {p95:.0f} | {ms[-1]:.0f} |"
        )
    lines += ["", "## Transcripts that differ between settings", ""]
    for label, ref, texts in rows:
        if len({words(t).__str__() for t in texts.values()}) > 1:
            lines.append(f"- {label}: ref `{ref}`")
            lines += [f"  - {n}: `{t}`" for n, t in texts.items()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines[: 12 + len(names)]))


if __name__ == "__main__":
    main()
