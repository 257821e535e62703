"""Telephone carriers' media-stream dialects (Twilio, Telnyx, Vonage), sans-I/O: G.711 audio,
resampling to and from 16 kHz, and one translator per dialect to and from wire protocol v1, so
that ``/v1/twilio``, ``/v1/telnyx`` and ``/v1/vonage`` run the same session core as ``/v1/voice``.

This package imports nothing of voiceorch except :mod:`voiceorch.protocol`. See docs/telephony.md.
"""

from .audio import CallAudio as CallAudio
from .audio import CallFormat as CallFormat
from .audio import alaw_decode as alaw_decode
from .audio import alaw_encode as alaw_encode
from .audio import ulaw_decode as ulaw_decode
from .audio import ulaw_encode as ulaw_encode
from .translator import (
    TRANSLATORS as TRANSLATORS,
)
from .translator import (
    CallError as CallError,
)
from .translator import (
    CallTranslator as CallTranslator,
)
from .translator import (
    TelnyxTranslator as TelnyxTranslator,
)
from .translator import (
    Translation as Translation,
)
from .translator import (
    TwilioTranslator as TwilioTranslator,
)
from .translator import (
    VonageTranslator as VonageTranslator,
)
