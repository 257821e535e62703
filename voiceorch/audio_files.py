"""Audio files to and from the wire format (PCM s16le, mono, 16 kHz), for the client side.

Any format libsndfile reads (WAV of any sample width, rate and channel count, FLAC, OGG...)
is mixed down to mono and resampled with soxr.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile
import soxr

from .engines.pcm import float_to_pcm

WIRE_RATE = 16_000


def read_as_wire_pcm(path: str | Path) -> bytes:
    """Read an audio file and convert it to wire-format PCM bytes."""
    samples, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    mono = samples.mean(axis=1)
    if rate != WIRE_RATE:
        mono = soxr.resample(mono, rate, WIRE_RATE)
    return float_to_pcm(mono)


def write_wire_pcm(path: str | Path, pcm: bytes) -> None:
    """Write wire-format PCM bytes as a 16 kHz mono 16-bit WAV file."""
    soundfile.write(str(path), np.frombuffer(pcm, dtype="<i2"), WIRE_RATE, subtype="PCM_16")
