"""Cut-offs and end-of-turn delay: server VAD (fixed silence) vs the semantic end-of-turn policy.

    nice .venv/bin/python -m bench.turn_eval [--out bench/baselines/turn_eval.md]

Corpus: ``bench.corpus.make_corpus``'s pause set (24 sentences with a 0.6-1.5 s pause where they
are plainly unfinished, 12 complete controls; espeak-ng variants and Piper joe) plus the real
speech of tests/data (JFK: three mid-sentence pauses of ~1.1, 1.1 and 0.6 s; hotwords), each
followed by 3.5 s of silence. Silero VAD (threshold 0.5, 32 ms chunks, the session's hysteresis)
finds the pauses; every pause is replayed through each policy in 32 ms steps of silence, with the
Smart Turn model judging the audio up to that moment (its trailing silence included) and, for the
transcript rules, Whisper tiny.en (window = utterance + 3 s) transcribing the audio up to the pause;
the text policies also score that transcript with the text end-of-turn model
(:mod:`voiceorch.engines.text_end_of_turn`).

- cut-off: a policy ends the turn in a pause that speech follows (counted per utterance);
- delay: silence (ms, from Silero's silence onset) before the policy ends the final pause; model
  and STT compute is reported apart (it runs inside the pause).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import wave
from pathlib import Path

import numpy as np

from bench.corpus.make_corpus import ensure
from voiceorch.engines.embedded import whisper_model_dir
from voiceorch.engines.end_of_turn import SmartTurn
from voiceorch.engines.silero_vad import SileroVAD
from voiceorch.engines.text_end_of_turn import TextTurnModel
from voiceorch.engines.whisper_windowed import WindowedWhisperSTT
from voiceorch.session.end_of_turn_policy import FixedSilencePolicy, SemanticPolicy

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"
CHUNK = 512
CHUNK_MS = 32
TAIL_S = 3.5


def _pcm(path: Path) -> np.ndarray:
    with wave.open(str(path)) as w:
        return np.frombuffer(w.readframes(w.getnframes()), "<i2")


def pauses(vad: SileroVAD, pcm: np.ndarray) -> tuple[list[int], list[int]]:
    """Silence onsets and speech starts (in samples), by Silero with the session's hysteresis."""
    stream = vad.new_stream()
    speaking, onsets, starts = False, [], []
    for k in range(0, pcm.size - CHUNK + 1, CHUNK):
        p = stream.probability(pcm[k : k + CHUNK].tobytes())
        if not speaking and p >= 0.5:
            speaking = True
            starts.append(k + CHUNK)
        elif speaking and p < 0.35:
            speaking = False
            onsets.append(k + CHUNK)
    return onsets, starts


def replay(policy, onset: int, limit_ms: int, judge, transcribe, score=None) -> tuple[int | None, int]:
    """Silence (ms) at which ``policy`` ends this pause (None: speech came back first), judgements
    made. ``score`` (the text end-of-turn model), when given, scores the transcript."""
    probability = judged_at = transcript = text_probability = None
    judgements = 0
    silence = 0
    while silence < limit_ms:
        step = policy.step(silence, probability, judged_at, transcript, text_probability)
        if step.action == "end":
            return silence, judgements
        if step.action == "judge":
            judged_at = silence
            judgements += 1
            end = onset + silence * 16
            probability = judge(end) if getattr(policy, "use_model", False) else None
            transcript = transcribe(onset) if getattr(policy, "use_transcript", False) else None
            text_probability = score(transcript) if score is not None and transcript else None
            continue
        silence += CHUNK_MS  # the session sees silence grow one VAD chunk at a time
    return None, judgements


