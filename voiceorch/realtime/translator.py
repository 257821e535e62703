"""A translator between the Realtime API's dialect and voiceorch's wire protocol v1, sans-I/O.

An unchanged voiceorch :class:`~voiceorch.session.Session` speaks protocol v1
(docs/protocol.md); a Realtime client speaks the events of :mod:`.events`. One
:class:`RealtimeTranslator` per connection sits between them:

- :meth:`RealtimeTranslator.from_client` takes a client text frame and returns the v1 frames for
  the session (control events as JSON text, audio as 16 kHz s16le binary frames) and any
  Realtime frames to answer the client with at once (errors, the items it created).
- :meth:`RealtimeTranslator.from_session` takes one v1 frame the session sends (an event, or a
  binary frame of reply audio) and returns the Realtime frames for the client.

It holds what the dialect needs and v1 does not carry: the ids (``event_id`` on every event,
``item_id`` of user and assistant items, ``response_id``), the Realtime-only session fields it
echoes, and one soxr resampler per direction (24 kHz base64 PCM16 in, 16 kHz frames to the
session; 16 kHz reply frames to 24 kHz base64 out). It never blocks and never awaits.

Everything it keeps for a connection is bounded, by count and by size (the ``MAX_*`` constants
below, docs/realtime.md section 7): a text item beyond what one turn can hold is refused with
``error`` ``input_text_buffer_full``, and it remembers only the latest item ids.
"""

from __future__ import annotations

import base64
import binascii
import collections
import math
import uuid
from collections.abc import Callable
from typing import Any

import attrs
import numpy as np
import soxr

from .. import protocol as p
from . import events as ev
from .codec import RealtimeProtocolError, encode, parse_client_event

Message = str | bytes
V1_RATE = p.AUDIO_FORMAT.sample_rate
#: Input audio goes to the session in frames of at most 40 ms, as a microphone would send it
#: (speech detection judges audio frame by frame).
V1_FRAME_BYTES = 40 * p.BYTES_PER_MS

#: v1 error codes that have an upstream name of their own.
_UPSTREAM_CODES = {
    "input_audio_buffer_empty": "input_audio_buffer_commit_empty",
    "no_active_response": "response_cancel_not_active",
}
#: Fields of the beta API's session, and where the GA API has them.
_BETA_FIELDS = {
    "input_audio_format": "audio.input.format",
    "output_audio_format": "audio.output.format",
    "turn_detection": "audio.input.turn_detection",
    "modalities": "output_modalities",
    "voice": "audio.output.voice",
    "input_audio_transcription": "audio.input.transcription",
}
_DEFAULTS = p.TurnDetection()

#: User text items held for the next ``response.create`` (more: ``input_text_buffer_full``).
MAX_PENDING_TEXT_ITEMS = 64
#: The v1 ``input_text`` frame the held texts become is at most the session's text frame limit
#: (more: ``input_text_buffer_full``), so the session never refuses it.
MAX_PENDING_TEXT_BYTES = p.MAX_TEXT_FRAME_BYTES
#: Item ids remembered (to refuse a duplicate id, and to tell an assistant item from an unknown
#: one in a truncate); older ones are forgotten.
MAX_REMEMBERED_ITEMS = 256
#: A client's own item id is at most this long (longer: ``invalid_value``).
MAX_ITEM_ID_CHARS = 64
#: Committed user turns whose response has not ended yet (v1 has at most a few: one answered,
#: ``max_pending_turns`` waiting); older ones are forgotten.
MAX_UNANSWERED_TURNS = 16
_TEXT_FRAME_OVERHEAD = len(p.encode(p.InputText(text="")).encode())


def random_id(prefix: str) -> str:
    """An id like upstream's: ``prefix_`` and 20 random hex digits."""
    return f"{prefix}_{uuid.uuid4().hex[:20]}"


@attrs.frozen
class Translation:
    """What one client frame turns into."""

    to_session: list[Message] = attrs.Factory(list)  # v1 frames, in order
    to_client: list[str] = attrs.Factory(list)  # Realtime frames, in order
    refused: list[RealtimeProtocolError] = attrs.Factory(list)  # the errors among them


@attrs.frozen(kw_only=True)
class _Echo:
    """Realtime-only session fields: accepted, echoed in the session, without effect."""

    voice: Any = "voiceorch"
    transcription: Any = attrs.Factory(lambda: {"model": "voiceorch", "language": None, "prompt": None})
    noise_reduction: Any = None


@attrs.define
class _AssistantItem:
    item_id: str
    turn_id: str
    previous_item_id: str | None
    samples: int = 0  # 24 kHz samples of its audio sent to the client
    output_index: int = 0  # its place in its response's output

    @property
    def sent_ms(self) -> float:
        return self.samples * 1000 / ev.SAMPLE_RATE


@attrs.define
class _FunctionCall:
    """A function call item of the response in progress."""

    item_id: str
    call_id: str
    name: str
    output_index: int
    previous_item_id: str | None
    arguments: str = ""
    done: bool = False  # its response.function_call_arguments.done was sent
    status: ev.ItemStatus = "in_progress"

    def item(self, status: ev.ItemStatus) -> ev.FunctionCallItem:
        return ev.FunctionCallItem(
            id=self.item_id, status=status, call_id=self.call_id, name=self.name, arguments=self.arguments
        )


@attrs.define
class _Response:
    """The response in progress (v1 guarantees there is only ever one)."""

    turn_id: str
    response_id: str
    resampler: soxr.ResampleStream
    #: Its function call items, by call id, in output order.
    calls: dict[str, _FunctionCall] = attrs.Factory(dict)
    #: Text only (``output_modalities: ["text"]``): ``output_text`` events, no audio.
    text_only: bool = False
    item: _AssistantItem | None = None
    transcript: list[str] = attrs.Factory(list)
    error: p.Error | None = None


def _error(code: str, message: str, param: str | None = None) -> RealtimeProtocolError:
    return RealtimeProtocolError(code, message, param=param)


def _unsupported(param: str, message: str) -> RealtimeProtocolError:
    return RealtimeProtocolError("unsupported", message, param=param)


