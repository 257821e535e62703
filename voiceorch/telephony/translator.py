"""Translators between the carriers' media-stream dialects and wire protocol v1, sans-I/O.

One translator per call sits between the carrier's WebSocket and an unchanged
:class:`~voiceorch.session.Session`:

- :meth:`CallTranslator.from_carrier` takes one carrier frame (and the time, for DTMF batching)
  and returns the v1 frames for the session (caller audio as 16 kHz s16le binary frames, DTMF
  as ``input_text``, ``playback.position`` after a clear) and any frames for the carrier.
- :meth:`CallTranslator.from_session` takes one v1 frame the session sends and returns the
  carrier's frames (reply audio encoded for the call, a mark after each chunk, ``clear`` on an
  interruption) and any v1 frames for the session.

What the caller heard comes from marks: a mark is sent after each chunk of reply audio; the
carrier echoes it when the audio before it has played, and returns every pending mark on a
clear, so what was heard is up to the last mark echoed *before* the clear. Bad frames never
reach the carrier as anything: they are returned in ``errors`` (the transport logs them) and
the call goes on. Never blocks, never awaits.
"""

from __future__ import annotations

import base64
import binascii
import heapq
import itertools
import json
from collections.abc import Sequence
from typing import Any, ClassVar

import attrs

from .. import protocol as p
from .audio import MULAW_8K, CallAudio, CallFormat

Message = str | bytes
#: Caller audio goes to the session in frames of at most 40 ms (speech detection judges frames).
V1_FRAME_BYTES = 40 * p.BYTES_PER_MS
#: Digits pressed less than this far apart reach the LLM as one message; ``#`` ends a batch at once.
DTMF_PAUSE_S = 1.5
#: Telnyx media waiting for an earlier sequence number: past this many, the gap is given up.
REORDER_WINDOW = 5


@attrs.frozen
class CallError:
    code: str
    message: str


@attrs.define
class Translation:
    to_session: list[Message] = attrs.Factory(list)  # v1 frames, in order
    to_carrier: list[Message] = attrs.Factory(list)  # carrier frames, in order
    errors: list[CallError] = attrs.Factory(list)  # bad carrier frames: logged, never answered
    notes: list[tuple[str, dict]] = attrs.Factory(list)  # log lines (call.start, call.dtmf, ...)
    ended: bool = False  # the carrier ended the stream (stop)


