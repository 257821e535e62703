"""Telephone audio, sans-I/O: G.711 μ-law and A-law in numpy, and the call's audio format
to and from wire protocol v1's 16 kHz s16le mono PCM (resampled with soxr).

The G.711 tables are ITU-T G.711's (the classic Sun ``g711.c`` formulation, as ``audioop``
had them): decoding is a 256-entry table, encoding a 65 536-entry table built once from the
same formula, so no per-sample Python runs and nothing depends on ``audioop`` (gone in 3.13).
"""

from __future__ import annotations

from typing import Literal

import attrs
import numpy as np
import soxr

V1_RATE = 16_000
Encoding = Literal["mulaw", "alaw", "l16le", "l16be"]

_ALL_PCM = np.arange(-32768, 32768, dtype=np.int32)


def _ulaw_encode_formula(pcm: np.ndarray) -> np.ndarray:
    value = pcm >> 2  # 14-bit
    negative = value < 0
    mask = np.where(negative, 0x7F, 0xFF)
    value = np.minimum(np.where(negative, -value, value), 8159) + 0x21
    segment = np.searchsorted(np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF]), value)
    code = np.where(segment >= 8, 0x7F, (segment << 4) | ((value >> (segment + 1)) & 0x0F))  # (past the top)
    return ((code ^ mask) & 0xFF).astype(np.uint8)


def _ulaw_decode_table() -> np.ndarray:
    code = ~np.arange(256, dtype=np.int32) & 0xFF
    exponent = (code >> 4) & 0x07
    magnitude = ((((code & 0x0F) << 3) + 0x84) << exponent) - 0x84
    return np.where(code & 0x80, -magnitude, magnitude).astype(np.int16)


def _alaw_encode_formula(pcm: np.ndarray) -> np.ndarray:
    value = pcm >> 3  # 13-bit
    negative = value < 0
    mask = np.where(negative, 0x55, 0xD5)
    value = np.where(negative, -value - 1, value)  # 0..4095
    segment = np.searchsorted(np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF]), value)
    shift = np.where(segment < 2, 1, segment)
    code = (segment << 4) | ((value >> shift) & 0x0F)
    return ((code ^ mask) & 0xFF).astype(np.uint8)


def _alaw_decode_table() -> np.ndarray:
    code = np.arange(256, dtype=np.int32) ^ 0x55
    segment = (code & 0x70) >> 4
    value = (code & 0x0F) << 4
    value = np.where(segment == 0, value + 8, (value + 0x108) << np.maximum(segment - 1, 0))
    return np.where(code & 0x80, value, -value).astype(np.int16)


ULAW_DECODE = _ulaw_decode_table()
ALAW_DECODE = _alaw_decode_table()
_ULAW_ENCODE = _ulaw_encode_formula(_ALL_PCM)
_ALAW_ENCODE = _alaw_encode_formula(_ALL_PCM)


def ulaw_decode(data: bytes) -> np.ndarray:
    """G.711 μ-law bytes to int16 samples."""
    return ULAW_DECODE[np.frombuffer(data, dtype=np.uint8)]


def ulaw_encode(samples: np.ndarray) -> bytes:
    """int16 samples to G.711 μ-law bytes."""
    return _ULAW_ENCODE[samples.astype(np.int32) + 32768].tobytes()


def alaw_decode(data: bytes) -> np.ndarray:
    """G.711 A-law bytes to int16 samples."""
    return ALAW_DECODE[np.frombuffer(data, dtype=np.uint8)]


def alaw_encode(samples: np.ndarray) -> bytes:
    """int16 samples to G.711 A-law bytes."""
    return _ALAW_ENCODE[samples.astype(np.int32) + 32768].tobytes()


@attrs.frozen
class CallFormat:
    """A call's audio: ``encoding`` at ``rate`` Hz, mono."""

    encoding: Encoding
    rate: int

    @property
    def bytes_per_sample(self) -> int:
        return 1 if self.encoding in ("mulaw", "alaw") else 2

    def bytes_per_ms(self) -> float:
        return self.rate * self.bytes_per_sample / 1000

    def decode(self, data: bytes) -> np.ndarray:
        """Payload bytes to int16 samples at ``rate`` (raises ValueError for a bad length)."""
        match self.encoding:
            case "mulaw":
                return ulaw_decode(data)
            case "alaw":
                return alaw_decode(data)
            case _:
                if len(data) % 2:
                    raise ValueError(f"16-bit audio needs an even number of bytes; got {len(data)}")
                return np.frombuffer(data, dtype="<i2" if self.encoding == "l16le" else ">i2").astype(np.int16)

    def encode(self, samples: np.ndarray) -> bytes:
        match self.encoding:
            case "mulaw":
                return ulaw_encode(samples)
            case "alaw":
                return alaw_encode(samples)
            case _:
                return samples.astype("<i2" if self.encoding == "l16le" else ">i2").tobytes()


