"""What a telephone line costs the speech-to-text: word error rate of the same utterances at
16 kHz and after an 8 kHz G.711 round trip (μ-law and A-law), with the embedded faster-whisper
``tiny.en``, for a few decoding settings.

The utterances are the real recordings of tests/data and synthetic sentences spoken by the
embedded Piper voice (espeak-ng is not installed here; Piper is the project's own TTS). The
phone path is exactly the server's: :class:`voiceorch.telephony.CallAudio` (soxr 16 → 8 kHz,
G.711 encode, decode, soxr 8 → 16 kHz). Run it with ``nice``:

    nice -n 19 .venv/bin/python bench/telephony_wer.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.wer import edit_distance, words  # noqa: E402
from voiceorch.audio_files import read_as_wire_pcm  # noqa: E402
from voiceorch.engines.embedded import piper_voice_path, whisper_model_dir  # noqa: E402
from voiceorch.telephony import CallAudio, CallFormat  # noqa: E402

REAL = {
    "jfk_16k.wav": "And so my fellow Americans, ask not what your country can do for you, "
    "ask what you can do for your country.",
    "hotwords_16k.wav": "Then you go into your comfy eye folder again in the comfy eye.",
}
#: Sentences for the Piper voice: (what it is told to say, how a transcript writes it) where those differ.
SYNTHETIC: list[str | tuple[str, str]] = [
    "I would like to book a table for four people on Friday at seven.",
    (
        "My account number is four five six, and my postcode is twelve thirty four.",
        "My account number is 456, and my postcode is 1234.",
    ),
    "Can you tell me when the next train to Manchester leaves?",
    "Please cancel my appointment with doctor Patel next Tuesday.",
    "The package was supposed to arrive yesterday but it never came.",
    "What is the weather going to be like this weekend?",
    "I need to change the address on my insurance policy.",
    "Could you repeat that more slowly, please?",
    "Yes, that is correct, thank you very much.",
    ("My flight number is BA two eight seven from London.", "My flight number is BA287 from London."),
    "I am calling about the bill I received last month.",
    "Is the pharmacy open on Sunday afternoon?",
    "I would like to speak to someone in customer service.",
    "My name is Sarah Johnson and I live on Baker Street.",
    "The internet has been down since this morning.",
    "Can I pay by credit card over the phone?",
    "I want to move my delivery to next Wednesday.",
    "How long will the repair take?",
    "Please send the confirmation to my email address.",
    "I think there is a mistake on my last invoice.",
    "Do you have any tables available for tonight?",
    "My son has a fever and a sore throat.",
    "I lost my card and I need a new one.",
    "What time does the last bus leave the station?",
    "Could you check whether my order has shipped?",
    "I would like to cancel my subscription, please.",
    "The heating in our apartment is not working.",
    "Can you transfer me to the billing department?",
    ("We are expecting about twenty guests on Saturday.", "We are expecting about 20 guests on Saturday."),
    "Thank you, that was very helpful, goodbye.",
]


def spoken(entry: str | tuple[str, str]) -> str:
    return entry if isinstance(entry, str) else entry[0]


def reference(entry: str | tuple[str, str]) -> str:
    return entry if isinstance(entry, str) else entry[1]


def phone(pcm: bytes, encoding: str) -> bytes:
    """16 kHz PCM after the server's path to a call and back (8 kHz G.711)."""
    out, back = CallAudio(CallFormat(encoding, 8000)), CallAudio(CallFormat(encoding, 8000))
    payload = out.from_v1(pcm) + out.flush_out()
    return back.to_v1(payload) + back._in.chunk(np.zeros(0, np.int16), last=True).astype("<i2").tobytes()


def main() -> None:
    from faster_whisper import WhisperModel

    from voiceorch.engines.piper_tts import PiperTTS

    utterances = [(name, read_as_wire_pcm(ROOT / "tests" / "data" / name), text) for name, text in REAL.items()]
    tts = PiperTTS.load(piper_voice_path())
    for index, entry in enumerate(SYNTHETIC):
        utterances.append((f"piper_{index}", trio.run(tts.synthesize, spoken(entry)), reference(entry)))
    model = WhisperModel(str(whisper_model_dir()), device="cpu", compute_type="int8", cpu_threads=1)
    conditions = {
        "16 kHz": lambda pcm: pcm,
        "8 kHz μ-law": lambda pcm: phone(pcm, "mulaw"),
        "8 kHz A-law": lambda pcm: phone(pcm, "alaw"),
    }
    rows = []
    for beam in (1, 5):
        for condition, transform in conditions.items():
            errors = {"real": [0, 0], "synthetic": [0, 0]}
            started = time.perf_counter()
            for name, pcm, text in utterances:
                audio = np.frombuffer(transform(pcm), dtype="<i2").astype(np.float32) / 32768.0
                segments, _ = model.transcribe(
                    audio, language="en", beam_size=beam, vad_filter=False, condition_on_previous_text=False
                )
                hyp = " ".join(s.text.strip() for s in segments)
                ref = words(text)
                kind = "synthetic" if name.startswith("piper") else "real"
                errors[kind][0] += edit_distance(ref, words(hyp))
                errors[kind][1] += len(ref)
                if beam == 1:
                    print(f"{condition:12} {name:16} {hyp}", file=sys.stderr)
            elapsed = time.perf_counter() - started
            total = [sum(v[0] for v in errors.values()), sum(v[1] for v in errors.values())]
            rates = (100 * e / n for e, n in (errors["real"], errors["synthetic"], total))
            rows.append((beam, condition, *rates, elapsed))
    real_words = sum(len(words(t)) for t in REAL.values())
    synthetic_words = sum(len(words(reference(t))) for t in SYNTHETIC)
    print(
        f"| beam | audio | WER real (2, {real_words} words) | WER synthetic ({len(SYNTHETIC)}, {synthetic_words} words)"
        " | WER all | decode s |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    for beam, condition, real, synthetic, total, elapsed in rows:
        print(f"| {beam} | {condition} | {real:.1f} % | {synthetic:.1f} % | {total:.1f} % | {elapsed:.1f} |")
    print(f"(load average at the end: {load})")


if __name__ == "__main__":
    main()