class BadFrame(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.error = CallError(code, message)


@attrs.define
class _Reply:
    turn_id: str
    sent_ms: float = 0.0  # audio of the reply sent to the carrier so far (what left the resampler)
    heard_ms: float = 0.0  # up to the last mark the carrier echoed
    cleared: bool = False


class CallTranslator:
    """The carrier-independent half: marks, clear, DTMF, caller audio. Not thread-safe."""

    dialect: ClassVar[str] = "?"

    def __init__(self, *, instruction_params: Sequence[str] = (), dtmf_pause_s: float = DTMF_PAUSE_S) -> None:
        #: The ``start`` custom parameters (Vonage: headers) that may set the session's
        #: instructions, the first present wins (an operator's choice; none by default).
        self.instruction_params = tuple(instruction_params)
        self._dtmf_pause_s = dtmf_pause_s
        self.audio: CallAudio | None = None  # once the call's format is known
        self.call_id: str | None = None
        self._digits: list[str] = []
        self._last_digit_at = 0.0
        self._marks: dict[str, _Reply] = {}  # pending mark name -> its reply position
        self._mark_ms: dict[str, float] = {}
        self._mark_ids = itertools.count(1)
        self._reply: _Reply | None = None
        self._replies: dict[str, _Reply] = {}

    # --- carrier -> session ---------------------------------------------------------------

    def from_carrier(self, frame: Message, now: float) -> Translation:
        """Translate one carrier frame. Never raises: a bad frame comes back in ``errors``."""
        out = Translation()
        try:
            self._on_carrier(frame, now, out)
        except BadFrame as exc:
            out.errors.append(exc.error)
        self._poll_digits(now, out)
        return out

    def _on_carrier(self, frame: Message, now: float, out: Translation) -> None:
        raise NotImplementedError

    @staticmethod
    def _json(frame: Message) -> dict[str, Any]:
        if isinstance(frame, bytes):
            raise BadFrame("invalid_frame", "binary frames are not part of this dialect")
        try:
            data = json.loads(frame)
        except ValueError:
            raise BadFrame("invalid_json", "the frame is not valid JSON") from None
        if not isinstance(data, dict):
            raise BadFrame("invalid_json", "the frame is not a JSON object")
        return data

    @staticmethod
    def _field(data: dict, *path: str, kind: type = str) -> Any:
        value: Any = data
        for key in path:
            if not isinstance(value, dict) or key not in value:
                raise BadFrame("missing_field", f"{'.'.join(path)} is missing")
            value = value[key]
        if kind is int:  # carriers send numbers as strings
            try:
                return int(value)
            except (TypeError, ValueError):
                raise BadFrame("invalid_field", f"{'.'.join(path)} is not a number") from None
        if not isinstance(value, kind):
            raise BadFrame("invalid_field", f"{'.'.join(path)} is not a {kind.__name__}")
        return value

    def _caller_audio(self, payload: bytes, out: Translation) -> None:
        if self.audio is None:
            raise BadFrame("media_before_start", "media before the stream started")
        try:
            pcm = self.audio.to_v1(payload)
        except ValueError as exc:
            raise BadFrame("invalid_audio", str(exc)) from None
        for offset in range(0, len(pcm), V1_FRAME_BYTES):
            out.to_session.append(pcm[offset : offset + V1_FRAME_BYTES])

    def _base64(self, text: Any) -> bytes:
        if not isinstance(text, str):
            raise BadFrame("invalid_audio", "media.payload is not a string")
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise BadFrame("invalid_audio", "media.payload is not valid base64") from None

    def _started(self, call_id: str, call_format: CallFormat, parameters: Any, out: Translation) -> None:
        self.call_id = call_id
        self.audio = CallAudio(call_format)
        fields = {"call_id": call_id, "encoding": call_format.encoding, "rate": call_format.rate}
        out.notes.append(("call.start", fields))
        parameters = parameters if isinstance(parameters, dict) else {}
        for name in self.instruction_params:
            instructions = parameters.get(name)
            if isinstance(instructions, str) and instructions.strip():
                patch = p.SessionPatch(instructions=instructions)
                out.to_session.append(p.encode(p.SessionUpdate(session=patch)))
                out.notes.append(("call.instructions_set", {"parameter": name, "chars": len(instructions)}))
                return
        if "instructions" in parameters:
            out.notes.append(("call.instructions_ignored", {"reason": "the parameter is not allowlisted"}))

    def _digit(self, digit: Any, now: float, out: Translation) -> None:
        if not isinstance(digit, str) or len(digit) != 1 or digit not in "0123456789*#ABCD":
            raise BadFrame("invalid_field", f"not a DTMF digit: {digit!r}")
        out.notes.append(("call.dtmf", {"digit": digit}))
        self._digits.append(digit)
        self._last_digit_at = now
        if digit == "#":
            self._flush_digits(out)

    def _poll_digits(self, now: float, out: Translation) -> None:
        if self._digits and now - self._last_digit_at >= self._dtmf_pause_s:
            self._flush_digits(out)

    def _flush_digits(self, out: Translation) -> None:
        digits, self._digits = self._digits, []
        if not digits:
            return
        keys = digits[0] if len(digits) == 1 else ", ".join(digits[:-1]) + " and " + digits[-1]
        text = f"The caller pressed {keys} on the keypad."
        out.to_session.append(p.encode(p.InputText(text=text)))

    def _mark_echoed(self, name: str, out: Translation) -> None:
        reply = self._marks.pop(name, None)
        played = self._mark_ms.pop(name, None)
        if reply is None or played is None:
            out.notes.append(("call.mark_unknown", {"name": name}))
            return
        if not reply.cleared:
            reply.heard_ms = max(reply.heard_ms, played)

    def _ended(self, out: Translation) -> None:
        self._flush_digits(out)
        out.ended = True
        out.notes.append(("call.stop", {"call_id": self.call_id}))

    # --- session -> carrier ---------------------------------------------------------------

    def from_session(self, frame: Message) -> Translation:
        """Translate one v1 frame of the session."""
        out = Translation()
        if isinstance(frame, bytes):
            reply = self._reply
            if reply is None or reply.cleared or self.audio is None:
                return out
            self._sent(reply, self._send_audio(self.audio.from_v1(frame), out), out)
            return out
        event = p.parse_server_event(frame)
        match event:
            case p.ResponseCreated(turn_id=turn_id):
                self._reply = self._replies[turn_id] = _Reply(turn_id)
                if len(self._replies) > 8:
                    self._replies.pop(next(iter(self._replies)))
            case p.ResponseInterrupted(turn_id=turn_id):
                self._clear(turn_id, out)
            case p.ResponseDone(turn_id=turn_id, status=status):
                reply = self._replies.get(turn_id)
                if reply is not None and not reply.cleared:
                    if status == "completed" and self.audio is not None:
                        self._sent(reply, self._send_audio(self.audio.flush_out(), out, last=True), out)
                    elif status == "cancelled":
                        self._clear(turn_id, out)
                if self._reply is reply:
                    self._reply = None
                if self.audio is not None:
                    self.audio.reset_out()
            case p.Error(code=code, message=message):
                out.notes.append(("call.session_error", {"code": code, "message": message}))
        return out

    def _sent(self, reply: _Reply, sent_bytes: int, out: Translation) -> None:
        """Count audio sent to the carrier and mark its end. The resampler emits in blocks (soxr
        HQ: about 100 ms at 16 -> 8 kHz), so a mark counts what was *sent*, never audio still
        held back: a mark echoed means that much was played, not more."""
        if sent_bytes:
            assert self.audio is not None
            reply.sent_ms += sent_bytes / self.audio.format.bytes_per_ms()
            self._mark(reply, out)

    def _mark(self, reply: _Reply, out: Translation) -> None:
        name = f"vo-{next(self._mark_ids)}"
        self._marks[name] = reply
        self._mark_ms[name] = reply.sent_ms
        out.to_carrier.extend(self._mark_frames(name))

    def _clear(self, turn_id: str, out: Translation) -> None:
        """Drop what the carrier still holds of ``turn_id``; tell the session what was heard."""
        reply = self._replies.get(turn_id)
        if reply is None or reply.cleared:
            return
        reply.cleared = True
        pending = [name for name, owner in self._marks.items() if owner is reply]
        if pending:
            out.to_carrier.extend(self._clear_frames())
        if self.audio is not None:
            self.audio.reset_out()
        self._drop_unsent()
        out.to_session.append(p.encode(p.PlaybackPosition(turn_id=turn_id, played_ms=reply.heard_ms)))
        out.notes.append(("call.clear", {"turn_id": turn_id, "heard_ms": reply.heard_ms, "sent_ms": reply.sent_ms}))

    # --- the dialect's half ---------------------------------------------------------------

    def _send_audio(self, payload: bytes, out: Translation, *, last: bool = False) -> int:
        """Frame ``payload`` for the carrier; returns the payload bytes sent now."""
        raise NotImplementedError

    def _mark_frames(self, name: str) -> list[Message]:
        raise NotImplementedError

    def _clear_frames(self) -> list[Message]:
        raise NotImplementedError

    def _drop_unsent(self) -> None:
        """Forget reply audio held back for framing (Vonage)."""


# --- Twilio and Telnyx: JSON text frames, base64 payloads ----------------------------------------


_TELNYX_ENCODINGS = {"PCMU": "mulaw", "PCMA": "alaw", "L16": "l16be"}


class TwilioTranslator(CallTranslator):
    """Twilio Media Streams (bidirectional ``<Connect><Stream>``): μ-law 8 kHz, camelCase."""

    dialect = "twilio"
    _sid_key = "streamSid"
    _start_keys = ("callSid", "customParameters")

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.stream_id: str | None = None

    def _on_carrier(self, frame: Message, now: float, out: Translation) -> None:
        data = self._json(frame)
        event = data.get("event")
        if event == "connected":
            return
        if event == "start":
            if self.stream_id is not None:
                raise BadFrame("unexpected_start", "the stream has already started")
            sid = self._field(data, self._sid_key)
            self.stream_id = sid
            call_format = self._start_format(data)
            start = data.get("start") if isinstance(data.get("start"), dict) else {}
            call_key, params_key = self._start_keys
            self._started(str(start.get(call_key, sid)), call_format, start.get(params_key), out)
            return
        if event == "error":  # (Telnyx reports its own errors so)
            out.notes.append(("call.carrier_error", {"payload": str(data.get("payload"))[:500]}))
            return
        if event not in ("media", "dtmf", "mark", "stop"):
            raise BadFrame("unknown_event", f"unknown event {event!r}")
        if self.stream_id is None:
            raise BadFrame("media_before_start", f"{event} before the stream started")
        if data.get(self._sid_key) != self.stream_id:
            raise BadFrame("wrong_stream", f"{self._sid_key} {data.get(self._sid_key)!r} is not this call's")
        self._on_stream_event(event, data, now, out)

    def _on_stream_event(self, event: str, data: dict, now: float, out: Translation) -> None:
        match event:
            case "media":
                if data.get("media", {}).get("track", "inbound") not in ("inbound", "inbound_track"):
                    return
                self._caller_audio(self._base64(self._field(data, "media", "payload")), out)
            case "dtmf":
                self._digit(self._field(data, "dtmf", "digit"), now, out)
            case "mark":
                self._mark_echoed(self._field(data, "mark", "name"), out)
            case "stop":
                self._ended(out)

    def _start_format(self, data: dict) -> CallFormat:
        encoding = self._field(data, "start", "mediaFormat", "encoding")
        rate = self._field(data, "start", "mediaFormat", "sampleRate", kind=int)
        if encoding != "audio/x-mulaw" or rate != 8000:
            raise BadFrame("unsupported_format", f"only audio/x-mulaw at 8000 Hz; got {encoding} at {rate}")
        return MULAW_8K

    def _send_audio(self, payload: bytes, out: Translation, *, last: bool = False) -> int:
        if payload:
            media = {"payload": base64.b64encode(payload).decode("ascii")}
            out.to_carrier.append(json.dumps({"event": "media", self._sid_key: self.stream_id, "media": media}))
        return len(payload)

    def _mark_frames(self, name: str) -> list[Message]:
        return [json.dumps({"event": "mark", self._sid_key: self.stream_id, "mark": {"name": name}})]

    def _clear_frames(self) -> list[Message]:
        return [json.dumps({"event": "clear", self._sid_key: self.stream_id})]


class TelnyxTranslator(TwilioTranslator):
    """Telnyx media streaming (``stream_bidirectional_mode: rtp``): snake_case, PCMU/PCMA/L16,
    media reordered by ``sequence_number`` (Telnyx does not guarantee their order)."""

    dialect = "telnyx"
    _sid_key = "stream_id"
    _start_keys = ("call_control_id", "custom_parameters")

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._next_seq: int | None = None  # the sequence number due next
        self._held: list[tuple[int, bytes]] = []  # media that came early (a heap)
        self._passed: set[int] = set()  # sequence numbers of other events, ahead of the media due

    def _start_format(self, data: dict) -> CallFormat:
        encoding = self._field(data, "start", "media_format", "encoding")
        rate = self._field(data, "start", "media_format", "sample_rate", kind=int)
        if encoding not in _TELNYX_ENCODINGS or rate not in (8000, 16000):
            message = f"only PCMU, PCMA or L16 at 8000 or 16000 Hz; got {encoding} at {rate}"
            raise BadFrame("unsupported_format", message)
        if self._next_seq is None and "sequence_number" in data:
            self._next_seq = self._field(data, "sequence_number", kind=int) + 1
        return CallFormat(_TELNYX_ENCODINGS[encoding], rate)

    def _on_stream_event(self, event: str, data: dict, now: float, out: Translation) -> None:
        if "sequence_number" not in data:
            super()._on_stream_event(event, data, now, out)
            return
        seq = self._field(data, "sequence_number", kind=int)
        if event != "media":
            self._skip(seq)
            super()._on_stream_event(event, data, now, out)
            self._release(out)
            return
        if data.get("media", {}).get("track", "inbound") not in ("inbound", "inbound_track"):
            self._skip(seq)
            return
        payload = self._base64(self._field(data, "media", "payload"))
        if self._next_seq is not None and seq < self._next_seq:
            out.notes.append(("call.media_late", {"sequence_number": seq, "expected": self._next_seq}))
            return
        heapq.heappush(self._held, (seq, payload))
        self._release(out)

    def _skip(self, seq: int) -> None:
        if self._next_seq is None or seq == self._next_seq:
            self._next_seq = seq + 1
        elif seq > self._next_seq:
            self._passed.add(seq)
        self._advance()

    def _advance(self) -> None:
        while self._next_seq in self._passed:
            self._passed.discard(self._next_seq)
            self._next_seq += 1

    def _release(self, out: Translation) -> None:
        while self._held and (
            self._next_seq is None or self._held[0][0] <= self._next_seq or len(self._held) > REORDER_WINDOW
        ):
            seq, payload = heapq.heappop(self._held)
            self._next_seq = seq + 1
            self._passed = {passed for passed in self._passed if passed > seq}
            self._advance()
            self._caller_audio(payload, out)

    def _send_audio(self, payload: bytes, out: Translation, *, last: bool = False) -> int:
        if payload:
            media = {"payload": base64.b64encode(payload).decode("ascii")}
            out.to_carrier.append(json.dumps({"event": "media", "media": media}))
        return len(payload)

    def _mark_frames(self, name: str) -> list[Message]:
        return [json.dumps({"event": "mark", "mark": {"name": name}})]

    def _clear_frames(self) -> list[Message]:
        return [json.dumps({"event": "clear"})]


# --- Vonage: a JSON handshake, then binary L16 both ways -----------------------------------------


class VonageTranslator(CallTranslator):
    """Vonage Voice API WebSockets: ``websocket:connected`` with ``audio/l16;rate=16000`` (or
    8000), then 20 ms frames of 16-bit little-endian PCM both ways; notify/clear as marks."""

    dialect = "vonage"

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._unsent = b""  # reply audio short of a whole 20 ms frame

    def _on_carrier(self, frame: Message, now: float, out: Translation) -> None:
        if isinstance(frame, bytes):
            self._caller_audio(frame, out)
            return
        data = self._json(frame)
        event = data.get("event")
        match event:
            case "websocket:connected":
                if self.audio is not None:
                    raise BadFrame("unexpected_start", "the stream has already started")
                content_type = self._field(data, "content-type").replace(" ", "").lower()
                rates = {"audio/l16;rate=16000": 16000, "audio/l16;rate=8000": 8000}
                if content_type not in rates:
                    raise BadFrame("unsupported_format", f"only audio/l16;rate=16000 or 8000; got {content_type}")
                self._started(str(data.get("uuid", "vonage")), CallFormat("l16le", rates[content_type]), data, out)
            case "websocket:dtmf":
                if self.audio is None:
                    raise BadFrame("media_before_start", "dtmf before websocket:connected")
                nested = data.get("dtmf")
                digit = data.get("digit", nested.get("digit") if isinstance(nested, dict) else None)
                self._digit(digit, now, out)
            case "websocket:notify":
                payload = data.get("payload")
                if isinstance(payload, dict) and isinstance(payload.get("mark"), str):
                    self._mark_echoed(payload["mark"], out)
                else:
                    out.notes.append(("call.notify_unknown", {}))
            case "websocket:cleared":
                out.notes.append(("call.cleared", {}))
            case _:
                raise BadFrame("unknown_event", f"unknown event {event!r}")

    def _frame_bytes(self) -> int:
        assert self.audio is not None
        return int(self.audio.format.bytes_per_ms() * 20)

    def _send_audio(self, payload: bytes, out: Translation, *, last: bool = False) -> int:
        data = self._unsent + payload
        size = self._frame_bytes()
        if last and len(data) % size:
            data += bytes(size - len(data) % size)  # the reply's end, padded with silence
        whole = len(data) - len(data) % size
        out.to_carrier.extend(data[offset : offset + size] for offset in range(0, whole, size))
        self._unsent = data[whole:]
        return whole

    def _drop_unsent(self) -> None:
        self._unsent = b""

    def _mark_frames(self, name: str) -> list[Message]:
        return [json.dumps({"action": "notify", "payload": {"mark": name}})]

    def _clear_frames(self) -> list[Message]:
        return [json.dumps({"action": "clear"})]


TRANSLATORS: dict[str, type[CallTranslator]] = {
    "twilio": TwilioTranslator,
    "telnyx": TelnyxTranslator,
    "vonage": VonageTranslator,
}
