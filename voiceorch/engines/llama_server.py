"""Supervision of llama-cpp-python's OpenAI-compatible server (``llama_cpp.server``).

The server runs as a child process of ours; :func:`run_llama_server` runs one life of it:
starts it, waits until it answers, reports its ``/v1`` base URL, and terminates and reaps it
when cancelled. :func:`supervise_llama_server` keeps it running: a child that dies is started
again, on a fresh port, after a backoff. Its output is piped to us and kept bounded
(:class:`ChildOutput`). If our process dies without running that clean-up
(SIGKILL, an unhandled SIGTERM), the child notices that its parent is gone within a second and
exits, so no orphan server is left running.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import IO

import attrs
import httpx
import trio

from ..logs import log_event
from ..supervise import Backoff, leaves, run_with_restarts

log = logging.getLogger(__name__)

_LOG_TAIL_BYTES = 2000
_POLL_INTERVAL = 0.25

# Runs llama_cpp.server's __main__ with a daemon thread that ends the process when its parent
# goes away (PR_SET_PDEATHSIG would not do: trio spawns from a worker thread, and that signal
# fires when the spawning *thread* exits).
_CHILD_BOOTSTRAP = """\
import os, runpy, threading, time
def _exit_with_parent(parent=os.getppid()):
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)
threading.Thread(target=_exit_with_parent, daemon=True).start()
runpy.run_module({module!r}, run_name="__main__", alter_sys=True)
"""


@attrs.frozen(kw_only=True)
class LlamaServerConfig:
    """How to run the server. ``port=0`` picks a free loopback port just before each start.

    The child's stdout and stderr come to us through a pipe: the last lines are kept in
    memory and quoted when the server fails, and if ``log_path`` is given they are appended
    there, bounded by ``log_max_bytes`` (then rotated to ``log_path.1``, see
    :class:`ChildOutput`). Nothing else is written: the child logs every request's timings,
    which once grew an unlinked temporary file for ever.
    """

    model_path: Path = attrs.field(converter=Path)
    host: str = "127.0.0.1"
    port: int = 0
    n_ctx: int = 2048
    n_threads: int = 1  # 2 threads halve its speed whenever Whisper or Piper runs beside it
    python: str = sys.executable
    log_path: Path | None = attrs.field(default=None, converter=attrs.converters.optional(Path))
    log_max_bytes: int = 10_000_000
    start_timeout: float = 120.0
    #: The module run as the server (a test runs a fake one).
    server_module: str = "llama_cpp.server"
    #: llama-cpp-python's default (True) makes a new request cut off the one streaming, and
    #: in 0.3.36 that leaves both streams stalled; False queues requests one after another.
    interrupt_requests: bool = False


def llama_server_command(config: LlamaServerConfig, port: int) -> list[str]:
    """The command line that starts the server on ``port`` (``python -m llama_cpp.server ...``
    in effect, through a small bootstrap that exits if our process dies)."""
    return [
        config.python, "-c", _CHILD_BOOTSTRAP.format(module=config.server_module),
        "--model", str(config.model_path),
        "--host", config.host,
        "--port", str(port),
        "--n_ctx", str(config.n_ctx),
        "--n_threads", str(config.n_threads),
        "--interrupt_requests", str(config.interrupt_requests),
    ]  # fmt: skip


async def run_llama_server(
    config: LlamaServerConfig, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run the server until cancelled; ``task_status.started(base_url)`` once it answers.

    ``base_url`` is ``http://{host}:{port}/v1``. Raises ``RuntimeError`` (with the exit code and
    the tail of the child's log) if the server exits, before or after it came up, or does not
    answer within ``config.start_timeout``. On cancellation the child gets SIGTERM, then SIGKILL
    a few seconds later if it is still there, and is reaped before this returns.
    """
    if not config.model_path.is_file():
        raise RuntimeError(f"llama server model file not found: {config.model_path}")
    port = config.port or _pick_free_port(config.host)
    command = llama_server_command(config, port)
    host = f"[{config.host}]" if ":" in config.host else config.host
    base_url = f"http://{host}:{port}/v1"

    output = ChildOutput(config.log_path, max_bytes=config.log_max_bytes)
    try:
        failure: str
        async with trio.open_nursery() as nursery:
            try:
                process: trio.Process = await nursery.start(
                    partial(
                        trio.run_process,
                        command,
                        check=False,
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT,
                    )
                )
            except OSError as exc:
                failure = f"cannot start llama server: {exc}"
            else:
                drained = trio.Event()
                nursery.start_soon(_drain_output, process.stdout, output, drained)
                log_event(log, "llm.child.started", pid=process.pid, port=port)
                failure = await _wait_until_ready(process, base_url, config.start_timeout)
                if not failure:
                    task_status.started(base_url)
                    await process.wait()
                    failure = f"llama server exited unexpectedly with code {process.returncode}"
                with trio.move_on_after(1):  # its last words, unless something else holds the pipe
                    await drained.wait()
            # On a start-up time-out the child still runs: run_process terminates and reaps it.
            nursery.cancel_scope.cancel()
    finally:
        output.close()
    raise RuntimeError(f"{failure} (model {config.model_path}); last output:\n{output.tail()}")