def _text_frame_bytes(text: str) -> int:
    """What ``text`` adds to the v1 frame that carries it (JSON escapes each character on its own,
    so the frame of joined texts is the sum of these)."""
    return len(p.encode(p.InputText(text=text)).encode()) - _TEXT_FRAME_OVERHEAD


def _remember(table: collections.OrderedDict, key: str, value: Any, limit: int) -> None:
    """Keep ``key`` as the newest entry of ``table``, forgetting the oldest beyond ``limit``."""
    table[key] = value
    table.move_to_end(key)
    while len(table) > limit:
        table.popitem(last=False)


def _tools(tools: list[Any]) -> tuple[p.Tool, ...]:
    """``session.tools`` as v1 tools: functions only, each checked as v1 checks them."""
    checked = []
    for index, tool in enumerate(tools):
        param = f"session.tools[{index}]"
        if not isinstance(tool, dict):
            raise _error("invalid_value", "a tool is an object", param)
        if tool.get("type") == "mcp":
            raise _unsupported(f"{param}.type", "MCP tools are the server's own (serve --mcp); declare functions here")
        if tool.get("type") != "function":
            raise _error("invalid_value", "a tool's type is 'function'", f"{param}.type")
        fields = {key: tool[key] for key in ("name", "description", "parameters") if tool.get(key) is not None}
        for key, kind in (("name", str), ("description", str), ("parameters", dict)):
            if key in fields and not isinstance(fields[key], kind):
                raise _error("invalid_value", f"a tool's {key} is a {'string' if kind is str else 'object'}", param)
        if "name" not in fields:
            raise _error("invalid_value", "a function needs a name", f"{param}.name")
        try:
            checked.append(p.Tool(**fields))
        except ValueError as exc:
            raise _error("invalid_value", str(exc), param) from None
    return tuple(checked)


def _tool_choice(choice: Any) -> str:
    """``tool_choice`` as v1 has it: a mode, or the name of the function to call."""
    if isinstance(choice, str) and choice in p.TOOL_CHOICES:
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return choice["name"]
    if isinstance(choice, dict) and choice.get("type") == "mcp":
        raise _unsupported("session.tool_choice", "MCP tools are the server's own; choose a function")
    raise _error(
        "invalid_value",
        'tool_choice is "auto", "none", "required" or {"type": "function", "name": ...}',
        "session.tool_choice",
    )


def _check_format(fmt: ev.AudioFormatIn | None, param: str) -> None:
    if fmt is None:
        return
    if fmt.type not in (None, "audio/pcm") or fmt.rate not in (None, ev.SAMPLE_RATE):
        raise RealtimeProtocolError(
            "unsupported_audio_format",
            f"only audio/pcm at {ev.SAMPLE_RATE} Hz (PCM16 mono) is supported; got {fmt.type} at {fmt.rate}",
            param=param,
        )


