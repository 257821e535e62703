"""Supervision of llama-cpp-python's OpenAI-compatible server (``llama_cpp.server``).

The server runs as a child process of ours; :func:`run_llama_server` runs one life of it:
starts it, waits until it answers, reports its ``/v1`` base URL, and terminates and reaps it
when cancelled. :func:`supervise_llama_server` keeps it running: a child that dies is started
again on the same port, after a backoff. If our process dies without running that clean-up
(SIGKILL, an unhandled SIGTERM), the child notices that its parent is gone within a second and
exits, so no orphan server is left running.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import tempfile
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
runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
"""


@attrs.frozen(kw_only=True)
class LlamaServerConfig:
    """How to run the server. ``port=0`` picks a free loopback port just before starting.

    The child's stdout and stderr go to ``log_path`` (appended) if given, else to an anonymous
    temporary file; either way the tail of it is quoted when the server fails.
    """

    model_path: Path = attrs.field(converter=Path)
    host: str = "127.0.0.1"
    port: int = 0
    n_ctx: int = 2048
    n_threads: int = 1  # 2 threads halve its speed whenever Whisper or Piper runs beside it
    python: str = sys.executable
    log_path: Path | None = attrs.field(
        default=None, converter=attrs.converters.optional(Path)
    )
    start_timeout: float = 120.0
    #: llama-cpp-python's default (True) makes a new request cut off the one streaming, and
    #: in 0.3.36 that leaves both streams stalled; False queues requests one after another.
    interrupt_requests: bool = False


def llama_server_command(config: LlamaServerConfig, port: int) -> list[str]:
    """The command line that starts the server on ``port`` (``python -m llama_cpp.server ...``
    in effect, through a small bootstrap that exits if our process dies)."""
    return [
        config.python, "-c", _CHILD_BOOTSTRAP,
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

    with _open_log(config.log_path) as output:
        log_start = os.fstat(output.fileno()).st_size
        failure: str
        async with trio.open_nursery() as nursery:
            try:
                process: trio.Process = await nursery.start(
                    partial(
                        trio.run_process,
                        command,
                        check=False,
                        stdin=subprocess.DEVNULL,
                        stdout=output,
                        stderr=subprocess.STDOUT,
                    )
                )
            except OSError as exc:
                failure = f"cannot start llama server: {exc}"
            else:
                log_event(log, "llm.child.started", pid=process.pid, port=port)
                failure = await _wait_until_ready(process, base_url, config.start_timeout)
                if not failure:
                    task_status.started(base_url)
                    await process.wait()
                    failure = f"llama server exited unexpectedly with code {process.returncode}"
            # On a start-up time-out the child still runs: run_process terminates and reaps it.
            nursery.cancel_scope.cancel()
        tail = _read_tail(output, log_start)
    raise RuntimeError(f"{failure} (model {config.model_path}); last output:\n{tail}")


async def supervise_llama_server(
    config: LlamaServerConfig,
    *,
    restart_backoff: float = 1.0,
    max_backoff: float = 30.0,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Keep the server running until cancelled; ``task_status.started(base_url)`` once it first
    answers.

    The first start must succeed (else ``RuntimeError``, as from :func:`run_llama_server`: a
    missing model or a broken install will not mend itself). After that, a child that exits is
    logged (``llm.child.exited``, with the tail of its output) and started again on the same
    port, so the LLM client's base URL stays valid; the backoff doubles from
    ``restart_backoff`` up to ``max_backoff`` and resets once a child has served for a minute.
    While it is down, requests fail with ``llm_unavailable`` and ``/readyz`` says so.
    Cancellation terminates and reaps the current child.
    """
    config = attrs.evolve(config, port=config.port or _pick_free_port(config.host))
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
                    log_event(log, "llm.child.restarted", port=config.port)
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


def _open_log(log_path: Path | None) -> IO[bytes]:
    if log_path is None:
        return tempfile.TemporaryFile(prefix="llama-server-", suffix=".log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    return open(log_path, "a+b")  # noqa: SIM115 (closed by the caller's `with`)


def _read_tail(log: IO[bytes], start: int) -> str:
    end = os.fstat(log.fileno()).st_size
    offset = max(start, end - _LOG_TAIL_BYTES)
    data = os.pread(log.fileno(), end - offset, offset)
    return data.decode("utf-8", errors="replace").strip() or "(no output)"
