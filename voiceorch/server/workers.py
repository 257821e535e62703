"""``serve --workers N``: N worker processes serving one voice port, behind one HTTP port.

The parent binds the voice port and starts N workers (``python -m voiceorch serve ...
--worker-index K``), each an ordinary single-process server with its own engines (embedded
models and llama.cpp child, or clients of remote engines), its own ``--max-sessions`` and its
own HTTP side on a private loopback port. They all accept on the parent's listening socket,
inherited (:mod:`voiceorch.server.shared_listener`): one port, one accept queue, and a full
worker, or one whose engines cannot serve (its llama.cpp child down: it asks them every 2 s,
:mod:`voiceorch.server.readiness`), lets the others take new connections. A session lives in the
worker that accepted it.

The parent serves the public HTTP port itself (:class:`FrontApp`): the page, ``/healthz``,
``/readyz`` (ready while any worker takes new sessions; each worker's answer in ``workers``)
and ``/metrics`` (every worker's own metrics, scraped from its private port when scraped, each
series labelled ``worker="K"``, plus ``voiceorch_worker_up{worker}``).

Shutdown: on SIGINT/SIGTERM the parent closes its copy of the voice socket and closes every
worker's stdin, which a worker takes as its first signal (the same graceful drain as a single
process: no new sessions, responses in progress finish within ``--shutdown-grace``, then 1001);
a worker that got the signal itself (a service manager signals the whole group) drains only
once. A second signal is passed on to the workers, which then stop at once. The parent exits
once every worker has, with 0 if they all exited 0. A worker that dies while serving is started
again after a backoff; one that dies before it was ever ready stops the whole server (exit 1),
as a single process would stop.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterable

import attrs
import httpx
import trio
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from ..logs import log_event
from ..supervise import Backoff
from .http import HttpApp, run_http_server
from .readiness import READY_TIMEOUT_S
from .shared_listener import NOT_ACCEPTING, WorkerTable
from .voice_ws import VOICE_PATH

log = logging.getLogger(__name__)

#: How long the front waits for a worker's answer to /readyz or /metrics.
WORKER_HTTP_TIMEOUT_S = READY_TIMEOUT_S + 1.0

_PAGE = re.compile(r"^page: (http://\S+?)/?$")
_PREFIX = "[voiceorch] "


def _say(line: str) -> None:
    print(f"{_PREFIX}{line}", file=sys.stdout, flush=True)


@attrs.define(eq=False)
class Worker:
    """One worker slot: its current process (replaced when it is restarted)."""

    index: int
    process: trio.Process | None = None
    #: Its private HTTP side (``http://127.0.0.1:PORT``) while it serves.
    http_url: str | None = None
    serving: bool = False
    ever_ready: bool = False
    #: The exit code of its last process.
    exit_code: int | None = None


@attrs.define(eq=False)
class WorkerPool:
    """The parent's view of its workers (for the front, and for shutdown)."""

    count: int
    command: list[str]
    listen_fds: tuple[int, ...]
    http: bool
    table: WorkerTable = attrs.field(init=False)
    workers: list[Worker] = attrs.field(init=False)
    stopping: bool = False
    #: Set once every worker is ready, or one failed before being ready.
    started: trio.Event = attrs.field(factory=trio.Event)
    failed: str | None = None

    def __attrs_post_init__(self) -> None:
        self.workers = [Worker(index) for index in range(1, self.count + 1)]
        self.table = WorkerTable.create(self.count)

    def worker_command(self, worker: Worker) -> list[str]:
        fds = [f"--listen-fd={fd}" for fd in self.listen_fds] + [f"--worker-table-fd={self.table.fd}"]
        http = ["--http-host", "127.0.0.1", "--http-port", "0" if self.http else "-1"]
        return [*self.command, "--workers", "1", "--worker-index", str(worker.index), *fds, *http]

    def refusal_reason(self) -> str | None:
        return "shutting down: no new sessions" if self.stopping else None

    async def supervise(self, worker: Worker) -> None:
        """Run the slot's worker until the pool stops; restart it if it dies while serving."""
        backoff = Backoff(1.0, 30.0)
        while True:
            started = time.monotonic()
            await self._run_once(worker)
            if self.stopping:
                break
            if not worker.ever_ready:
                self.failed = f"worker {worker.index} exited with code {worker.exit_code} before it was ready"
                log_event(log, "workers.start_failed", logging.ERROR, worker=worker.index, code=worker.exit_code)
                self.started.set()
                break
            delay = backoff.delay_after(time.monotonic() - started)
            log_event(log, "workers.exited", logging.ERROR, worker=worker.index, code=worker.exit_code, restart_s=delay)
            _say(f"worker {worker.index} exited with code {worker.exit_code}; starting it again in {delay:g} s")
            with trio.move_on_after(delay):
                while not self.stopping:
                    await trio.sleep(0.1)
            if self.stopping:
                break

    async def _run_once(self, worker: Worker) -> None:
        process = await trio.lowlevel.open_process(
            self.worker_command(worker),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            pass_fds=(*self.listen_fds, self.table.fd),
        )
        worker.process = process
        log_event(log, "workers.started", worker=worker.index, pid=process.pid)
        try:
            assert process.stdout is not None
            pending = b""
            async for chunk in process.stdout:
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    self._on_line(worker, line.decode(errors="replace"))
            with trio.CancelScope(shield=True):
                worker.exit_code = await process.wait()
        finally:
            worker.serving = False
            worker.http_url = None
            self.table.set(worker.index, NOT_ACCEPTING)  # whatever it last wrote, it takes none now
            if process.returncode is None:  # the parent is being cancelled: never leave a worker behind
                process.kill()
                with trio.CancelScope(shield=True):
                    await process.wait()
                worker.exit_code = process.returncode
        log_event(log, "workers.worker_exited", worker=worker.index, pid=process.pid, code=worker.exit_code)

    def _on_line(self, worker: Worker, line: str) -> None:
        text = line.removeprefix(_PREFIX)
        if (page := _PAGE.match(text)) is not None:
            worker.http_url = page.group(1)
        elif text.startswith("metrics: "):
            pass
        elif text.startswith("ready: "):
            worker.serving = worker.ever_ready = True
            _say(f"worker {worker.index}: serving (pid {worker.process.pid if worker.process else '?'})")
            if all(w.ever_ready for w in self.workers):
                self.started.set()
        else:
            _say(f"worker {worker.index}: {text}")

    async def stop(self) -> None:
        """Ask every worker to drain (close its stdin). Idempotent."""
        self.stopping = True
        for worker in self.workers:
            process = worker.process
            if process is not None and process.stdin is not None and process.returncode is None:
                try:
                    await process.stdin.aclose()
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass

    def signal_all(self, signum: int) -> None:
        for worker in self.workers:
            if worker.process is not None and worker.process.returncode is None:
                worker.process.send_signal(signum)

    async def ask_all(self, path: str) -> dict[int, tuple[int, str] | str]:
        """GET ``path`` from every worker's HTTP side at once: by worker, (status, body) or
        why there is no answer."""
        answers: dict[int, tuple[int, str] | str] = {}

        async def ask(client: httpx.AsyncClient, worker: Worker) -> None:
            if worker.http_url is None or not worker.serving:
                answers[worker.index] = "not running"
                return
            try:
                response = await client.get(worker.http_url + path)
                answers[worker.index] = (response.status_code, response.text)
            except httpx.HTTPError as exc:
                answers[worker.index] = f"no answer ({type(exc).__name__})"

        async with httpx.AsyncClient(timeout=WORKER_HTTP_TIMEOUT_S) as client:
            async with trio.open_nursery() as nursery:
                for worker in self.workers:
                    nursery.start_soon(ask, client, worker)
        return answers