async def supervise_llama_server(
    config: LlamaServerConfig,
    *,
    restart_backoff: float = 1.0,
    max_backoff: float = 30.0,
    on_restart: Callable[[str], None] | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Keep the server running until cancelled; ``task_status.started(base_url)`` once it first
    answers.

    The first start must succeed (else ``RuntimeError``, as from :func:`run_llama_server`: a
    missing model or a broken install will not mend itself). After that, a child that exits is
    logged (``llm.child.exited``, with the tail of its output) and started again; unless
    ``config.port`` is fixed, each start gets a fresh free port (so a port taken by someone
    else while the child was down cannot keep it crash-looping), and ``on_restart(base_url)``
    tells the LLM client where the new child listens. The backoff doubles from
    ``restart_backoff`` up to ``max_backoff`` and resets once a child has served for a minute.
    While it is down, requests fail with ``llm_unavailable`` and ``/readyz`` says so.
    Cancellation terminates and reaps the current child.
    """
    first = True

    async def run_once() -> RuntimeError | None:
        nonlocal first
        failure: RuntimeError | None = None
        try:
            async with trio.open_nursery() as nursery:
                base_url = await nursery.start(run_llama_server, config)
                if first:
                    first = False
                    task_status.started(base_url)
                else:
                    log_event(log, "llm.child.restarted", base_url=base_url)
                    if on_restart is not None:
                        on_restart(base_url)
        except* RuntimeError as group:
            failure = next(leaves(group))
        if first and failure is not None:
            raise failure
        return failure  # (run_llama_server only returns by raising)

    def exited(failure: RuntimeError | None, delay: float) -> None:
        log_event(log, "llm.child.exited", logging.ERROR, reason=str(failure), retry_s=delay)

    await run_with_restarts(run_once, backoff=Backoff(restart_backoff, max_backoff), on_exit=exited)


async def _wait_until_ready(process: trio.Process, base_url: str, timeout: float) -> str:
    """Poll ``GET {base_url}/models`` until 200: ``""`` when ready, else why not."""
    async with httpx.AsyncClient(timeout=2.0, trust_env=False) as client:
        with trio.move_on_after(timeout):
            while True:
                if process.poll() is not None:
                    return f"llama server exited during start-up with code {process.returncode}"
                try:
                    response = await client.get(f"{base_url}/models")
                    if response.status_code == 200:
                        return ""
                except httpx.HTTPError:
                    pass
                await trio.sleep(_POLL_INTERVAL)
    return f"llama server did not answer at {base_url} within {timeout:g} s"


def _pick_free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@attrs.define
class ChildOutput:
    """The child's stdout and stderr: the last :data:`_LOG_TAIL_BYTES` kept in memory (quoted
    when it fails) and, if ``path`` is given, written there, bounded: past ``max_bytes`` the
    file is renamed to ``PATH.1`` (replacing the one before) and a new one begun, so it holds
    at most twice ``max_bytes`` however long the child runs."""

    path: Path | None
    max_bytes: int
    _tail: bytearray = attrs.field(factory=bytearray, init=False)
    _file: IO[bytes] | None = attrs.field(default=None, init=False)
    _size: int = attrs.field(default=0, init=False)

    def write(self, data: bytes) -> None:
        """Keep ``data`` (blocking file I/O: call it in a thread)."""
        self._tail += data
        del self._tail[:-_LOG_TAIL_BYTES]
        if self.path is None:
            return
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "ab")  # noqa: SIM115 (closed by close())
            self._size = self._file.tell()
        data = data[-self.max_bytes :]
        if self._size and self._size + len(data) > self.max_bytes:
            self._file.close()
            os.replace(self.path, self.path.with_name(self.path.name + ".1"))
            self._file = open(self.path, "ab")  # noqa: SIM115
            self._size = 0
        self._file.write(data)
        self._file.flush()
        self._size += len(data)

    def tail(self) -> str:
        return self._tail.decode("utf-8", errors="replace").strip() or "(no output)"

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


async def _drain_output(stream: trio.abc.ReceiveStream, output: ChildOutput, drained: trio.Event) -> None:
    """Copy the child's output into ``output`` until it closes its end (the pipe never fills,
    so the child never blocks on it); sets ``drained`` at the end. Cancellation stops it."""
    async with stream:
        while data := await stream.receive_some(65536):
            await trio.to_thread.run_sync(output.write, data)
    drained.set()
