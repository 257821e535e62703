"""Wire protocol v1 of ``/v1/voice``, sans-I/O: events, parsing, validation, serialization.

This package imports nothing else of voiceorch. See docs/protocol.md.
"""

from .close_codes import (
    CLOSE_GOING_AWAY as CLOSE_GOING_AWAY,
)
from .close_codes import (
    CLOSE_INTERNAL_ERROR as CLOSE_INTERNAL_ERROR,
)
from .close_codes import (
    CLOSE_MESSAGE_TOO_BIG as CLOSE_MESSAGE_TOO_BIG,
)
from .close_codes import (
    CLOSE_NORMAL as CLOSE_NORMAL,
)
from .close_codes import (
    CLOSE_POLICY as CLOSE_POLICY,
)
from .close_codes import (
    CLOSE_TRY_AGAIN_LATER as CLOSE_TRY_AGAIN_LATER,
)
from .codec import (
    MAX_AUDIO_FRAME_BYTES as MAX_AUDIO_FRAME_BYTES,
)
from .codec import (
    MAX_TEXT_FRAME_BYTES as MAX_TEXT_FRAME_BYTES,
)
from .codec import (
    ProtocolError as ProtocolError,
)
from .codec import (
    check_audio_frame as check_audio_frame,
)
from .codec import (
    encode as encode,
)
from .codec import (
    parse_client_event as parse_client_event,
)
from .codec import (
    parse_server_event as parse_server_event,
)
from .events import *  # noqa: F401,F403  (the event classes are the protocol's vocabulary)