POLICIES = {
    "server VAD 500 ms": FixedSilencePolicy(silence_ms=500),
    "server VAD 200 ms": FixedSilencePolicy(silence_ms=200),
    "semantic audio, cap 2 s (medium)": SemanticPolicy.for_eagerness("medium", use_transcript=False),
    "semantic audio, cap 1 s (high)": SemanticPolicy.for_eagerness("high", use_transcript=False),
    "transcript rule only, cap 2 s": SemanticPolicy.for_eagerness("medium", use_model=False),
    "semantic audio + transcript, cap 2 s": SemanticPolicy.for_eagerness("medium"),
    "semantic audio + transcript, cap 1 s": SemanticPolicy.for_eagerness("high"),
    "semantic audio + transcript, cap 3 s (low)": SemanticPolicy.for_eagerness("low"),
    "semantic audio p>=0.8 + transcript, cap 2 s": SemanticPolicy.for_eagerness("medium", threshold=0.8),
    "semantic audio p>=0.9 + transcript, cap 2 s": SemanticPolicy.for_eagerness("medium", threshold=0.9),
}
#: Policies that also use the text end-of-turn model's score of the transcript (its threshold).
TEXT_POLICIES = {
    "semantic audio + transcript + text p>=0.02, cap 2 s": SemanticPolicy.for_eagerness("medium", text_threshold=0.02),
    "semantic audio + transcript + text p>=0.05, cap 2 s (auto)": SemanticPolicy.for_eagerness("auto"),
    "semantic audio + transcript + text p>=0.1, cap 2 s": SemanticPolicy.for_eagerness("medium", text_threshold=0.1),
    "semantic audio + transcript + text p>=0.05, cap 1 s (high)": SemanticPolicy.for_eagerness("high"),
    "transcript rule + text p>=0.05 only, cap 2 s": SemanticPolicy.for_eagerness("medium", use_model=False),
}
POLICIES.update(TEXT_POLICIES)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "baselines" / "turn_eval.md")
    parser.add_argument("--stt-margin", type=float, default=3.0, help="Whisper window = prefix + this (s)")
    parser.add_argument("--stt-tail-ms", type=int, default=0, help="silence after the onset given to Whisper")
    args = parser.parse_args()
    folder, manifest = ensure()
    items = [
        ("jfk_16k (real)", _pcm(DATA / "jfk_16k.wav"), False),
        ("hotwords_16k (real)", _pcm(DATA / "hotwords_16k.wav"), True),
    ]
    items += [(f"{e['file']} {e['voice']}", _pcm(folder / e["file"]), e["complete"]) for e in manifest["pause"]]
    vad = SileroVAD.load()
    model = SmartTurn.load()
    stt = WindowedWhisperSTT.load(whisper_model_dir(), margin_s=args.stt_margin)
    text_model = TextTurnModel.load()
    text_ms: list[float] = []
    loads = [os.getloadavg()[0]]
    judge_ms: list[float] = []
    stt_ms: list[float] = []
    results = {name: {"cut": 0, "delays": [], "never": 0} for name in POLICIES}
    with_pause = 0
    detail = []
    for label, pcm, _complete in items:
        pcm = np.concatenate([pcm, np.zeros(int(TAIL_S * 16000), "<i2")])
        onsets, starts = pauses(vad, pcm)
        if not onsets:
            continue
        cache_j: dict[int, float] = {}
        cache_t: dict[int, str] = {}

        def judge(end: int) -> float:
            if end not in cache_j:
                t0 = time.perf_counter()
                cache_j[end] = model.judge_sync(pcm[:end].tobytes())
                judge_ms.append((time.perf_counter() - t0) * 1000)
            return cache_j[end]

        def transcribe(onset: int) -> str:
            if onset not in cache_t:
                t0 = time.perf_counter()
                cache_t[onset] = stt.transcribe_sync(pcm[: onset + args.stt_tail_ms * 16].tobytes())
                stt_ms.append((time.perf_counter() - t0) * 1000)
            return cache_t[onset]

        cache_s: dict[str, float] = {}

        def score(text: str) -> float:
            if text not in cache_s:
                t0 = time.perf_counter()
                cache_s[text] = text_model.probability_sync(text)
                text_ms.append((time.perf_counter() - t0) * 1000)
            return cache_s[text]

        mids = onsets[:-1]
        if mids:
            with_pause += 1
        row = [label, len(mids)]
        for name, policy in POLICIES.items():
            scorer = score if name in TEXT_POLICIES else None
            cut = False
            for k, onset in enumerate(mids):
                # The pause lasts until Silero hears speech again (the session's barge-in point).
                gap_ms = (starts[k + 1] - onset) * 1000 // 16000
                ended, _ = replay(policy, onset, gap_ms, judge, transcribe, scorer)
                cut = cut or ended is not None
            final, _ = replay(policy, onsets[-1], int(TAIL_S * 1000), judge, transcribe, scorer)
            results[name]["cut"] += cut
            if final is None:
                results[name]["never"] += 1
            else:
                results[name]["delays"].append(final)
            row.append(("CUT " if cut else "") + (f"{final}" if final is not None else "-"))
        detail.append((row, {o: cache_t.get(o) for o in onsets}, dict(cache_s)))
        loads.append(os.getloadavg()[0])
    lines = [
        f"# End of turn: server VAD vs semantic ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
        "",
        f"{len(detail)} utterances, {with_pause} with mid-sentence pauses (24 synthetic + JFK); load average "
        f"{min(loads):.1f}-{max(loads):.1f} (2 cores). "
        f"Smart Turn call p50 {statistics.median(judge_ms):.0f} ms "
        f"(max {max(judge_ms):.0f}); Whisper (prefix + {args.stt_tail_ms} ms of its pause, "
        f"window + {args.stt_margin:g} s) "
        f"p50 {statistics.median(stt_ms):.0f} ms; text end-of-turn model (SmolLM2-135M, 1 thread) "
        f"p50 {statistics.median(text_ms):.0f} ms (max {max(text_ms):.0f}).",
        "",
        "| policy | cut-off rate | end delay p50 ms | p95 ms | max ms |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, r in results.items():
        d = sorted(r["delays"])
        p95 = d[min(len(d) - 1, round(0.95 * (len(d) - 1)))]
        lines.append(
            f"| {name} | {r['cut']}/{with_pause} ({100 * r['cut'] / with_pause:.0f} %) | {statistics.median(d):.0f} "
            f"| {p95} | {d[-1]} |"
        )
    lines += [
        "",
        "Per utterance (mid pauses; final-pause delay ms, CUT = ended in a mid pause):",
        "",
        "| utterance | pauses | " + " | ".join(POLICIES) + " |",
        "|" + " --- |" * (len(POLICIES) + 2),
    ]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row, _, _ in detail]
    lines += ["", "Transcripts at each pause onset (when the transcript rules asked), with the text model's score:", ""]
    for row, texts, scores in detail:
        lines.append(
            f"- {row[0]}: "
            + " / ".join(
                f"{t!r} ({scores[t]:.3f})" if t in scores else repr(t) for t in texts.values() if t is not None
            )
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines[: 6 + len(POLICIES)]))


if __name__ == "__main__":
    main()
