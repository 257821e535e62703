"""Telephone carriers' media-stream dialects (Twilio, Telnyx, Vonage), sans-I/O: G.711 audio,
resampling to and from 16 kHz, and one translator per dialect to and from wire protocol v1, so
that ``/v1/twilio``, ``/v1/telnyx`` and ``/v1/vonage`` run the same session core as ``/v1/voice``.

This package imports nothing of voiceorch except :mod:`voiceorch.protocol`. See docs/telephony.md.
"""

from .audio import CallAudio as CallAudio, CallFormat as CallFormat, alaw_decode as alaw_decode
from .audio import alaw_encode as alaw_encode, ulaw_decode as ulaw_decode, ulaw_encode as ulaw_encode
from .translator import (
    TRANSLATORS as TRANSLATORS,
    CallError as CallError,
    CallTranslator as CallTranslator,
    TelnyxTranslator as TelnyxTranslator,
    Translation as Translation,
    TwilioTranslator as TwilioTranslator,
    VonageTranslator as VonageTranslator,
)
