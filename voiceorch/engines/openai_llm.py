"""A language model behind an OpenAI-compatible streaming chat-completions API (httpx + SSE)."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import attrs
import httpx
import trio
from httpx_sse import EventSource, SSEError

from ..logs import log_event
from .base import ChatMessage, EngineError, LanguageModel, ReplyDelta, ToolCallDelta, ToolChoice
from .remote_errors import error_snippet, redact
from .tools import ToolSpec

log = logging.getLogger(__name__)


@attrs.define(kw_only=True)
class OpenAICompatibleLLM(LanguageModel):
    """Streams replies from ``POST {base_url}/chat/completions`` with ``stream=true``.

    ``base_url`` ends in ``/v1`` (like the openai SDK's), for instance
    ``http://127.0.0.1:8000/v1``. The engine owns a pooled keep-alive ``httpx.AsyncClient``:
    call :meth:`aclose` when done. The API key travels only in the ``Authorization`` header;
    it is never logged, never shown in ``repr`` and never put in an error message.

    **Failover and retries.** ``fallback_urls`` are further servers of the same model. A
    request that fails before any text reached the caller (the server cannot be reached, or
    answers 5xx or 429) is sent again to the next server in turn, ``len(urls) + retries``
    attempts in all (so with one server it is retried ``retries`` times: a pooled connection
    the server had closed is the usual case). A request is never repeated once some of its
    text was delivered, so the user never hears a reply twice, and a timeout is not retried
    (the user has waited enough). The server that answered last is tried first next time.

    ``max_concurrent_requests`` (default 1; ``--llm-concurrency``) queues requests on our
    side, in a ``trio.CapacityLimiter`` (:attr:`limiter`): llama-cpp-python's server runs one
    request at a time, and a second one arriving while a reply streams cuts that reply off (or,
    with ``--interrupt_requests False``, stalls both streams). Servers that batch requests
    (OpenAI, vLLM, Ollama, llama.cpp's ``llama-server --parallel``) take more; ``None`` is no
    limit. The wait for a slot counts against :attr:`first_token_timeout`. A slot is held from
    the request to the end of its stream (the turn drains the stream into its own buffer, so
    that is the generation time, not the reply's playing time).
    """

    base_url: str = attrs.field(converter=lambda url: str(url).rstrip("/"))
    fallback_urls: tuple[str, ...] = attrs.field(
        default=(), converter=lambda urls: tuple(str(url).rstrip("/") for url in urls)
    )
    retries: int = 1
    #: Pooled connections per server (more requests wait for one, within ``connect_timeout``).
    max_connections: int = 16
    api_key: str | None = attrs.field(default=None, repr=False)
    model: str = "default"
    max_tokens: int = 120
    temperature: float = 0.7
    connect_timeout: float = 5.0
    #: Time allowed between two chunks of the stream (and for the response headers).
    read_timeout: float = 10.0
    #: Time allowed from sending the request to the reply's first text (a server that is up
    #: but stuck, or trickles keep-alives, fails with ``llm_timeout`` after it).
    first_token_timeout: float = 15.0
    max_concurrent_requests: int | None = 1
    #: Queue of our requests (``None`` if unlimited); ``limiter.statistics()`` shows waiters.
    limiter: trio.CapacityLimiter | None = attrs.field(init=False, repr=False)
    _client: httpx.AsyncClient = attrs.field(init=False, repr=False)
    _preferred: str | None = attrs.field(init=False, default=None, repr=False)

    def __attrs_post_init__(self) -> None:
        self.limiter = (
            trio.CapacityLimiter(self.max_concurrent_requests) if self.max_concurrent_requests is not None else None
        )
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        self._client = httpx.AsyncClient(
            headers=headers,
            limits=httpx.Limits(max_connections=self.max_connections, max_keepalive_connections=self.max_connections),
            timeout=httpx.Timeout(
                connect=self.connect_timeout,
                read=self.read_timeout,
                write=self.connect_timeout,
                pool=self.connect_timeout,
            ),
        )

    async def aclose(self) -> None:
        """Close the pooled connections."""
        await self._client.aclose()

    async def stream_reply(
        self,
        messages: Sequence[ChatMessage],
        deltas: trio.MemorySendChannel[ReplyDelta],
        *,
        tools: Sequence[ToolSpec] = (),
        tool_choice: ToolChoice = "auto",
    ) -> str | None:
        """Stream the assistant's reply to ``messages`` as text deltas into ``deltas``.

        With ``tools``, the request offers them (``tools``, ``tool_choice`` as the OpenAI API
        has them) and the streamed ``tool_calls`` deltas, whose pieces may be split across
        chunks and interleaved for several calls, come out as :class:`ToolCallDelta` items with
        the call's id and name on each (a call the server sent without an id gets one).
        Returns the stream's last ``finish_reason`` (``"stop"``, ``"length"``: cut off at
        :attr:`max_tokens``, ``"tool_calls"``), or ``None`` if it sent none before ``[DONE]``. Waits first for a
        slot of :attr:`limiter` (the wait is cancellable, and counts against
        :attr:`first_token_timeout`). Closes ``deltas``
        when it returns or raises. Cancelling the call closes the HTTP response (and its
        connection), so the server sees the client go and stops generating.
        If the receiving side of ``deltas`` is closed, the request is dropped the same way and
        the call returns ``None`` quietly. Raises :class:`EngineError` with code ``llm_unavailable``
        (cannot connect), ``llm_timeout`` (no request slot or no first text within
        :attr:`first_token_timeout` of the call, or a silence longer than :attr:`read_timeout`),
        ``llm_error`` (an error status or error
        chunk) or ``llm_bad_response`` (not SSE, bad JSON, or the stream broke off).
        """
        with deltas:
            try:
                return await self._stream(messages, self.max_tokens, deltas.send, _tools_body(tools, tool_choice))
            except trio.BrokenResourceError:
                log.debug("reply consumer went away; LLM request dropped")
                return None

    @property
    def urls(self) -> list[str]:
        """Every server, the one to try first at the front."""
        urls = [self.base_url, *self.fallback_urls]
        if self._preferred in urls:
            index = urls.index(self._preferred)
            urls = urls[index:] + urls[:index]
        return urls

    async def check_ready(self) -> str | None:
        """``GET {url}/models``: ``None`` if a server answers 200, else a short reason.

        If every request slot is taken by a streaming reply, the server is evidently up: returns
        ``None`` at once rather than send a request that would disturb that reply.
        """
        if self.limiter is None:
            return await self._probe()
        try:
            self.limiter.acquire_nowait()
        except trio.WouldBlock:
            return None
        try:
            return await self._probe()
        finally:
            self.limiter.release()

    async def _probe(self) -> str | None:
        reasons = []
        for url in self.urls:
            try:
                response = await self._client.get(f"{url}/models")
            except httpx.HTTPError as exc:
                reasons.append(f"cannot reach LLM server at {url} ({type(exc).__name__})")
                continue
            if response.status_code == 200:
                return None
            reasons.append(f"LLM server at {url} answered {response.status_code}")
        return "; ".join(reasons)

    async def warm_up(self) -> None:
        """Ask for a reply a couple of tokens long and discard it (loads the model's caches)."""

        async def discard(_delta: str) -> None:
            pass

        await self._stream([ChatMessage(role="user", content="Hi")], 2, discard)

    async def _stream(
        self,
        messages: Sequence[ChatMessage],
        max_tokens: int,
        on_delta: Callable[[ReplyDelta], Awaitable[None]],
        extra: dict[str, Any] | None = None,
    ) -> str | None:
        asked_at = trio.current_time()
        try:
            async with self._slot(asked_at + self.first_token_timeout):
                return await self._request_with_failover(messages, max_tokens, on_delta, asked_at, extra or {})
        except EngineError as exc:
            # Server text (an error body, an error chunk) may echo the key: never pass it on.
            if self.api_key and self.api_key in exc.message:
                raise EngineError(exc.code, redact(exc.message, self.api_key), retryable=exc.retryable) from None
            raise

    @contextlib.asynccontextmanager
    async def _slot(self, deadline: float) -> AsyncIterator[None]:
        """Hold a slot of :attr:`limiter` (if any), waiting for it until ``deadline`` at most.

        Raises :class:`EngineError` ``llm_timeout`` (not retryable) if no slot came free by
        then. The wait is cancellable; a slot acquired is always released."""
        if self.limiter is None:
            yield
            return
        with trio.move_on_at(deadline) as waiting:
            await self.limiter.acquire()
        if waiting.cancelled_caught:
            raise EngineError(
                "llm_timeout",
                f"no LLM request slot came free within {self.first_token_timeout:g} s "
                f"({self.limiter.total_tokens:g} requests at a time, all busy)",
            )
        try:
            yield
        finally:
            self.limiter.release()

    async def _request_with_failover(
        self,
        messages: Sequence[ChatMessage],
        max_tokens: int,
        on_delta: Callable[[ReplyDelta], Awaitable[None]],
        asked_at: float,
        extra: dict[str, Any],
    ) -> str | None:
        delivered = False

        async def deliver(delta: ReplyDelta) -> None:
            nonlocal delivered
            delivered = True
            await on_delta(delta)

        urls = self.urls
        attempts = len(urls) + self.retries
        for attempt in range(attempts):
            url = urls[attempt % len(urls)]
            try:
                # The first attempt's clock started when the caller asked (the wait for a slot
                # counts); a retry gets a full first-token window of its own.
                started = asked_at if attempt == 0 else trio.current_time()
                finish_reason = await self._request_with_first_token_deadline(
                    url, messages, max_tokens, deliver, started, extra
                )
            except EngineError as exc:
                if delivered or not exc.retryable or attempt == attempts - 1:
                    raise
                next_url = urls[(attempt + 1) % len(urls)]
                log_event(log, "llm.retry", code=exc.code, failed_url=url, next_url=next_url, attempt=attempt + 1)
            else:
                self._preferred = url
                return finish_reason
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _request_with_first_token_deadline(
        self,
        url: str,
        messages: Sequence[ChatMessage],
        max_tokens: int,
        on_delta: Callable[[ReplyDelta], Awaitable[None]],
        started: float,
        extra: dict[str, Any],
    ) -> str | None:
        async def first_delta_lifts_the_deadline(delta: ReplyDelta) -> None:
            deadline.deadline = math.inf
            await on_delta(delta)

        with trio.CancelScope(deadline=started + self.first_token_timeout) as deadline:
            return await self._request(url, messages, max_tokens, first_delta_lifts_the_deadline, extra)
        raise EngineError(  # only reached when the deadline cancelled the request
            "llm_timeout", f"the LLM server sent no reply within {self.first_token_timeout:g} s"
        )

    async def _request(
        self,
        base_url: str,
        messages: Sequence[ChatMessage],
        max_tokens: int,
        on_delta: Callable[[ReplyDelta], Awaitable[None]],
        extra: dict[str, Any],
    ) -> str | None:
        body = {
            "model": self.model,
            "messages": [_message_json(m) for m in messages],
            "stream": True,
            "max_tokens": max_tokens,
            "temperature": self.temperature,
            **extra,
        }
        url = f"{base_url}/chat/completions"
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-store"}
        responded = False
        try:
            async with self._client.stream("POST", url, json=body, headers=headers) as response:
                responded = True
                if not response.is_success:
                    raise EngineError(
                        "llm_error",
                        f"LLM server answered {response.status_code}: {await error_snippet(response, self.api_key)}",
                        retryable=response.status_code >= 500 or response.status_code == 429,
                    )
                return await self._read_events(EventSource(response), on_delta)
        except httpx.TimeoutException as exc:
            if not isinstance(exc, (httpx.ConnectTimeout, httpx.PoolTimeout)):
                raise EngineError("llm_timeout", f"LLM server at {base_url} timed out ({type(exc).__name__})") from exc
            raise _unavailable(base_url, exc) from exc
        except httpx.HTTPError as exc:
            if responded:
                raise EngineError("llm_bad_response", f"LLM stream broke off ({type(exc).__name__}: {exc})") from exc
            raise _unavailable(base_url, exc) from exc

    async def _read_events(self, source: EventSource, on_delta: Callable[[ReplyDelta], Awaitable[None]]) -> str | None:
        finished = False
        last_reason: str | None = None
        calls = _ToolCallPieces()
        try:
            async for event in source.aiter_sse():
                if event.data == "[DONE]":
                    return last_reason
                if not event.data:
                    continue
                content, tool_calls, finish_reason = _parse_chunk(event.data)
                if content:
                    await on_delta(content)
                for piece in tool_calls:
                    delta = calls.feed(piece)
                    if delta is not None:
                        await on_delta(delta)
                if finish_reason is not None:
                    finished = True
                    last_reason = finish_reason
        except SSEError as exc:
            raise EngineError("llm_bad_response", f"LLM server did not stream SSE: {exc}") from exc
        if not finished:
            raise EngineError("llm_bad_response", "stream ended early")
        return last_reason


def _unavailable(base_url: str, exc: Exception) -> EngineError:
    """``llm_unavailable``: the request never reached a server that answered (retryable)."""
    return EngineError(
        "llm_unavailable", f"cannot reach LLM server at {base_url} ({type(exc).__name__})", retryable=True
    )


def _tools_body(tools: Sequence[ToolSpec], tool_choice: ToolChoice) -> dict[str, Any]:
    """The request fields offering ``tools`` (none if there are none)."""
    if not tools:
        return {}
    choice: Any = tool_choice
    if tool_choice not in ("auto", "none", "required"):
        choice = {"type": "function", "function": {"name": tool_choice}}
    functions = [
        {"type": "function", "function": {"name": t.name, "description": t.description, "parameters": t.parameters}}
        for t in tools
    ]
    return {"tools": functions, "tool_choice": choice}


def _message_json(message: ChatMessage) -> dict[str, Any]:
    """A message as the chat-completions API takes it (an assistant's calls; a tool's result)."""
    data: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        data["content"] = message.content or None
        data["tool_calls"] = [
            {"id": c.call_id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in message.tool_calls
        ]
    if message.tool_call_id is not None:
        data["tool_call_id"] = message.tool_call_id
    return data


@attrs.define
class _ToolCallPieces:
    """Puts streamed ``tool_calls`` pieces together: the id and name come in a call's first
    piece (a later piece repeats them or not), its arguments in any number of pieces. Pieces
    of a call whose name has not come yet are held back; a call without an id gets one."""

    _ids: dict[int, str] = attrs.field(factory=dict)
    _names: dict[int, str] = attrs.field(factory=dict)
    _held: dict[int, str] = attrs.field(factory=dict)

    def feed(self, piece: dict[str, Any]) -> ToolCallDelta | None:
        index = piece["index"]
        if piece.get("id") and index not in self._ids:
            self._ids[index] = piece["id"]
        function = piece.get("function") or {}
        if function.get("name") and index not in self._names:
            self._names[index] = function["name"]
        arguments = self._held.pop(index, "") + (function.get("arguments") or "")
        if index not in self._names:
            self._held[index] = arguments
            return None
        call_id = self._ids.setdefault(index, f"call_{uuid.uuid4().hex[:24]}")
        return ToolCallDelta(index=index, call_id=call_id, name=self._names[index], arguments=arguments)


def _tool_call_pieces(delta: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``tool_calls`` pieces of a chunk's delta, checked (an ``index`` is added if missing)."""
    pieces = delta.get("tool_calls")
    if pieces is None:
        return []
    if not isinstance(pieces, list):
        raise EngineError("llm_bad_response", "LLM stream delta tool_calls is not a list")
    checked = []
    for position, piece in enumerate(pieces):
        function = piece.get("function") if isinstance(piece, dict) else None
        if not isinstance(piece, dict) or not isinstance(function, (dict, type(None))):
            raise EngineError("llm_bad_response", "LLM stream tool call is not an object with a 'function' object")
        index = piece.get("index", position)
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise EngineError("llm_bad_response", "LLM stream tool call index is not a natural number")
        for key, value in (("id", piece.get("id")), *((k, (function or {}).get(k)) for k in ("name", "arguments"))):
            if value is not None and not isinstance(value, str):
                raise EngineError("llm_bad_response", f"LLM stream tool call {key} is not a string")
        checked.append({**piece, "index": index})
    return checked


def _parse_chunk(data: str) -> tuple[str | None, list[dict[str, Any]], str | None]:
    """One ``chat.completion.chunk``: its delta text, tool call pieces and finish reason."""
    try:
        chunk: Any = json.loads(data)
    except ValueError as exc:
        raise EngineError("llm_bad_response", f"LLM stream sent invalid JSON: {exc}") from exc
    if not isinstance(chunk, dict):
        raise EngineError("llm_bad_response", "LLM stream chunk is not a JSON object")
    if "error" in chunk:
        error = chunk["error"]
        message = error.get("message") if isinstance(error, dict) else error
        raise EngineError("llm_error", f"LLM server reported an error: {message}")
    choices = chunk.get("choices")
    if not isinstance(choices, list):
        raise EngineError("llm_bad_response", "LLM stream chunk has no 'choices' list")
    if not choices:
        return None, [], None  # e.g. a final usage-only chunk
    choice = choices[0]
    delta = choice.get("delta") if isinstance(choice, dict) else None
    if not isinstance(delta, dict):
        raise EngineError("llm_bad_response", "LLM stream chunk has no 'delta' object")
    content = delta.get("content")
    finish_reason = choice.get("finish_reason")
    if content is not None and not isinstance(content, str):
        raise EngineError("llm_bad_response", "LLM stream delta content is not a string")
    return content, _tool_call_pieces(delta), finish_reason