class FrontApp(HttpApp):
    """The public HTTP side of ``serve --workers N``: the page and /healthz as one process
    serves them; /readyz and /metrics from the workers' own."""

    def __init__(self, pool: WorkerPool, **kwargs) -> None:
        super().__init__(None, refusal_reason=pool.refusal_reason, **kwargs)  # type: ignore[arg-type]
        self.pool = pool

    async def worker_readiness(self) -> dict[str, str | None]:
        """Each worker's reason not to take a new session (None: it takes them)."""
        found: dict[str, str | None] = {}
        for index, answer in sorted((await self.pool.ask_all("/readyz")).items()):
            if isinstance(answer, str):
                found[str(index)] = answer
                continue
            status, body = answer
            try:
                reason = json.loads(body).get("reason")
            except (ValueError, AttributeError):
                reason = f"HTTP {status}"
            found[str(index)] = None if status == 200 else (reason or f"HTTP {status}")
        return found

    async def not_ready_reason(self) -> str | None:
        """None while the server is not shutting down and at least one worker takes new
        sessions (a full worker leaves new connections to the others); else why not."""
        refusal = self.refusal_reason()
        if refusal is not None:
            return refusal
        workers = await self.worker_readiness()
        if any(reason is None for reason in workers.values()):
            return None
        return "; ".join(f"worker {index}: {reason}" for index, reason in workers.items())

    async def _readyz(self, path: str):
        refusal = self.refusal_reason()
        workers = {} if refusal is not None else await self.worker_readiness()
        if refusal is None and any(reason is None for reason in workers.values()):
            reason = None
        else:
            reason = refusal or "; ".join(f"worker {index}: {why}" for index, why in workers.items())
        body: dict = {"ready": reason is None}
        if reason is not None:
            body["reason"] = reason
        if self.instance_id is not None:
            body["instance"] = self.instance_id
        body["workers"] = {index: ("ready" if why is None else why) for index, why in workers.items()}
        status = 200 if reason is None else 503
        return status, [(b"content-type", b"application/json")], json.dumps(body).encode()

    async def _metrics(self, path: str):
        answers = await self.pool.ask_all("/metrics")
        texts = {index: a[1] for index, a in answers.items() if not isinstance(a, str) and a[0] == 200}
        body = merge_metrics(texts, workers=[w.index for w in self.pool.workers])
        return 200, [(b"content-type", CONTENT_TYPE_LATEST.encode())], body