MULAW_8K = CallFormat("mulaw", 8000)


class _Resampler:
    """A soxr stream from one rate to another, or nothing when they are the same."""

    def __init__(self, from_rate: int, to_rate: int) -> None:
        self._stream = None if from_rate == to_rate else soxr.ResampleStream(from_rate, to_rate, 1, dtype="int16")

    def chunk(self, samples: np.ndarray, *, last: bool = False) -> np.ndarray:
        if self._stream is None:
            return samples
        return self._stream.resample_chunk(samples.astype(np.int16), last=last)


class _WindowedResampler:
    """Caller audio up to 16 kHz with ~6 ms of latency: soxr's one-shot ``resample`` (quality HQ)
    over a sliding window, for an integer ratio.

    ``soxr.ResampleStream`` works in blocks: fed 20 ms frames at 8 -> 16 kHz it returns nothing
    for five frames, then ~100 ms at once, so the speech detector would hear the caller (and the
    silence that ends a turn) up to 100 ms late. Here each chunk is resampled with
    :data:`HISTORY` input samples of context before it; the last :data:`HOLD` samples, whose
    filter reaches into a future not yet received, are held back and emitted with the next
    chunk (``last`` emits them as they are). Against the whole signal resampled at once the
    output differs by about -70 dB (G.711's own noise is about -38 dB).
    """

    HISTORY = 256  # input samples of left context (32 ms at 8 kHz)
    HOLD = 48  # input samples held back (6 ms at 8 kHz)

    def __init__(self, from_rate: int, to_rate: int) -> None:
        assert to_rate % from_rate == 0, "an integer ratio"
        self._rates = (from_rate, to_rate)
        self._ratio = to_rate // from_rate
        self._buffer = np.zeros(0, dtype=np.int16)  # the input kept: context, then what is held
        self._emitted = 0  # input samples of the buffer whose output went out

    def chunk(self, samples: np.ndarray, *, last: bool = False) -> np.ndarray:
        self._buffer = np.concatenate([self._buffer, samples.astype(np.int16)])
        target = len(self._buffer) if last else len(self._buffer) - self.HOLD
        if target <= self._emitted:
            return np.zeros(0, dtype=np.int16)
        start = max(0, self._emitted - self.HISTORY)
        resampled = soxr.resample(self._buffer[start:], *self._rates, quality="HQ")
        out = resampled[self._ratio * (self._emitted - start) : self._ratio * (target - start)]
        self._emitted = target
        drop = max(0, self._emitted - self.HISTORY)
        self._buffer, self._emitted = self._buffer[drop:], self._emitted - drop
        return out


class CallAudio:
    """One call's audio both ways: carrier payloads in → 16 kHz v1 PCM; v1 PCM → payloads out.

    Caller audio goes up to 16 kHz through :class:`_WindowedResampler` (~6 ms of latency); reply
    audio down through a soxr stream (emitted in ~104 ms blocks at 16 -> 8 kHz; the playback lead
    of calls covers them). :meth:`flush_out` ends a reply (its tail comes out), :meth:`reset_out`
    drops it (a clear). Never blocks.
    """

    def __init__(self, call_format: CallFormat) -> None:
        self.format = call_format
        rate = call_format.rate
        self._in = (
            _WindowedResampler(rate, V1_RATE) if rate != V1_RATE and V1_RATE % rate == 0 else _Resampler(rate, V1_RATE)
        )
        self._out = _Resampler(V1_RATE, call_format.rate)

    def to_v1(self, payload: bytes) -> bytes:
        """A carrier payload as 16 kHz s16le (raises ValueError for a payload it cannot decode)."""
        return self._in.chunk(self.format.decode(payload)).astype("<i2").tobytes()

    def from_v1(self, pcm: bytes, *, last: bool = False) -> bytes:
        """16 kHz s16le reply audio as carrier payload bytes; ``last`` flushes the resampler."""
        samples = np.frombuffer(pcm, dtype="<i2")
        return self.format.encode(self._out.chunk(samples, last=last))

    def flush_out(self) -> bytes:
        """The end of a reply: what the output resampler still holds, then it starts afresh."""
        tail = self.from_v1(b"", last=True)
        self.reset_out()
        return tail

    def reset_out(self) -> None:
        self._out = _Resampler(V1_RATE, self.format.rate)
