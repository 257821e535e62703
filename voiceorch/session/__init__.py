"""Sessions and turns: the machinery between the wire protocol and the engines."""

from .session import Session as Session
from .settings import SessionSettings as SessionSettings
from .transport import (
    MemoryTransport as MemoryTransport,
)
from .transport import (
    MessageTransport as MessageTransport,
)
from .transport import (
    memory_transport_pair as memory_transport_pair,
)
from .turn import Turn as Turn
from .turn import run_turn as run_turn