class _Families:
    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> list[Metric]:
        return self._families


def merge_metrics(texts: dict[int, str], *, workers: Iterable[int]) -> bytes:
    """One Prometheus exposition of several workers' (text format): every sample labelled
    ``worker="K"``, families merged by name; plus ``voiceorch_worker_up{worker}`` (1 for each
    worker in ``texts``, 0 for the others of ``workers``)."""
    merged: dict[str, Metric] = {}
    for index, text in sorted(texts.items()):
        for family in text_string_to_metric_families(text):
            into = merged.get(family.name)
            if into is None:
                into = merged[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
            for sample in family.samples:
                labels = {**sample.labels, "worker": str(index)}
                into.samples.append(Sample(sample.name, labels, sample.value, sample.timestamp, sample.exemplar))
    up = Metric("voiceorch_worker_up", "1 if the worker answered this scrape, else 0.", "gauge")
    for index in workers:
        up.samples.append(Sample("voiceorch_worker_up", {"worker": str(index)}, 1.0 if index in texts else 0.0))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families([*merged.values(), up]))  # type: ignore[arg-type]
    return generate_latest(registry)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


async def run_workers(config, count: int, serve_argv: list[str]) -> int:
    """The parent of ``serve --workers COUNT`` (``config`` is the ServerConfig its arguments
    describe; ``serve_argv`` the arguments, which every worker gets too). Returns the exit code."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        listeners = await trio.open_tcp_listeners(config.port, host=config.host)
        port = listeners[0].socket.getsockname()[1]
        command = [sys.executable, "-m", "voiceorch", "serve", *serve_argv, "--instance-id", str(config.instance_id)]
        pool = WorkerPool(
            count,
            command,
            tuple(listener.socket.fileno() for listener in listeners),
            http=config.http_port is not None,
        )
        url = f"ws://{config.host}:{port}{VOICE_PATH}"
        _say(f"starting {count} workers on {url}, each with up to {config.access.max_sessions} sessions")
        log_event(log, "workers.listen", host=config.host, port=port, workers=count)
        signalled = False
        async with trio.open_nursery() as nursery:

            async def supervise_all() -> None:
                async with trio.open_nursery() as slots:
                    for worker in pool.workers:
                        slots.start_soon(pool.supervise, worker)
                nursery.cancel_scope.cancel()  # every worker has exited

            async def front_when_started() -> None:
                await pool.started.wait()
                if pool.failed is not None:
                    _say(f"error: {pool.failed}; stopping")
                    await begin_stop()
                    return
                if config.http_port is not None:
                    http_host = config.http_host or config.host
                    app = FrontApp(
                        pool, voice_port=port, instance_id=config.instance_id, page_voice_url=config.page_voice_url
                    )
                    http_port = await nursery.start(
                        lambda task_status: run_http_server(
                            app, host=http_host, port=config.http_port, task_status=task_status
                        )
                    )
                    if http_port is not None:
                        _say(f"page: http://{_url_host(http_host)}:{http_port}/")
                        _say(f"metrics: http://{_url_host(http_host)}:{http_port}/metrics")
                    else:
                        _say(f"page: unavailable (could not listen on {http_host}:{config.http_port}; retrying)")
                log_event(log, "workers.ready", port=port, workers=count)
                _say(f"ready: {url} ({count} workers)")  # printed last: tests wait for it

            async def begin_stop() -> None:
                for listener in listeners:  # the workers' copies stay open until each has drained
                    await listener.aclose()
                await pool.stop()

            nursery.start_soon(supervise_all)
            nursery.start_soon(front_when_started)
            async for signum in signals:
                name = signal.Signals(signum).name
                log_event(log, "workers.stop", signal=name, graceful=not signalled)
                if signalled or pool.stopping:
                    _say(f"{name}: stopping every worker now")
                    pool.signal_all(signum)
                    continue
                signalled = True
                _say(f"{name}: stopping {count} workers (responses in progress get {config.shutdown_grace_s:g} s)")
                await begin_stop()
    codes = [worker.exit_code for worker in pool.workers]
    log_event(log, "workers.stopped", codes=codes)
    if pool.failed is not None:
        return 1
    return 0 if all(code == 0 for code in codes) else 1


async def run_worker(config) -> None:
    """A worker of ``serve --workers N``: the single-process server, told to stop (gracefully,
    like a first signal) when its stdin closes: the parent asks it to, or is gone."""
    await _run_until_signalled(config)


async def _stdin_closed() -> None:
    """Return once stdin reaches its end (the parent closed it, or died). Cancellable."""
    stream = trio.lowlevel.FdStream(os.dup(0))
    try:
        while await stream.receive_some(4096):
            pass
    finally:
        with trio.CancelScope(shield=True):
            await stream.aclose()


async def _run_until_signalled(config) -> None:
    from .app import run_until_signalled

    await run_until_signalled(config, stop_request=_stdin_closed)
