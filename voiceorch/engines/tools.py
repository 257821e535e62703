"""Tools the LLM may call: their description, and the interface of tools the server runs itself.

A tool is described by :class:`ToolSpec` (the OpenAI function-calling shape: a name, a
description and a JSON Schema of its parameters). Client-side tools are declared by the client
(``session.update``) and answered by it; server-side tools (for instance an MCP server's, see
``--mcp``) sit behind :class:`ServerTools`, which the session's turn calls directly. Like every
engine, server tools know nothing of sessions, turns or servers.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import Any

import attrs

from .base import EngineLifecycle


@attrs.frozen(kw_only=True)
class ToolSpec:
    """One function the LLM may call (the OpenAI chat-completions ``tools`` entry's content)."""

    name: str
    description: str = ""
    #: JSON Schema of the arguments object.
    parameters: Mapping[str, Any] = attrs.field(factory=lambda: {"type": "object", "properties": {}})


@attrs.frozen(kw_only=True)
class ToolResult:
    """What a tool call gave back, as text for the LLM; ``is_error`` marks a failed call (its
    text then says why), which the LLM sees as a result like any other."""

    output: str
    is_error: bool = False


class ServerTools(EngineLifecycle, abc.ABC):
    """Tools the server runs itself (e.g. MCP servers'), shared by every session of a process."""

    __slots__ = ()

    @abc.abstractmethod
    def specs(self) -> list[ToolSpec]:
        """The tools on offer now (listed at start-up). Not a checkpoint."""

    @abc.abstractmethod
    async def call(self, name: str, arguments: str) -> ToolResult:
        """Run tool ``name`` with ``arguments`` (a JSON object's text, as the LLM wrote it).

        Never raises for a tool that fails, times out or does not exist: that is an error
        :class:`ToolResult`. Cancellation cancels the call (the MCP request is cancelled) and
        propagates as usual.
        """
