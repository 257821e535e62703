"""Streaming Silero VAD (v6, the ONNX file that faster-whisper ships) with onnxruntime.

The model is loaded once per process; each audio source gets a :class:`SileroVADStream` that
carries the recurrent state (``h``, ``c``) and the 64 samples of context from one 512-sample
chunk to the next. A chunk takes about 0.1 ms on one core.

The graph's ``input`` is ``[seq_len, 576]`` with one ``h``/``c`` of ``[1, 1, 128]``: a sequence of
consecutive windows of ONE stream, run recurrently (not a batch of streams; the state has no
batch dimension). :meth:`SileroVADStream.probabilities` judges all of a stream's pending chunks
in one call, with exactly the probabilities of one call per chunk; the session runs these off
the event loop, many streams per thread hop (``voiceorch.engines.vad_batch``).
"""

from __future__ import annotations

from pathlib import Path

import attrs
import numpy as np

from .base import VAD_CHUNK_SAMPLES

CONTEXT_SAMPLES = 64


def default_model_path() -> Path:
    import faster_whisper

    return Path(faster_whisper.__file__).parent / "assets" / "silero_vad_v6.onnx"


@attrs.define
class SileroVAD:
    session: object  # onnxruntime.InferenceSession, safe to share between streams

    @classmethod
    def load(cls, path: str | Path | None = None) -> SileroVAD:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.inter_op_num_threads = 1
        options.intra_op_num_threads = 1
        options.log_severity_level = 4
        session = onnxruntime.InferenceSession(
            str(path or default_model_path()), providers=["CPUExecutionProvider"], sess_options=options
        )
        return cls(session)

    def new_stream(self) -> SileroVADStream:
        return SileroVADStream(self.session)


@attrs.define
class SileroVADStream:
    session: object
    _h: np.ndarray = attrs.field(factory=lambda: np.zeros((1, 1, 128), dtype=np.float32))
    _c: np.ndarray = attrs.field(factory=lambda: np.zeros((1, 1, 128), dtype=np.float32))
    _context: np.ndarray = attrs.field(factory=lambda: np.zeros(CONTEXT_SAMPLES, dtype=np.float32))

    def probability(self, chunk: bytes) -> float:
        return self.probabilities([chunk])[0]

    def probabilities(self, chunks: list[bytes]) -> list[float]:
        """The speech probability of each of consecutive ``chunks``, in one ONNX call (blocking,
        about 0.1 ms a chunk: call it off the event loop). The state moves on only if it works."""
        if not chunks:
            return []
        samples = np.frombuffer(b"".join(chunks), dtype="<i2").astype(np.float32) / 32768.0
        for chunk in chunks:
            if len(chunk) != VAD_CHUNK_SAMPLES * 2:
                raise ValueError(f"a VAD chunk holds {VAD_CHUNK_SAMPLES} samples, got {len(chunk) // 2}")
        audio = np.concatenate([self._context, samples])
        step = VAD_CHUNK_SAMPLES
        windows = np.stack([audio[i * step : i * step + step + CONTEXT_SAMPLES] for i in range(len(chunks))])
        output, self._h, self._c = self.session.run(None, {"input": windows, "h": self._h, "c": self._c})
        self._context = samples[-CONTEXT_SAMPLES:]
        return [float(x) for x in np.asarray(output).reshape(-1)]