class RealtimeTranslator:
    """One connection's translation state. Not thread-safe (one Trio connection)."""

    def __init__(self, *, model: str = "voiceorch", new_id: Callable[[str], str] = random_id) -> None:
        self.model = model
        self._new_id = new_id
        self._conversation_id = new_id("conv")
        self._session_id: str | None = None
        self._config: p.SessionConfig | None = None
        self._echo = _Echo()  # as the last session.update set it
        # One per update sent; every update sent is answered (its v1 frame is within the limits).
        self._echo_pending: collections.deque[_Echo] = collections.deque(maxlen=MAX_UNANSWERED_TURNS)
        self._echo_shown = _Echo()  # as the last session.updated showed it
        # Input audio.
        self._in_resampler = self._input_resampler()
        self._vad_on = True  # as session.created will tell
        self._appended_samples = 0  # 24 kHz audio the client has appended so far
        self._vad_origin_samples = 0  # where the session's speech detector started counting
        self._uncommitted_bytes = 0  # since the last commit or clear
        self._commit_unclaimed = False  # a commit whose response no response.create claimed
        # Items and responses.
        self._last_item_id: str | None = None
        self._speech_item_id: str | None = None  # the user item the current speech will become
        # v1 turn_id -> (item_id, audio_ms), until its response.done; the latest MAX_UNANSWERED_TURNS.
        self._user_audio: collections.OrderedDict[str, tuple[str, float]] = collections.OrderedDict()
        self._pending_texts: list[str] = []  # user text items waiting for response.create
        self._pending_text_bytes = 0  # the size of the v1 input_text frame they make
        # The latest MAX_REMEMBERED_ITEMS item ids: True for an assistant item.
        self._items: collections.OrderedDict[str, bool] = collections.OrderedDict()
        self._latest_assistant: _AssistantItem | None = None  # the only one a truncate may cut
        self._current: _Response | None = None
        # Function calling: a v1 turn goes on after its calls' outputs, where the Realtime API
        # ends the response with its calls and answers the outputs in a new one.
        self._waiting_turn: str | None = None  # a v1 turn whose calls await outputs, between responses
        self._outputs_sent = False  # an output went to that turn since its calls ended a response
        self._unclaimed_continuation = False  # a continuation opened before its response.create came

    # --- client -> session ----------------------------------------------------------------

    def from_client(self, frame: Message) -> Translation:
        """Translate one client frame. Never raises: a bad frame becomes an ``error`` event."""
        out = Translation()
        if isinstance(frame, bytes):
            error = _error(
                "invalid_event",
                "binary frames are not part of the Realtime API: send audio in input_audio_buffer.append",
            )
            out.to_client.append(self._error_frame(error))
            out.refused.append(error)
            return out
        try:
            event = parse_client_event(frame)
            try:
                self._on_client(event, out)
            except RealtimeProtocolError as exc:
                exc.event_id = event.event_id
                raise
        except RealtimeProtocolError as exc:
            out.to_session.clear()
            out.to_client.append(self._error_frame(exc))
            out.refused.append(exc)
        return out

    def _on_client(self, event: ev.ClientEvent, out: Translation) -> None:
        match event:
            case ev.SessionUpdate(session=session):
                self._on_session_update(session, out)
            case ev.InputAudioBufferAppend(audio=audio):
                self._on_append(audio, out)
            case ev.InputAudioBufferCommit():
                tail = self._flush_input()
                if not self._vad_on and self._uncommitted_bytes + len(tail) == 0:
                    raise _error(
                        "input_audio_buffer_commit_empty", "the input audio buffer is empty: nothing to commit"
                    )
                if tail:
                    self._to_session_audio(tail, out)
                out.to_session.append(p.encode(p.InputAudioCommit()))
                self._uncommitted_bytes = 0
                self._commit_unclaimed = True  # the session answers a commit at once
            case ev.InputAudioBufferClear():
                self._in_resampler = self._input_resampler()  # drop what it held
                out.to_session.append(p.encode(p.InputAudioClear()))
                self._uncommitted_bytes = 0
                self._speech_item_id = None
                if self._vad_on:
                    self._vad_origin_samples = self._appended_samples  # the detector starts afresh
            case ev.ConversationItemCreate(item=item, previous_item_id=previous):
                self._on_item_create(item, previous, out)
            case ev.ResponseCreate(response=params):
                self._on_response_create(params, out)
            case ev.ResponseCancel(response_id=response_id):
                current = self._current.response_id if self._current else None
                if response_id is not None and response_id != current:
                    raise RealtimeProtocolError(
                        "response_cancel_not_active",
                        f"response {response_id!r} is not in progress",
                        param="response_id",
                    )
                out.to_session.append(p.encode(p.ResponseCancel()))
            case ev.ConversationItemTruncate():
                self._on_truncate(event, out)

    def _on_session_update(self, session: ev.SessionIn, out: Translation) -> None:
        if session.type not in (None, "realtime"):
            raise _unsupported("session.type", "only realtime sessions are supported (not transcription sessions)")
        for name, place in _BETA_FIELDS.items():
            if getattr(session, name) is not None:
                raise _error(
                    "invalid_event", f"session.{name} is a beta API field; use session.{place}", f"session.{name}"
                )
        modalities = None
        if session.output_modalities is not None:
            if tuple(session.output_modalities) not in p.OUTPUT_MODALITIES:
                raise _unsupported(
                    "session.output_modalities",
                    'a response is audio (with its transcript) or text: ["audio"] or ["text"]',
                )
            modalities = tuple(session.output_modalities)
        tools = None if session.tools is None else _tools(session.tools)
        tool_choice = None if session.tool_choice is None else _tool_choice(session.tool_choice)
        if tool_choice is not None and tool_choice not in p.TOOL_CHOICES:
            names = {t.name for t in (tools if tools is not None else self._config.tools if self._config else ())}
            if tool_choice not in names:
                raise _error(
                    "invalid_value",
                    f"tool_choice names no function of the session: {tool_choice!r}",
                    "session.tool_choice",
                )
        audio = session.audio or ev.AudioIn()
        audio_in = audio.input or ev.AudioInputIn()
        audio_out = audio.output or ev.AudioOutputIn()
        _check_format(audio_in.format, "session.audio.input.format")
        _check_format(audio_out.format, "session.audio.output.format")
        if audio_out.speed not in (None, 1.0):
            raise _unsupported("session.audio.output.speed", "only speed 1.0 is supported")
        turn_detection = self._turn_detection(audio_in.turn_detection)
        echo = self._echo
        if audio_out.voice is not None:
            echo = attrs.evolve(echo, voice=audio_out.voice)
        if audio_in.transcription is not None:
            echo = attrs.evolve(echo, transcription=audio_in.transcription)
        if audio_in.noise_reduction is not None:
            echo = attrs.evolve(echo, noise_reduction=audio_in.noise_reduction)
        try:
            patch = p.SessionPatch(
                instructions=session.instructions,
                turn_detection=turn_detection,
                tools=tools,
                tool_choice=tool_choice,
                output_modalities=modalities,
            )
        except ValueError as exc:
            raise _error("invalid_value", str(exc), "session.tools") from None
        frame = p.encode(p.SessionUpdate(session=patch))
        if len(frame.encode()) > p.MAX_TEXT_FRAME_BYTES:  # (the session would refuse it)
            raise _error(
                "invalid_value",
                f"the instructions are too long: the session takes at most {p.MAX_TEXT_FRAME_BYTES} bytes of them",
                "session.instructions",
            )
        # Checked: from here on nothing fails, so the session answers with session.updated.
        self._echo = echo
        self._echo_pending.append(echo)
        if turn_detection is not None:
            vad_on = turn_detection.type in ("server_vad", "semantic_vad")
            if vad_on and not self._vad_on:
                self._vad_origin_samples = self._appended_samples  # the session starts a fresh detector
            if not vad_on:
                self._speech_item_id = None
            self._vad_on = vad_on
        out.to_session.append(frame)

    def _turn_detection(self, value: ev.TurnDetectionIn | None) -> p.TurnDetectionPatch | None:
        """The v1 patch for ``audio.input.turn_detection``: an object replaces the whole
        setting (omitted fields take their defaults), as upstream."""
        param = "session.audio.input.turn_detection"
        if value is None:
            return None
        if value.type == "none":
            return p.TurnDetectionPatch(type="none")
        if value.type == "semantic_vad":
            return self._semantic_vad(value, param)
        if value.type != "server_vad":
            raise _error("invalid_event", f"unknown turn detection type {value.type!r}", f"{param}.type")
        if value.create_response is False:
            raise _unsupported(f"{param}.create_response", "voiceorch always answers the end of a spoken turn")
        if value.idle_timeout_ms is not None:
            raise _unsupported(f"{param}.idle_timeout_ms", "idle_timeout_ms is not supported")
        fields = {
            "threshold": _DEFAULTS.threshold if value.threshold is None else value.threshold,
            "prefix_padding_ms": value.prefix_padding_ms,
            "silence_duration_ms": value.silence_duration_ms,
            "interrupt_response": value.interrupt_response,
        }
        for name in ("prefix_padding_ms", "silence_duration_ms", "interrupt_response"):
            if fields[name] is None:
                fields[name] = getattr(_DEFAULTS, name)
        try:
            return p.TurnDetectionPatch(type="server_vad", **fields)
        except ValueError as exc:
            raise _error("invalid_value", f"turn_detection out of range: {exc}", param) from None

    def _semantic_vad(self, value: ev.TurnDetectionIn, param: str) -> p.TurnDetectionPatch:
        """``semantic_vad``: the end-of-turn model decides (eagerness sets how long an
        unfinished-sounding pause may last); the speech detector keeps its defaults."""
        if value.create_response is False:
            raise _unsupported(f"{param}.create_response", "voiceorch always answers the end of a spoken turn")
        eagerness = value.eagerness or "auto"
        if eagerness not in ("low", "medium", "high", "auto"):
            raise _error(
                "invalid_value", f"eagerness must be low, medium, high or auto, not {eagerness!r}", f"{param}.eagerness"
            )
        interrupt = _DEFAULTS.interrupt_response if value.interrupt_response is None else value.interrupt_response
        return p.TurnDetectionPatch(
            type="semantic_vad",
            eagerness=eagerness,
            threshold=_DEFAULTS.threshold,
            prefix_padding_ms=_DEFAULTS.prefix_padding_ms,
            silence_duration_ms=_DEFAULTS.silence_duration_ms,
            interrupt_response=interrupt,
        )

    def _on_append(self, audio: str, out: Translation) -> None:
        try:
            pcm = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            raise _error("invalid_audio", "audio is not valid base64", "audio") from None
        if len(pcm) % 2:
            raise _error("invalid_audio", f"audio must hold whole 16-bit samples; got {len(pcm)} bytes", "audio")
        if not pcm:
            return
        self._appended_samples += len(pcm) // 2
        samples = self._in_resampler.resample_chunk(np.frombuffer(pcm, dtype="<i2"))
        self._to_session_audio(samples.astype("<i2").tobytes(), out)

    def _to_session_audio(self, data: bytes, out: Translation) -> None:
        for offset in range(0, len(data), V1_FRAME_BYTES):
            out.to_session.append(data[offset : offset + V1_FRAME_BYTES])
        self._uncommitted_bytes += len(data)

    def _flush_input(self) -> bytes:
        """What the input resampler still holds; it starts afresh."""
        tail = self._in_resampler.resample_chunk(np.zeros(0, dtype="<i2"), last=True)
        self._in_resampler = self._input_resampler()
        return tail.astype("<i2").tobytes()

    def _on_item_create(self, item: ev.ItemIn, previous: str | None, out: Translation) -> None:
        if item.type == "function_call_output":
            self._on_function_call_output(item, previous, out)
            return
        if item.type != "message":
            raise _unsupported("item.type", "only message and function_call_output items can be added")
        if item.role in ("assistant", "system"):
            self._on_history_item(item, previous, out)
            return
        if item.role != "user":
            raise _unsupported("item.role", "a message's role is user, assistant or system")
        if previous is not None and previous != self._last_item_id:
            raise _unsupported("previous_item_id", "items can only be added at the end of the conversation")
        texts = []
        for index, part in enumerate(item.content or []):
            if part.type != "input_text" or part.text is None:
                raise _unsupported(
                    f"item.content[{index}].type",
                    "only input_text content is supported; send audio with input_audio_buffer.append",
                )
            texts.append(part.text)
        if not "".join(texts).strip():
            raise _error("invalid_event", "a user message needs some text", "item.content")
        if item.id is not None and len(item.id) > MAX_ITEM_ID_CHARS:
            raise _error("invalid_value", f"an item id is at most {MAX_ITEM_ID_CHARS} characters", "item.id")
        item_id = item.id or self._new_id("item")
        if item_id in self._items:
            raise _error("invalid_event", f"an item with id {item_id!r} exists already", "item.id")
        text = "\n".join(text.strip() for text in texts if text.strip())
        size = (
            self._pending_text_bytes + _text_frame_bytes(text) + (_text_frame_bytes("\n") if self._pending_texts else 0)
        )
        if len(self._pending_texts) >= MAX_PENDING_TEXT_ITEMS or _TEXT_FRAME_OVERHEAD + size > MAX_PENDING_TEXT_BYTES:
            raise _error(
                "input_text_buffer_full",
                f"at most {MAX_PENDING_TEXT_ITEMS} text items, {MAX_PENDING_TEXT_BYTES} bytes in all, can wait for "
                "response.create: send response.create, then add this item again",
                "item.content",
            )
        self._pending_texts.append(text)
        self._pending_text_bytes = size
        user = ev.UserMessage(id=item_id, content=tuple(ev.InputTextContent(text=text) for text in texts))
        self._add_user_item(user, out.to_client)

    def _on_history_item(self, item: ev.ItemIn, previous: str | None, out: Translation) -> None:
        """An assistant or system message: history injection (v1 ``history.add``), no response.
        User texts held for ``response.create`` come before it, so they go into the history
        first, as messages: the conversation is what the client built, in order."""
        if previous is not None and previous != self._last_item_id:
            raise _unsupported("previous_item_id", "items can only be added at the end of the conversation")
        allowed = ("output_text", "output_audio") if item.role == "assistant" else ("input_text",)
        texts = []
        for index, part in enumerate(item.content or []):
            text = part.transcript if part.type == "output_audio" else part.text
            if part.type not in allowed or text is None:
                kinds = " or ".join(allowed)
                raise _unsupported(
                    f"item.content[{index}].type", f"an {item.role} message holds {kinds} content (with its text)"
                )
            texts.append(text)
        text = "\n".join(text.strip() for text in texts if text.strip())
        if not text:
            raise _error("invalid_event", f"an {item.role} message needs some text", "item.content")
        if item.id is not None and len(item.id) > MAX_ITEM_ID_CHARS:
            raise _error("invalid_value", f"an item id is at most {MAX_ITEM_ID_CHARS} characters", "item.id")
        item_id = item.id or self._new_id("item")
        if item_id in self._items:
            raise _error("invalid_event", f"an item with id {item_id!r} exists already", "item.id")
        frame = p.encode(p.HistoryAdd(role=item.role, text=text))
        if len(frame.encode()) > p.MAX_TEXT_FRAME_BYTES:  # (the session would refuse it)
            raise _error("invalid_value", f"a message is at most about {p.MAX_TEXT_FRAME_BYTES} bytes", "item.content")
        for held in self._pending_texts:
            out.to_session.append(p.encode(p.HistoryAdd(role="user", text=held)))
        self._pending_texts.clear()
        self._pending_text_bytes = 0
        out.to_session.append(frame)
        message: ev.AssistantMessage | ev.SystemMessage
        if item.role == "assistant":
            content = tuple(ev.OutputTextContent(text=text) for text in texts)
            message = ev.AssistantMessage(id=item_id, status="completed", content=content)
        else:
            message = ev.SystemMessage(id=item_id, content=tuple(ev.InputTextContent(text=text) for text in texts))
        _remember(self._items, item_id, item.role == "assistant", MAX_REMEMBERED_ITEMS)
        self._emit(out.to_client, ev.ConversationItemAdded, item=message, previous_item_id=self._last_item_id)
        self._emit(out.to_client, ev.ConversationItemDone, item=message, previous_item_id=self._last_item_id)
        self._last_item_id = item_id

    def _on_function_call_output(self, item: ev.ItemIn, previous: str | None, out: Translation) -> None:
        """The client's result of a call: to the session at once (the v1 turn goes on when all
        its calls have theirs; the Realtime response that answers them opens then, or at the
        client's ``response.create``, whichever comes first)."""
        if item.call_id is None or item.output is None:
            raise _error("invalid_event", "a function_call_output item needs call_id and output", "item.call_id")
        if previous is not None and previous != self._last_item_id:
            raise _unsupported("previous_item_id", "items can only be added at the end of the conversation")
        if item.id is not None and len(item.id) > MAX_ITEM_ID_CHARS:
            raise _error("invalid_value", f"an item id is at most {MAX_ITEM_ID_CHARS} characters", "item.id")
        item_id = item.id or self._new_id("item")
        if item_id in self._items:
            raise _error("invalid_event", f"an item with id {item_id!r} exists already", "item.id")
        frame = p.encode(p.ToolCallOutput(call_id=item.call_id, output=item.output))
        if len(frame.encode()) > p.MAX_TEXT_FRAME_BYTES:  # (the session would refuse it)
            raise _error("invalid_value", f"an output is at most about {p.MAX_TEXT_FRAME_BYTES} bytes", "item.output")
        out.to_session.append(frame)
        if self._waiting_turn is not None:
            self._outputs_sent = True
        result = ev.FunctionCallOutputItem(id=item_id, call_id=item.call_id, output=item.output)
        _remember(self._items, item_id, False, MAX_REMEMBERED_ITEMS)
        self._emit(out.to_client, ev.ConversationItemAdded, item=result, previous_item_id=self._last_item_id)
        self._emit(out.to_client, ev.ConversationItemDone, item=result, previous_item_id=self._last_item_id)
        self._last_item_id = item_id

    def _on_response_create(self, params: ev.ResponseParamsIn | None, out: Translation) -> None:
        if params is not None:
            if params.conversation not in (None, "auto"):
                raise _unsupported("response.conversation", "out-of-band responses are not supported")
            if params.input is not None:
                raise _unsupported("response.input", "a response answers the conversation; input is not supported")
            if params.tools:
                raise _unsupported("response.tools", "per-response tools are not supported: use session.update")
            if params.instructions is not None:
                raise _unsupported(
                    "response.instructions", "per-response instructions are not supported: use session.update"
                )
            session_modalities = list(self._config.output_modalities) if self._config else ["audio"]
            if params.output_modalities is not None and params.output_modalities != session_modalities:
                raise _unsupported(
                    "response.output_modalities",
                    f"a response has the session's output_modalities ({session_modalities}): use session.update",
                )
            if params.audio is not None and params.audio.output is not None:
                _check_format(params.audio.output.format, "response.audio.output.format")
        if self._pending_texts:
            text = "\n".join(self._pending_texts)
            self._pending_texts.clear()
            self._pending_text_bytes = 0
            out.to_session.append(p.encode(p.InputText(text=text)))
        elif self._commit_unclaimed:
            pass  # a committed buffer is answered already
        elif self._unclaimed_continuation:
            self._unclaimed_continuation = False  # the response it asks for is open already
        elif self._waiting_turn is not None:
            if not self._outputs_sent:
                raise _error(
                    "invalid_event",
                    "the function calls of the last response await their outputs: add function_call_output "
                    "items (conversation.item.create), then response.create",
                )
            self._open_continuation(out.to_client)
        else:
            raise _error(
                "no_new_input",
                "response.create needs a user message added since the last one: "
                "conversation.item.create or input_audio_buffer.commit",
            )
        self._commit_unclaimed = False  # a committed buffer is answered already

    def _on_truncate(self, event: ev.ConversationItemTruncate, out: Translation) -> None:
        item = self._latest_assistant
        if item is None or event.item_id != item.item_id:
            if not self._items.get(event.item_id, False):
                raise _error("invalid_item_id", f"there is no assistant item {event.item_id!r}", "item_id")
            raise _unsupported("item_id", "only the latest assistant item can be truncated")
        if event.content_index != 0:
            raise _error(
                "invalid_value", "an assistant item has one content part: use content_index 0", "content_index"
            )
        if event.audio_end_ms < 0 or event.audio_end_ms > math.ceil(item.sent_ms):
            raise _error(
                "invalid_value",
                f"audio_end_ms {event.audio_end_ms} is beyond the {item.sent_ms:.0f} ms of audio sent for this item",
                "audio_end_ms",
            )
        out.to_session.append(p.encode(p.PlaybackPosition(turn_id=item.turn_id, played_ms=float(event.audio_end_ms))))
        self._emit(
            out.to_client,
            ev.ConversationItemTruncated,
            item_id=item.item_id,
            content_index=0,
            audio_end_ms=event.audio_end_ms,
        )

    # --- session -> client ----------------------------------------------------------------

    def from_session(self, message: Message) -> list[str]:
        """Translate one v1 frame of the session into Realtime frames for the client."""
        frames: list[str] = []
        if isinstance(message, bytes):
            self._on_reply_audio(message, frames)
            return frames
        event = p.parse_server_event(message)
        match event:
            case p.SessionCreated(session_id=session_id, session=config):
                self._session_id, self._config = session_id, config
                self._vad_on = config.turn_detection.type in ("server_vad", "semantic_vad")
                self._emit(frames, ev.SessionCreated, session=self._session())
            case p.SessionUpdated(session=config):
                self._config = config
                if self._echo_pending:
                    self._echo_shown = self._echo_pending.popleft()
                self._emit(frames, ev.SessionUpdated, session=self._session())
            case p.SpeechStartedEvent(audio_ms=audio_ms):
                self._speech_item_id = self._new_id("item")
                self._emit(
                    frames,
                    ev.InputAudioBufferSpeechStarted,
                    audio_start_ms=self._session_ms(audio_ms),
                    item_id=self._speech_item_id,
                )
            case p.SpeechStoppedEvent(audio_ms=audio_ms):
                self._speech_item_id = self._speech_item_id or self._new_id("item")
                self._emit(
                    frames,
                    ev.InputAudioBufferSpeechStopped,
                    audio_end_ms=self._session_ms(audio_ms),
                    item_id=self._speech_item_id,
                )
            case p.InputAudioCommitted(turn_id=turn_id, audio_ms=audio_ms):
                item_id = self._speech_item_id or self._new_id("item")
                self._speech_item_id = None
                _remember(self._user_audio, turn_id, (item_id, audio_ms), MAX_UNANSWERED_TURNS)
                self._emit(frames, ev.InputAudioBufferCommitted, item_id=item_id, previous_item_id=self._last_item_id)
                self._add_user_item(ev.UserMessage(id=item_id, content=(ev.InputAudioContent(),)), frames)
            case p.InputAudioCleared():
                self._emit(frames, ev.InputAudioBufferCleared)
            case p.ResponseCreated(turn_id=turn_id):
                self._current = _Response(
                    turn_id, self._new_id("resp"), self._output_resampler(), text_only=self._text_only()
                )
                self._emit(frames, ev.ResponseCreated, response=self._response(self._current, "in_progress"))
            case p.TranscriptDelta(delta=delta):
                if self._speech_item_id is not None:  # (words of the speech in progress)
                    self._emit(frames, ev.TranscriptionDelta, item_id=self._speech_item_id, delta=delta)
            case p.TranscriptFinal(turn_id=turn_id, text=text):
                if turn_id in self._user_audio:  # (a typed turn's text is its item already)
                    item_id, audio_ms = self._user_audio[turn_id]
                    usage = ev.DurationUsage(seconds=round(audio_ms / 1000, 3))
                    self._emit(frames, ev.TranscriptionCompleted, item_id=item_id, transcript=text, usage=usage)
            case p.ResponseTextDelta(turn_id=turn_id, delta=delta):
                response = self._response_for(turn_id, frames)
                if response is not None:
                    item = self._start_output(response, frames)
                    response.transcript.append(delta)
                    self._emit(
                        frames,
                        ev.ResponseOutputTextDelta if response.text_only else ev.ResponseOutputAudioTranscriptDelta,
                        response_id=response.response_id,
                        item_id=item.item_id,
                        output_index=item.output_index,
                        delta=delta,
                    )
            case p.ResponseToolCallDelta(turn_id=turn_id, call_id=call_id, name=name, delta=delta):
                response = self._response_for(turn_id, frames)
                if response is not None:
                    call = response.calls.get(call_id) or self._start_call(response, call_id, name, frames)
                    call.arguments += delta
                    self._emit(
                        frames,
                        ev.ResponseFunctionCallArgumentsDelta,
                        response_id=response.response_id,
                        item_id=call.item_id,
                        output_index=call.output_index,
                        call_id=call_id,
                        delta=delta,
                    )
            case p.ResponseToolCall(turn_id=turn_id, call_id=call_id, name=name, arguments=arguments):
                response = self._response_for(turn_id, frames)
                if response is not None:
                    call = response.calls.get(call_id) or self._start_call(response, call_id, name, frames)
                    call.arguments = arguments
                    self._finish_call(response, call, "completed", frames)
                    if all(call.done for call in response.calls.values()):
                        self._end_step(response, frames)
            case p.Error(turn_id=None, code=code, message=text):
                if code == "input_audio_buffer_empty":
                    self._commit_unclaimed = False  # that commit made no turn
                if code == "tool_name_taken" and self._echo_pending:
                    self._echo_pending.popleft()  # that update was refused: no session.updated comes
                info = ev.ErrorInfo(type="invalid_request_error", code=_UPSTREAM_CODES.get(code, code), message=text)
                self._emit(frames, ev.Error, error=info)
            case p.Error(turn_id=turn_id, code=code, message=text):
                if self._current is not None and self._current.turn_id == turn_id:
                    self._current.error = event
                if code == "stt_failed" and turn_id in self._user_audio:
                    failure = ev.TranscriptionError(type="server_error", code=code, message=text)
                    self._emit(frames, ev.TranscriptionFailed, item_id=self._user_audio[turn_id][0], error=failure)
                self._emit(frames, ev.Error, error=ev.ErrorInfo(type="server_error", code=code, message=text))
            case p.ResponseDone():
                self._on_response_done(event, frames)
            case p.ResponseInterrupted():
                pass  # response.done (cancelled, turn_detected) follows
        return frames

    def _response_for(self, turn_id: str, frames: list[str]) -> _Response | None:
        """The Realtime response that v1 turn ``turn_id``'s output belongs to: the one in
        progress, or, for a turn that goes on after its calls' outputs, a new one (None for a
        turn that has none: it was cancelled before it started)."""
        if self._current is not None and self._current.turn_id == turn_id:
            return self._current
        if self._current is None and self._waiting_turn == turn_id:
            self._open_continuation(frames)
            self._unclaimed_continuation = True  # (the client's response.create is still to come)
            return self._current
        return None

    def _open_continuation(self, frames: list[str]) -> None:
        """A new response for the waiting turn: it answers the calls' outputs."""
        assert self._waiting_turn is not None
        self._current = _Response(
            self._waiting_turn, self._new_id("resp"), self._output_resampler(), text_only=self._text_only()
        )
        self._waiting_turn = None
        self._outputs_sent = False
        self._emit(frames, ev.ResponseCreated, response=self._response(self._current, "in_progress"))

    def _start_call(self, response: _Response, call_id: str, name: str, frames: list[str]) -> _FunctionCall:
        index = len(response.calls) + (response.item is not None)
        call = _FunctionCall(self._new_id("item"), call_id, name, index, self._last_item_id)
        response.calls[call_id] = call
        _remember(self._items, call.item_id, False, MAX_REMEMBERED_ITEMS)
        item = call.item("in_progress")
        self._emit(frames, ev.ResponseOutputItemAdded, response_id=response.response_id, output_index=index, item=item)
        self._emit(frames, ev.ConversationItemAdded, item=item, previous_item_id=call.previous_item_id)
        self._last_item_id = call.item_id
        return call

    def _finish_call(self, response: _Response, call: _FunctionCall, status: ev.ItemStatus, frames: list[str]) -> None:
        call.done, call.status = True, status
        self._emit(
            frames,
            ev.ResponseFunctionCallArgumentsDone,
            response_id=response.response_id,
            item_id=call.item_id,
            output_index=call.output_index,
            call_id=call.call_id,
            name=call.name,
            arguments=call.arguments,
        )
        item = call.item(status)
        self._emit(
            frames,
            ev.ResponseOutputItemDone,
            response_id=response.response_id,
            output_index=call.output_index,
            item=item,
        )
        self._emit(frames, ev.ConversationItemDone, item=item, previous_item_id=call.previous_item_id)

    def _end_step(self, response: _Response, frames: list[str]) -> None:
        """Every call of the response has been made: the response ends with them, as upstream
        (its words have all played: the v1 turn makes its calls only then); the v1 turn waits
        for their outputs."""
        output = self._finish_message(response, "completed", frames, flush=True)
        calls = tuple(call.item(call.status) for call in response.calls.values())
        self._current = None
        self._waiting_turn = response.turn_id
        self._outputs_sent = False
        items = sorted((*output, *calls), key=lambda item: self._output_index(response, item.id))
        self._emit(frames, ev.ResponseDone, response=self._response(response, "completed", output=tuple(items)))

    @staticmethod
    def _output_index(response: _Response, item_id: str) -> int:
        if response.item is not None and response.item.item_id == item_id:
            return response.item.output_index
        return next(call.output_index for call in response.calls.values() if call.item_id == item_id)

    def _on_reply_audio(self, data: bytes, frames: list[str]) -> None:
        response = self._current
        if response is None and self._waiting_turn is not None:
            response = self._response_for(self._waiting_turn, frames)
        if response is None or not data:
            return
        item = self._start_output(response, frames)
        samples = response.resampler.resample_chunk(np.frombuffer(data, dtype="<i2"))
        self._send_audio(response, item, samples, frames)

    def _send_audio(self, response: _Response, item: _AssistantItem, samples: np.ndarray, frames: list[str]) -> None:
        if len(samples):
            item.samples += len(samples)
            delta = base64.b64encode(samples.astype("<i2").tobytes()).decode("ascii")
            self._emit(
                frames,
                ev.ResponseOutputAudioDelta,
                response_id=response.response_id,
                item_id=item.item_id,
                output_index=item.output_index,
                delta=delta,
            )

    def _start_output(self, response: _Response, frames: list[str]) -> _AssistantItem:
        """The response's assistant item, announced on its first text or audio."""
        if response.item is not None:
            return response.item
        item = response.item = _AssistantItem(
            self._new_id("item"), response.turn_id, self._last_item_id, output_index=len(response.calls)
        )
        _remember(self._items, item.item_id, True, MAX_REMEMBERED_ITEMS)
        self._latest_assistant = item
        message = ev.AssistantMessage(id=item.item_id, status="in_progress", content=())
        index = item.output_index
        self._emit(
            frames, ev.ResponseOutputItemAdded, response_id=response.response_id, output_index=index, item=message
        )
        self._emit(frames, ev.ConversationItemAdded, item=message, previous_item_id=item.previous_item_id)
        self._last_item_id = item.item_id
        self._emit(
            frames,
            ev.ResponseContentPartAdded,
            response_id=response.response_id,
            item_id=item.item_id,
            output_index=index,
            part=ev.TextPart() if response.text_only else ev.ContentPart(),
        )
        return item

    def _finish_message(
        self, response: _Response, status: str, frames: list[str], *, flush: bool
    ) -> tuple[ev.AssistantMessage, ...]:
        """End the response's assistant message, if it has one (``completed`` if ``status`` is,
        else ``incomplete``; its audio flushed if ``flush``); returns it."""
        item = response.item
        if item is None:
            return ()
        if flush:  # the end of the audio the resampler still holds
            tail = response.resampler.resample_chunk(np.zeros(0, dtype="<i2"), last=True)
            self._send_audio(response, item, tail, frames)
        transcript = "".join(response.transcript)
        ids = {"response_id": response.response_id, "item_id": item.item_id, "output_index": item.output_index}
        content: ev.OutputAudioContent | ev.OutputTextContent
        if response.text_only:
            self._emit(frames, ev.ResponseOutputTextDone, **ids, text=transcript)
            self._emit(frames, ev.ResponseContentPartDone, **ids, part=ev.TextPart(text=transcript))
            content = ev.OutputTextContent(text=transcript)
        else:
            self._emit(frames, ev.ResponseOutputAudioDone, **ids)
            self._emit(frames, ev.ResponseOutputAudioTranscriptDone, **ids, transcript=transcript)
            self._emit(frames, ev.ResponseContentPartDone, **ids, part=ev.ContentPart(transcript=transcript))
            content = ev.OutputAudioContent(transcript=transcript)
        message = ev.AssistantMessage(
            id=item.item_id, status="completed" if status == "completed" else "incomplete", content=(content,)
        )
        self._emit(
            frames,
            ev.ResponseOutputItemDone,
            response_id=response.response_id,
            output_index=item.output_index,
            item=message,
        )
        self._emit(frames, ev.ConversationItemDone, item=message, previous_item_id=item.previous_item_id)
        return (message,)

    def _on_response_done(self, done: p.ResponseDone, frames: list[str]) -> None:
        self._user_audio.pop(done.turn_id, None)  # (every turn ends with its response.done)
        if self._waiting_turn == done.turn_id:  # it ended between two responses: nothing is open
            self._waiting_turn = None
            self._outputs_sent = False
        response = self._current
        if response is None or response.turn_id != done.turn_id:
            return
        self._current = None
        status = {"interrupted": "cancelled"}.get(done.status, done.status)
        if done.status == "completed" and done.truncated:
            status = "incomplete"  # the reply ended at the LLM's token limit
        message = self._finish_message(response, status, frames, flush=done.status == "completed")
        for call in response.calls.values():
            if not call.done:  # cut off while the model was writing it: never made
                self._finish_call(response, call, "incomplete", frames)
        calls = tuple(call.item(call.status) for call in response.calls.values())
        output = tuple(sorted((*message, *calls), key=lambda item: self._output_index(response, item.id)))
        details = None
        if status == "incomplete":
            details = ev.StatusDetails(type="incomplete", reason="max_output_tokens")
        elif done.status == "cancelled":
            details = ev.StatusDetails(type="cancelled", reason="client_cancelled")
        elif done.status == "interrupted":
            details = ev.StatusDetails(type="cancelled", reason="turn_detected")
        elif done.status == "failed":
            error = response.error
            details = ev.StatusDetails(
                type="failed",
                error=ev.StatusError(
                    type="server_error",
                    code=error.code if error else "internal_error",
                    message=error.message if error else None,
                ),
            )
        extension = ev.VoiceorchDetails(status=done.status, heard_text=done.text, metrics=done.metrics)
        self._emit(
            frames,
            ev.ResponseDone,
            response=self._response(response, status, details=details, output=output, extension=extension),
        )

    # --- helpers --------------------------------------------------------------------------

    def _emit(self, frames: list[str], cls: type, **fields: Any) -> None:
        frames.append(encode(cls(event_id=self._new_id("event"), **fields)))

    def _error_frame(self, exc: RealtimeProtocolError) -> str:
        kind = "invalid_request_error"
        info = ev.ErrorInfo(type=kind, code=exc.code, message=exc.message, param=exc.param, event_id=exc.event_id)
        return encode(ev.Error(event_id=self._new_id("event"), error=info))

    def _add_user_item(self, user: ev.UserMessage, frames: list[str]) -> None:
        _remember(self._items, user.id, False, MAX_REMEMBERED_ITEMS)
        self._emit(frames, ev.ConversationItemAdded, item=user, previous_item_id=self._last_item_id)
        self._emit(frames, ev.ConversationItemDone, item=user, previous_item_id=self._last_item_id)
        self._last_item_id = user.id

    def _session_ms(self, detector_ms: float) -> int:
        """A speech event's date, in ms of all the input audio of the session."""
        return round(self._vad_origin_samples * 1000 / ev.SAMPLE_RATE + detector_ms)

    def _session(self) -> ev.Session:
        config = self._config
        assert config is not None and self._session_id is not None
        vad = config.turn_detection
        turn_detection: ev.ServerVad | ev.SemanticVad | None = None
        if vad.type == "semantic_vad":
            turn_detection = ev.SemanticVad(eagerness=vad.eagerness, interrupt_response=vad.interrupt_response)
        elif vad.type == "server_vad":
            turn_detection = ev.ServerVad(
                threshold=vad.threshold,
                prefix_padding_ms=vad.prefix_padding_ms,
                silence_duration_ms=vad.silence_duration_ms,
                interrupt_response=vad.interrupt_response,
            )
        echo = self._echo_shown
        audio = ev.Audio(
            input=ev.AudioInput(
                transcription=echo.transcription, noise_reduction=echo.noise_reduction, turn_detection=turn_detection
            ),
            output=ev.AudioOutput(voice=echo.voice),
        )
        tools = tuple(
            {"type": "function", "name": t.name, "description": t.description, "parameters": t.parameters}
            for t in config.tools
        )
        choice: Any = config.tool_choice
        if choice not in p.TOOL_CHOICES:
            choice = {"type": "function", "name": choice}
        return ev.Session(
            id=self._session_id,
            model=self.model,
            instructions=config.instructions,
            audio=audio,
            tools=tools,
            tool_choice=choice,
            output_modalities=config.output_modalities,
        )

    def _text_only(self) -> bool:
        return self._config is not None and self._config.output_modalities == ("text",)

    def _response(
        self,
        response: _Response,
        status: str,
        *,
        details: ev.StatusDetails | None = None,
        output: tuple[ev.OutputItem, ...] = (),
        extension: ev.VoiceorchDetails | None = None,
    ) -> ev.Response:
        return ev.Response(
            id=response.response_id,
            status=status,
            status_details=details,
            output=output,
            conversation_id=self._conversation_id,
            output_modalities=("text",) if response.text_only else ("audio",),
            audio=ev.ResponseAudio(output=ev.ResponseAudioOutput(voice=self._echo_shown.voice)),
            voiceorch=extension,
        )

    @staticmethod
    def _input_resampler() -> soxr.ResampleStream:
        return soxr.ResampleStream(ev.SAMPLE_RATE, V1_RATE, 1, dtype="int16")

    @staticmethod
    def _output_resampler() -> soxr.ResampleStream:
        return soxr.ResampleStream(V1_RATE, ev.SAMPLE_RATE, 1, dtype="int16")
