"""Wire protocol v1 of ``/v1/voice``, sans-I/O: events, parsing, validation, serialization.

This package imports nothing else of voiceorch. See docs/protocol.md.
"""

from .codec import (
    MAX_AUDIO_FRAME_BYTES as MAX_AUDIO_FRAME_BYTES,
    MAX_TEXT_FRAME_BYTES as MAX_TEXT_FRAME_BYTES,
    ProtocolError as ProtocolError,
    check_audio_frame as check_audio_frame,
    encode as encode,
    parse_client_event as parse_client_event,
    parse_server_event as parse_server_event,
)
from .events import *  # noqa: F401,F403  (the event classes are the protocol's vocabulary)
