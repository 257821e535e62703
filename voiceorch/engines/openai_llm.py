"""A language model behind an OpenAI-compatible streaming chat-completions API (httpx + SSE)."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import attrs
import httpx
import trio
from httpx_sse import EventSource, SSEError

from .base import ChatMessage, EngineError

log = logging.getLogger(__name__)

_BODY_SNIPPET = 200


@attrs.define(kw_only=True)
class OpenAICompatibleLLM:
    """Streams replies from ``POST {base_url}/chat/completions`` with ``stream=true``.

    ``base_url`` ends in ``/v1`` (like the openai SDK's), for instance
    ``http://127.0.0.1:8000/v1``. The engine owns a pooled keep-alive ``httpx.AsyncClient``:
    call :meth:`aclose` when done. The API key travels only in the ``Authorization`` header;
    it is never logged, never shown in ``repr`` and never put in an error message.

    ``max_concurrent_requests`` (default 1) queues requests on our side, in a
    ``trio.CapacityLimiter`` (:attr:`limiter`): llama-cpp-python's server runs one request
    at a time, and a second one arriving while a reply streams cuts that reply off (or, with
    ``--interrupt_requests False``, stalls both streams). Use ``None`` for servers that
    handle concurrent requests (OpenAI, vLLM, llama.cpp's ``llama-server --parallel``).
    """

    base_url: str = attrs.field(converter=lambda url: str(url).rstrip("/"))
    api_key: str | None = attrs.field(default=None, repr=False)
    model: str = "default"
    max_tokens: int = 120
    temperature: float = 0.7
    connect_timeout: float = 5.0
    #: Time allowed between two chunks of the stream (and for the response headers).
    read_timeout: float = 10.0
    max_concurrent_requests: int | None = 1
    #: Queue of our requests (``None`` if unlimited); ``limiter.statistics()`` shows waiters.
    limiter: trio.CapacityLimiter | None = attrs.field(init=False, repr=False)
    _client: httpx.AsyncClient = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        self.limiter = (
            trio.CapacityLimiter(self.max_concurrent_requests)
            if self.max_concurrent_requests is not None
            else None
        )
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        self._client = httpx.AsyncClient(
            headers=headers,
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
        self, messages: Sequence[ChatMessage], deltas: trio.MemorySendChannel[str]
    ) -> None:
        """Stream the assistant's reply to ``messages`` as text deltas into ``deltas``.

        Waits first for a slot of :attr:`limiter` (the wait is cancellable). Closes ``deltas``
        when it returns or raises. Cancelling the call closes the HTTP response (and its
        connection), so the server sees the client go and stops generating.
        If the receiving side of ``deltas`` is closed, the request is dropped the same way and
        the call returns quietly. Raises :class:`EngineError` with code ``llm_unavailable``,
        ``llm_error`` or ``llm_bad_response``.
        """
        with deltas:
            try:
                await self._stream(messages, self.max_tokens, deltas.send)
            except trio.BrokenResourceError:
                log.debug("reply consumer went away; LLM request dropped")

    async def check_ready(self) -> str | None:
        """``GET {base_url}/models``: ``None`` if the server answers 200, else a short reason.

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
        try:
            response = await self._client.get(f"{self.base_url}/models")
        except httpx.HTTPError as exc:
            return f"cannot reach LLM server at {self.base_url} ({type(exc).__name__})"
        if response.status_code != 200:
            return f"LLM server at {self.base_url} answered {response.status_code}"
        return None

    async def warm_up(self) -> None:
        """Ask for a reply a couple of tokens long and discard it (loads the model's caches)."""

        async def discard(_delta: str) -> None:
            pass

        await self._stream([ChatMessage(role="user", content="Hi")], 2, discard)

    async def _stream(
        self,
        messages: Sequence[ChatMessage],
        max_tokens: int,
        on_delta: Callable[[str], Awaitable[None]],
    ) -> None:
        try:
            async with self.limiter if self.limiter is not None else contextlib.nullcontext():
                await self._request(messages, max_tokens, on_delta)
        except EngineError as exc:
            # Server text (an error body, an error chunk) may echo the key: never pass it on.
            if self.api_key and self.api_key in exc.message:
                raise EngineError(exc.code, exc.message.replace(self.api_key, "***")) from None
            raise

    async def _request(
        self,
        messages: Sequence[ChatMessage],
        max_tokens: int,
        on_delta: Callable[[str], Awaitable[None]],
    ) -> None:
        body = {
            "model": self.model,
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "stream": True,
            "max_tokens": max_tokens,
            "temperature": self.temperature,
        }
        url = f"{self.base_url}/chat/completions"
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-store"}
        responded = False
        try:
            async with self._client.stream("POST", url, json=body, headers=headers) as response:
                responded = True
                if not response.is_success:
                    raise EngineError(
                        "llm_error",
                        f"LLM server answered {response.status_code}: "
                        f"{await self._short_body(response)}",
                    )
                await self._read_events(EventSource(response), on_delta)
        except httpx.TimeoutException as exc:
            raise EngineError(
                "llm_unavailable", f"LLM server at {self.base_url} timed out ({type(exc).__name__})"
            ) from exc
        except httpx.HTTPError as exc:
            if responded:
                raise EngineError(
                    "llm_bad_response", f"LLM stream broke off ({type(exc).__name__}: {exc})"
                ) from exc
            raise EngineError(
                "llm_unavailable",
                f"cannot reach LLM server at {self.base_url} ({type(exc).__name__})",
            ) from exc

    async def _read_events(
        self, source: EventSource, on_delta: Callable[[str], Awaitable[None]]
    ) -> None:
        finished = False
        try:
            async for event in source.aiter_sse():
                if event.data == "[DONE]":
                    return
                if not event.data:
                    continue
                content, finish_reason = _parse_chunk(event.data)
                if content:
                    await on_delta(content)
                if finish_reason is not None:
                    finished = True
        except SSEError as exc:
            raise EngineError("llm_bad_response", f"LLM server did not stream SSE: {exc}") from exc
        if not finished:
            raise EngineError("llm_bad_response", "stream ended early")

    async def _short_body(self, response: httpx.Response) -> str:
        try:
            raw = await response.aread()
        except httpx.HTTPError:
            return "(no body)"
        text = raw.decode("utf-8", errors="replace")
        if self.api_key:  # redact before cutting, so no prefix of the key survives
            text = text.replace(self.api_key, "***")
        text = " ".join(text.split())
        return text[:_BODY_SNIPPET] + ("..." if len(text) > _BODY_SNIPPET else "")


def _parse_chunk(data: str) -> tuple[str | None, str | None]:
    """One ``chat.completion.chunk``: its delta text and finish reason (either may be None)."""
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
        return None, None  # e.g. a final usage-only chunk
    choice = choices[0]
    delta = choice.get("delta") if isinstance(choice, dict) else None
    if not isinstance(delta, dict):
        raise EngineError("llm_bad_response", "LLM stream chunk has no 'delta' object")
    content = delta.get("content")
    finish_reason = choice.get("finish_reason")
    if content is not None and not isinstance(content, str):
        raise EngineError("llm_bad_response", "LLM stream delta content is not a string")
    return content, finish_reason
