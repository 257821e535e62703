"""Generate the synthetic speech corpora of the STT and end-of-turn evaluations (deterministic text).

    python -m bench.corpus.make_corpus [--out DIR]

Writes 16 kHz mono s16le WAVs and a ``manifest.json`` to DIR (default
``$VOICEORCH_CORPUS_DIR`` or ``/tmp/voiceorch-corpus``); the audio is not committed (~10 MB), the
text and the recipe are (see PROVENANCE.md). Voices: espeak-ng (Debian package ``espeak-ng``;
several variants and speeds) and Piper ``en_US-joe-medium`` (the embedded voice). ``sox`` resamples.

Two sets:
- ``stt``: 60 complete sentences, each spoken by one voice (voices rotate).
- ``pause``: 24 sentences cut where they are plainly unfinished ("... a table for | four people"),
  with a 0.6-1.5 s pause at the cut, and 12 complete sentences with no pause (controls).
  espeak-ng says the whole sentence with an SSML ``<break>`` (the sentence's prosody carries on
  over the pause); Piper, which has no SSML, says both halves separately (the first half gets a
  falling, final-sounding ending: the hard case for an audio-only model).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np

ESPEAK_VOICES = [
    ("en-us", 165),
    ("en-gb", 150),
    ("en-us+f3", 175),
    ("en-gb-scotland", 160),
    ("en-us+m3", 140),
    ("en-gb-x-rp+f2", 185),
]
PIPER = "piper:joe"
VOICES = [f"espeak:{v}:{s}" for v, s in ESPEAK_VOICES] + [PIPER]

STT_SENTENCES = [
    "What is the capital of France?",
    "Is the sun a star?",
    "Where is the Eiffel Tower?",
    "How many legs does a spider have?",
    "Tell me a joke about cats.",
    "What time is it in Tokyo?",
    "Please turn off the kitchen lights.",
    "Set a timer for ten minutes.",
    "Who wrote Romeo and Juliet?",
    "How far is the moon from the earth?",
    "Can you recommend a good book?",
    "What is the weather like today?",
    "Play some relaxing music.",
    "How do I boil an egg?",
    "What is two plus two?",
    "Remind me to call my mother tomorrow.",
    "Why is the sky blue?",
    "What does a bee make?",
    "How tall is Mount Everest?",
    "Translate hello into Spanish.",
    "Which planet is closest to the sun?",
    "What is the speed of light?",
    "Book a table for four people at seven.",
    "How do you spell necessary?",
    "What is the largest ocean on earth?",
    "Read me the news headlines.",
    "When did the Second World War end?",
    "What is the square root of sixty four?",
    "Add milk and bread to my shopping list.",
    "How many days are there in a leap year?",
    "Who painted the Mona Lisa?",
    "What is the boiling point of water?",
    "Send a message to Sarah saying I am running late.",
    "What is the population of Canada?",
    "How do plants make their food?",
    "Is it going to rain this weekend?",
    "What is the tallest animal in the world?",
    "Give me a recipe for pancakes.",
    "What language do they speak in Brazil?",
    "How long does it take to fly to London?",
    "Wake me up at six thirty in the morning.",
    "What is the chemical symbol for gold?",
    "Who was the first person on the moon?",
    "How many continents are there?",
    "Explain how a rainbow forms.",
    "What is my next meeting about?",
    "Turn the volume down a little.",
    "What is the difference between a frog and a toad?",
    "Why do cats purr?",
    "Find a pharmacy near me that is open now.",
    "What year did the Titanic sink?",
    "How many hours of sleep does an adult need?",
    "Spell the word rhythm for me.",
    "What is the freezing point of water in Fahrenheit?",
    "Who invented the telephone?",
    "What are the three primary colours?",
    "Open the garage door please.",
    "How much is a dozen?",
    "What do pandas eat?",
    "Can dogs see colours?",
]

# (first part, second part): the first part plainly cannot end the sentence.
PAUSE_SENTENCES = [
    ("I would like to book a table for", "four people tonight."),
    ("Can you tell me the way to", "the nearest train station?"),
    ("My favourite colour is", "dark green."),
    ("Please remind me to buy", "some eggs and milk."),
    ("What is the weather going to be like in", "Paris tomorrow?"),
    ("I need to send an email to", "my manager about the report."),
    ("Could you play the song by", "the Beatles called Yesterday?"),
    ("The meeting has been moved to", "Thursday afternoon."),
    ("How many people live in the", "city of New York?"),
    ("I am looking for a recipe with", "chicken and rice."),
    ("Set an alarm for", "seven in the morning."),
    ("Tell me something interesting about", "the ocean."),
    ("I want to order a large pizza with", "mushrooms and olives."),
    ("Is there a good restaurant near", "the central park?"),
    ("Can you add a meeting with", "John on Monday?"),
    ("What is the difference between a", "crocodile and an alligator?"),
    ("My flight leaves from", "gate twelve at noon."),
    ("Turn the heating up to", "twenty one degrees."),
    ("How long does it take to drive from", "Boston to New York?"),
    ("I think the answer is", "probably forty two."),
    ("Call my sister and tell her that", "I will be late."),
    ("Which is bigger, the sun or", "the earth?"),
    ("Do you know if the shop is open on", "Sunday mornings?"),
    ("Give me three ideas for a", "birthday present for my dad."),
]
PAUSE_COMPLETE = [
    "What is the capital of Italy?",
    "Turn on the lights in the bedroom.",
    "How old is the universe?",
    "Tell me a story about a dragon.",
    "What is the time now?",
    "Is it cold outside?",
    "Who is the president of France?",
    "Play my workout playlist.",
    "How do I make a cup of tea?",
    "What is the biggest country in the world?",
    "Order a taxi to the airport.",
    "Thank you, that is all.",
]
PAUSES_S = [0.6, 0.8, 1.0, 1.2, 1.5, 0.7, 0.9, 1.1, 1.3, 1.4]


def _read_wav_16k(path: Path) -> np.ndarray:
    with tempfile.NamedTemporaryFile(suffix=".wav") as tmp:
        subprocess.run(["sox", str(path), "-r", "16000", "-c", "1", "-b", "16", "-e", "signed", tmp.name], check=True)
        with wave.open(tmp.name) as w:
            return np.frombuffer(w.readframes(w.getnframes()), "<i2").copy()


def _espeak(text: str, voice: str, speed: int, out: Path, ssml: bool = False) -> np.ndarray:
    raw = out.with_suffix(".raw.wav")
    args = ["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(raw)] + (["-m"] if ssml else []) + [text]
    subprocess.run(args, check=True)
    pcm = _read_wav_16k(raw)
    raw.unlink()
    return pcm


_PIPER = None


def _piper(text: str, out: Path) -> np.ndarray:
    global _PIPER
    from piper import PiperVoice, SynthesisConfig

    from voiceorch.engines.embedded import piper_voice_path

    if _PIPER is None:
        _PIPER = PiperVoice.load(str(piper_voice_path()))
    raw = out.with_suffix(".raw.wav")
    with wave.open(str(raw), "wb") as w:
        _PIPER.synthesize_wav(text, w, syn_config=SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0))
    pcm = _read_wav_16k(raw)
    raw.unlink()
    return pcm


def _trim(pcm: np.ndarray, threshold: int = 300) -> np.ndarray:
    loud = np.flatnonzero(np.abs(pcm.astype(np.int32)) > threshold)
    return pcm[loud[0] : loud[-1] + 1] if loud.size else pcm


def _say(text: str, voice: str, out: Path) -> np.ndarray:
    if voice == PIPER:
        return _trim(_piper(text, out))
    _, name, speed = voice.split(":")
    return _trim(_espeak(text, name, int(speed), out))


def _write(path: Path, pcm: np.ndarray, lead_s: float = 0.3, tail_s: float = 0.0) -> None:
    lead, tail = np.zeros(int(lead_s * 16000), "<i2"), np.zeros(int(tail_s * 16000), "<i2")
    pcm = np.concatenate([lead, pcm.astype("<i2"), tail])
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(pcm.tobytes())


def build(out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    manifest: dict = {"stt": [], "pause": []}
    for i, text in enumerate(STT_SENTENCES):
        voice = VOICES[i % len(VOICES)]
        path = out / f"stt_{i:02d}.wav"
        _write(path, _say(text, voice, path), tail_s=0.2)
        manifest["stt"].append({"file": path.name, "text": text, "voice": voice})
    for i, (first, second) in enumerate(PAUSE_SENTENCES):
        voice = VOICES[i % len(VOICES)]
        pause = PAUSES_S[i % len(PAUSES_S)]
        path = out / f"pause_{i:02d}.wav"
        if voice == PIPER:
            gap = np.zeros(int(pause * 16000), "<i2")
            pcm = np.concatenate([_say(first, voice, path), gap, _say(second, voice, path)])
        else:
            _, name, speed = voice.split(":")
            ssml = f'<speak>{first} <break time="{int(pause * 1000)}ms"/> {second}</speak>'
            pcm = _trim(_espeak(ssml, name, int(speed), path, ssml=True))
        _write(path, pcm)
        manifest["pause"].append(
            {
                "file": path.name,
                "text": f"{first} {second}",
                "first": first,
                "voice": voice,
                "pause_s": pause,
                "complete": False,
            }
        )
    for i, text in enumerate(PAUSE_COMPLETE):
        voice = VOICES[(i + 3) % len(VOICES)]
        path = out / f"complete_{i:02d}.wav"
        _write(path, _say(text, voice, path))
        manifest["pause"].append({"file": path.name, "text": text, "voice": voice, "pause_s": 0.0, "complete": True})
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def corpus_dir() -> Path:
    return Path(os.environ.get("VOICEORCH_CORPUS_DIR", "/tmp/voiceorch-corpus"))


def ensure(out: Path | None = None) -> tuple[Path, dict]:
    """The corpus folder and its manifest, generating it first when absent."""
    out = out or corpus_dir()
    if not (out / "manifest.json").is_file():
        build(out)
    return out, json.loads((out / "manifest.json").read_text())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    target = args.out or corpus_dir()
    build(target)
    print(target)
