"""Word error rate for the bench's speech-to-text tables: the same normalisation and distance
everywhere (stt_eval, turn_eval, telephony_wer)."""

from __future__ import annotations

import re


def words(text: str) -> list[str]:
    """Lower case, no punctuation, hyphens split; "Dr." is "doctor"."""
    return [{"dr": "doctor"}.get(w, w) for w in re.sub(r"[^a-z0-9' ]+", " ", text.lower().replace("-", " ")).split()]


def edit_distance(ref: list[str], hyp: list[str]) -> int:
    """Word-level Levenshtein distance (substitutions + deletions + insertions)."""
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1]
