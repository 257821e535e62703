"""Audio end-of-turn model: Smart Turn v3.2 (pipecat-ai, BSD-2-Clause) with onnxruntime.

The model judges whether the speaker has finished the turn from the last 8 s of the turn's audio
(Whisper-style log-mel, 80 x 800). Preprocessing follows pipecat's ``LocalSmartTurnAnalyzerV3``
(pipecat-ai 1.14): keep the LAST 8 s, or left-pad with zeros to 8 s; normalise the waveform to zero
mean and unit variance; log-mel with Whisper's 80 Slaney filters (here from faster-whisper's
``FeatureExtractor``, which pipecat's vendored copy of transformers' extractor equals); the graph's
input is ``input_features`` ``[1, 80, 800]`` and its output a sigmoid probability that the turn is
complete.

The ONNX file is not on PyPI on its own: ``python -m voiceorch.engines.end_of_turn fetch`` downloads
the ``pipecat-ai`` wheel with ``pip download --no-deps`` (no dependency of pipecat is installed),
checks the file's SHA-256, and copies only the model and the wheel's licence to
:func:`default_model_path` (``<sys.prefix>/share/voiceorch/``). ``VOICEORCH_SMART_TURN_MODEL``
names another file.
"""

from __future__ import annotations

import hashlib
import os
import sys
from functools import partial
from pathlib import Path

import attrs
import numpy as np
import trio

from .base import SAMPLE_RATE, SAMPLE_WIDTH, EngineError

MODEL_NAME = "smart-turn-v3.2-cpu.onnx"
MODEL_SHA256 = "2bb026316b14a660486a75b1733cd3fbab8c2fd0314dc9af7be49f8cca967e4f"
PIPECAT_WHEEL = "pipecat-ai==1.14.0"
_MEMBER = "pipecat/audio/turn/smart_turn/data/" + MODEL_NAME
WINDOW_SECONDS = 8
WINDOW_SAMPLES = WINDOW_SECONDS * SAMPLE_RATE


def default_model_path() -> Path:
    """Where set-up puts the model (``VOICEORCH_SMART_TURN_MODEL`` overrides); only a path, no I/O."""
    override = os.environ.get("VOICEORCH_SMART_TURN_MODEL")
    if override:
        return Path(override)
    return Path(sys.prefix) / "share" / "voiceorch" / MODEL_NAME


def smart_turn_features(audio: np.ndarray) -> np.ndarray:
    """The model's input ``[1, 80, 800]`` float32 for 16 kHz float audio in [-1, 1] (any length)."""
    from faster_whisper.feature_extractor import FeatureExtractor

    x = np.asarray(audio, dtype=np.float32)
    if x.size > WINDOW_SAMPLES:
        x = x[-WINDOW_SAMPLES:]
    elif x.size < WINDOW_SAMPLES:
        x = np.pad(x, (WINDOW_SAMPLES - x.size, 0))
    x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
    # padding=0: 128000 samples -> 801 STFT frames, the extractor drops the last -> 800 (as pipecat).
    log_mel = _feature_extractor(FeatureExtractor)(x, padding=0)
    return log_mel[np.newaxis, :, :800].astype(np.float32)


_FE = None


def _feature_extractor(cls):  # one shared extractor (its mel filters cost ~1 ms to build)
    global _FE
    if _FE is None:
        _FE = cls(feature_size=80, chunk_length=WINDOW_SECONDS)
    return _FE


@attrs.define(kw_only=True)
class SmartTurn:
    """A loaded end-of-turn model, shared by all sessions of a process (one call at a time).

    A call costs ~45-60 ms of one core here (``intra_op_num_threads=1``).
    """

    session: object  # onnxruntime.InferenceSession
    limiter: trio.CapacityLimiter = attrs.field(factory=lambda: trio.CapacityLimiter(1))

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None, *, threads: int = 1) -> SmartTurn:
        """Load the ONNX file (blocking; once at start-up). Raises ``FileNotFoundError`` naming the fix."""
        import onnxruntime

        model = Path(path) if path is not None else default_model_path()
        if not model.is_file():
            raise FileNotFoundError(
                f"end-of-turn model {model} is missing: run `python -m voiceorch.engines.end_of_turn fetch`"
            )
        options = onnxruntime.SessionOptions()
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.inter_op_num_threads = 1
        options.intra_op_num_threads = threads
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = onnxruntime.InferenceSession(str(model), sess_options=options, providers=["CPUExecutionProvider"])
        return cls(session=session)

    def judge_sync(self, pcm: bytes) -> float:
        """Blocking form of :meth:`judge` (for a worker thread or the bench)."""
        if len(pcm) % SAMPLE_WIDTH:
            raise EngineError("turn_model_failed", "PCM length is not a whole number of 16-bit samples")
        audio = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
        features = smart_turn_features(audio)
        try:
            (output,) = self.session.run(None, {"input_features": features})
        except Exception as exc:
            raise EngineError("turn_model_failed", f"end-of-turn inference failed: {exc!r}") from exc
        return float(np.asarray(output).reshape(-1)[0])

    async def judge(self, pcm: bytes) -> float:
        """Probability (0-1) that the turn whose 16 kHz s16le audio so far is ``pcm`` is complete.

        Only the last 8 s count. Runs in a worker thread under :attr:`limiter`. Cancellation
        returns at once (``abandon_on_cancel``); the abandoned call (tens of ms, no side effects)
        finishes in its thread and only then frees the limiter.
        """
        if not pcm:
            return 0.0
        return await trio.to_thread.run_sync(
            partial(self.judge_sync, pcm), abandon_on_cancel=True, limiter=self.limiter
        )

    async def warm_up(self) -> None:
        """One judgement of silence, so the first real one is not slowed by onnxruntime's set-up."""
        await self.judge(bytes(SAMPLE_RATE * SAMPLE_WIDTH))


def fetch(destination: Path | None = None) -> Path:
    """Download the pipecat-ai wheel (``--no-deps``) and extract only the model and its licence.

    Blocking (network); for set-up, never at run time. Checks the file's SHA-256.
    """
    import subprocess
    import tempfile
    import zipfile

    target = destination or default_model_path()
    if target.is_file() and _sha256(target) == MODEL_SHA256:
        return target
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [_pip_python(), "-m", "pip", "download", "--quiet", "--no-deps", "-d", tmp, PIPECAT_WHEEL], check=True
        )
        (wheel,) = Path(tmp).glob("pipecat_ai-*.whl")
        with zipfile.ZipFile(wheel) as archive:
            data = archive.read(_MEMBER)
            licence = next(
                (archive.read(n) for n in archive.namelist() if n.endswith(".dist-info/licenses/LICENSE")), b""
            )
    if hashlib.sha256(data).hexdigest() != MODEL_SHA256:
        raise RuntimeError(f"{_MEMBER} in {PIPECAT_WHEEL} does not have the expected SHA-256")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    target.with_name(MODEL_NAME + ".LICENSE").write_bytes(licence)
    return target


def _pip_python() -> str:
    """A Python with pip for the download: ``$VOICEORCH_PIP_PYTHON`` (run.sh passes its own, since a
    venv synced by uv has no pip), else this one."""
    return os.environ.get("VOICEORCH_PIP_PYTHON", sys.executable)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


if __name__ == "__main__":  # pragma: no cover - set-up entry point
    if sys.argv[1:] == ["fetch"]:
        print(fetch())
    else:
        sys.exit("usage: python -m voiceorch.engines.end_of_turn fetch")
