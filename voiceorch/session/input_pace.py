"""How far a client's audio may run ahead of real time, sans-I/O.

A microphone produces audio at real time; a client that sends faster (a whole recording at
once, or a flood) would make the session do speech detection and buffering far beyond what
any person says. :class:`InputPace` tracks, for the audio accepted so far, the moment at which
it would have finished had it been streamed at real time from its first frame (idle time earns
no credit: the audio is never counted as behind real time). A frame that would put that moment
more than ``max_ahead_ms`` into the future is dropped. Once frames are dropped, they go on being
dropped until the audio accepted is back within half the bound, so a client that is only a
little too fast loses audio in a few long stretches and gets one error for each, instead of an
error for every other frame.

``speed`` (1.0 by default) makes the reference faster than real time: the audio is counted as
if played at ``speed`` times real time, so a client may go on sending at up to that many times
real time for ever, ``max_ahead_ms`` of audio ahead of it at most.

The caller passes in the time (``trio.current_time()`` in the session), so a test drives it
with numbers or with Trio's MockClock.
"""

from __future__ import annotations

import enum
import math

import attrs


class Pace(enum.Enum):
    ACCEPTED = "accepted"
    #: The first frame dropped since audio was last accepted: tell the client, once.
    DROPPING = "dropping"
    #: A later frame of the same run of dropped frames.
    DROPPED = "dropped"


@attrs.define
class InputPace:
    max_ahead_ms: float
    #: The reference pace, in multiples of real time.
    speed: float = attrs.field(default=1.0, validator=attrs.validators.gt(0.0))
    #: When the audio accepted so far would have finished playing at ``speed`` (seconds).
    _due: float = -math.inf
    _dropping: bool = False

    def ahead_ms(self, now: float) -> float:
        """How much of the audio accepted so far (ms) is ahead of the reference pace at ``now`` (≥ 0)."""
        return max(0.0, (self._due - now) * 1000 * self.speed)

    def admit(self, now: float, duration_ms: float) -> Pace:
        """Whether a frame of ``duration_ms`` arriving at ``now`` is accepted (then it counts)."""
        ahead = self.ahead_ms(now)
        limit = self.max_ahead_ms / 2 if self._dropping else self.max_ahead_ms
        if ahead + duration_ms > limit and duration_ms > 0:
            if self._dropping:
                return Pace.DROPPED
            self._dropping = True
            return Pace.DROPPING
        self._dropping = False
        self._due = now + (ahead + duration_ms) / (1000 * self.speed)
        return Pace.ACCEPTED
