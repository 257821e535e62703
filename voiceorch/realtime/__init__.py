"""The OpenAI Realtime API's WebSocket dialect, sans-I/O: events, parsing, and a translator to
and from wire protocol v1, so that ``/v1/realtime`` runs the same session core as ``/v1/voice``.

This package imports nothing of voiceorch except :mod:`voiceorch.protocol`. See docs/realtime.md.
"""

from . import events as events
from .codec import (
    RealtimeProtocolError as RealtimeProtocolError,
)
from .codec import (
    encode as encode,
)
from .codec import (
    parse_client_event as parse_client_event,
)
from .translator import RealtimeTranslator as RealtimeTranslator
from .translator import Translation as Translation
from .translator import random_id as random_id
