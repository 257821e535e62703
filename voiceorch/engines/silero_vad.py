"""Streaming Silero VAD (v6, the ONNX file that faster-whisper ships) with onnxruntime.

The model is loaded once per process; each audio source gets a :class:`SileroVADStream` that
carries the recurrent state (``h``, ``c``) and the 64 samples of context from one 512-sample
chunk to the next. A chunk takes about 0.1 ms on one core.

The graph's ``input`` is ``[seq_len, 576]`` with one ``h``/``c`` of ``[1, 1, 128]``: a sequence of
consecutive windows of ONE stream, run recurrently; its state has no batch dimension as
exported. But the network itself is per window up to its LSTM (a convolution encoder with the
windows as its batch), and the ONNX LSTM takes a batch (``[seq, batch, 128]``, state
``[1, batch, 128]``): the export only lays the windows along the LSTM's *sequence* axis, by one
Transpose (``perm [0, 2, 1]``). :func:`batched_graph` turns that Transpose to ``[2, 0, 1]`` and
the state's second dimension free, which makes the same weights judge one window of each of B
streams, each row with its own state, in one call: :meth:`SileroVAD.probabilities_many`. Its
probabilities are exactly (bit for bit) those of one call per stream
(tests/test_vad_batch.py). :meth:`SileroVADStream.probabilities` still judges all of one
stream's pending chunks in one call of the graph as shipped. The session runs these off the
event loop, all streams in one thread hop (``voiceorch.engines.vad_batch``).
"""

from __future__ import annotations

from pathlib import Path

import attrs
import numpy as np

from .base import VAD_CHUNK_SAMPLES

CONTEXT_SAMPLES = 64
#: The output of the Transpose that lays the windows along the LSTM's sequence axis.
_WINDOWS_TO_LSTM = "/Transpose_output_0"


def default_model_path() -> Path:
    import faster_whisper

    return Path(faster_whisper.__file__).parent / "assets" / "silero_vad_v6.onnx"


def batched_graph(path: str | Path) -> bytes:
    """The Silero v6 graph at ``path`` with a batch of streams instead of a sequence of windows
    (see the module's docstring); raises ValueError if the graph is not the one expected."""
    import onnx

    model = onnx.load(str(path))
    found = [n for n in model.graph.node if n.op_type == "Transpose" and list(n.output) == [_WINDOWS_TO_LSTM]]
    lstm = [n for n in model.graph.node if n.op_type == "LSTM"]
    if len(found) != 1 or len(lstm) != 1 or lstm[0].input[0] != _WINDOWS_TO_LSTM:
        raise ValueError(f"{path}: not the Silero v6 graph expected (a Transpose feeding one LSTM)")
    (perm,) = [a for a in found[0].attribute if a.name == "perm"]
    if list(perm.ints) != [0, 2, 1]:
        raise ValueError(f"{path}: the Transpose before the LSTM is {list(perm.ints)}, not [0, 2, 1]")
    del perm.ints[:]
    perm.ints.extend([2, 0, 1])  # [windows, 128, 1] -> [1 step, windows as the batch, 128]
    for value in (*model.graph.input, *model.graph.output):
        if value.name in ("h", "c", "hn", "cn"):
            dim = value.type.tensor_type.shape.dim[1]
            dim.ClearField("dim_value")
            dim.dim_param = "streams"
    return model.SerializeToString()


def _session(model: str | bytes):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.inter_op_num_threads = 1
    options.intra_op_num_threads = 1
    options.log_severity_level = 4
    return onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"], sess_options=options)


def _samples(chunks: list[bytes]) -> np.ndarray:
    for chunk in chunks:
        if len(chunk) != VAD_CHUNK_SAMPLES * 2:
            raise ValueError(f"a VAD chunk holds {VAD_CHUNK_SAMPLES} samples, got {len(chunk) // 2}")
    return np.frombuffer(b"".join(chunks), dtype="<i2").astype(np.float32) / 32768.0


@attrs.define
class SileroVAD:
    session: object  # onnxruntime.InferenceSession, safe to share between streams
    #: The same model with a batch of streams (:func:`batched_graph`); None: no batching.
    batch_session: object | None = None

    @classmethod
    def load(cls, path: str | Path | None = None) -> SileroVAD:
        path = path or default_model_path()
        return cls(_session(str(path)), _session(batched_graph(path)))

    def new_stream(self) -> SileroVADStream:
        return SileroVADStream(self.session, model=self)

    def probabilities_many(self, work: list[tuple[SileroVADStream, list[bytes]]]) -> list[list[float] | Exception]:
        """Each stream's probabilities of its consecutive chunks, all streams in one ONNX call per
        step (step k judges the k-th chunk of every stream that has one), each with its own state:
        exactly what ``stream.probabilities(chunks)`` gives for each. Blocking: call it off the
        event loop. A stream whose chunks are bad gets its ValueError (the others go on); a
        stream's state moves on only if all its chunks were judged."""
        if self.batch_session is None:
            raise RuntimeError("this SileroVAD was loaded without its batched graph")
        results: list[list[float] | Exception] = [[] for _ in work]
        rows = []  # (index, samples, h, c, context): the new state is kept here until the end
        for index, (stream, chunks) in enumerate(work):
            try:
                rows.append([index, _samples(chunks), stream._h, stream._c, stream._context])
            except ValueError as exc:
                results[index] = exc
        try:
            step = 0
            while live := [row for row in rows if len(row[1]) > step * VAD_CHUNK_SAMPLES]:
                at = step * VAD_CHUNK_SAMPLES
                chunks = [row[1][at : at + VAD_CHUNK_SAMPLES] for row in live]
                windows = np.stack([np.concatenate([row[4], chunk]) for row, chunk in zip(live, chunks)])
                h = np.concatenate([row[2] for row in live], axis=1)
                c = np.concatenate([row[3] for row in live], axis=1)
                output, hn, cn = self.batch_session.run(None, {"input": windows, "h": h, "c": c})
                for j, (row, chunk, probability) in enumerate(zip(live, chunks, np.asarray(output).reshape(-1))):
                    results[row[0]].append(float(probability))  # type: ignore[union-attr]
                    row[2], row[3], row[4] = hn[:, j : j + 1], cn[:, j : j + 1], chunk[-CONTEXT_SAMPLES:]
                step += 1
        except Exception as exc:  # the model failed: every stream of the batch gets it, no state moves
            return [result if isinstance(result, Exception) else exc for result in results]
        for index, _samples_of, h, c, context in rows:
            stream = work[index][0]
            stream._h, stream._c, stream._context = h, c, context
        return results


@attrs.define
class SileroVADStream:
    session: object
    #: The model it belongs to, which judges many streams at once (None: one at a time only).
    model: SileroVAD | None = attrs.field(default=None, kw_only=True)
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
        samples = _samples(chunks)
        audio = np.concatenate([self._context, samples])
        step = VAD_CHUNK_SAMPLES
        windows = np.stack([audio[i * step : i * step + step + CONTEXT_SAMPLES] for i in range(len(chunks))])
        output, self._h, self._c = self.session.run(None, {"input": windows, "h": self._h, "c": self._c})
        self._context = samples[-CONTEXT_SAMPLES:]
        return [float(x) for x in np.asarray(output).reshape(-1)]
