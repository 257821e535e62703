"""Audio to the engine interface's format (16 kHz mono s16le): float samples to PCM, and a
remote engine's PCM mixed down and resampled with soxr."""

from __future__ import annotations

import numpy as np
import soxr

from .base import SAMPLE_RATE, SAMPLE_WIDTH


def float_to_pcm(samples: np.ndarray) -> bytes:
    """Float samples (nominally -1..1; beyond is clipped) as signed 16-bit little-endian PCM."""
    return (np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


def pcm_to_float(pcm: bytes) -> np.ndarray:
    """Signed 16-bit little-endian PCM as float32 samples in -1..1 (the models' input)."""
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0


def to_engine_pcm(pcm: bytes, *, rate: int, width: int, channels: int) -> bytes:
    """Mix ``pcm`` (signed 16-bit little-endian, ``channels`` interleaved, at ``rate``) down
    to mono and resample it to 16 kHz. Raises ``ValueError`` for other sample widths, a
    rate or channel count below 1, or a length that is not a whole number of frames.

    Blocking (soxr takes about 3.5 ms per 10 s of 22.05 kHz audio): the engines call it in a
    worker thread."""
    check_format(rate=rate, width=width, channels=channels)
    if len(pcm) % (width * channels):
        raise ValueError("audio is not a whole number of frames")
    if rate == SAMPLE_RATE and channels == 1:
        return pcm
    samples = pcm_to_float(pcm).reshape(-1, channels)
    mono = samples.mean(axis=1)
    if rate != SAMPLE_RATE and len(mono):
        mono = soxr.resample(mono, rate, SAMPLE_RATE)
    return float_to_pcm(mono)


def check_format(*, rate: int, width: int, channels: int) -> None:
    """``ValueError`` unless the format is one :func:`to_engine_pcm` converts."""
    if width != SAMPLE_WIDTH:
        raise ValueError(f"unsupported sample width {width} (only 16-bit audio is accepted)")
    if rate < 1 or channels < 1:
        raise ValueError(f"bad audio format: rate {rate}, channels {channels}")
