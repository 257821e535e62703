"""The standard engine servers with the embedded models, as child processes on free loopback ports.

- ``wyoming-faster-whisper`` on the embedded Whisper model folder (tiny.en), with the decoding
  settings of our in-process :class:`~voiceorch.engines.whisper_stt.WhisperSTT` (int8, 2 CPU
  threads, beam 1), so that remote and in-process STT differ by the hop, not by the work;
- ``wyoming-piper`` on the embedded Piper voice (en_US-joe-medium), default synthesis settings
  as our in-process :class:`~voiceorch.engines.piper_tts.PiperTTS`;
- llama-cpp-python's OpenAI-compatible server on the embedded GGUF, started with exactly the
  command and settings ``voiceorch serve`` gives its own child
  (:func:`voiceorch.engines.llama_server.llama_server_command`).

Used by ``python -m bench --engines remote`` and by the tests that need real engine servers
(tests/test_wyoming_engines.py, tests/test_load_balancer.py). It lives beside the bench, not in
``voiceorch``: the product never starts engine servers (an operator runs them), and the Wyoming
servers are test extras.

Everything here is blocking (``subprocess`` and plain sockets), for fixtures and the bench's
synchronous phases; it never runs an event loop, so it can be called anywhere.
"""

from __future__ import annotations

import inspect
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import attrs
import httpx
from wyoming.event import read_event, write_event
from wyoming.info import Describe, Info

#: How long a server may take to load its model and answer.
READY_TIMEOUT_S = 180.0


class EngineServerError(RuntimeError):
    """A server could not be started or did not become ready (the message quotes its log)."""


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def find_command(name: str) -> str | None:
    """The executable ``name`` from this Python's environment (else ``PATH``), or None."""
    return shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)


def whisper_settings() -> dict[str, object]:
    """``WhisperSTT.load``'s defaults (compute type, CPU threads, beam size): the server gets the same."""
    params = inspect.signature(_whisper_stt().load).parameters
    return {name: params[name].default for name in ("compute_type", "cpu_threads", "beam_size")}


def _whisper_stt():
    from voiceorch.engines.whisper_stt import WhisperSTT

    return WhisperSTT


@attrs.define
class EngineServer:
    """One running server: its process, URL (as ``serve --stt-url/--tts-url/--llm-url`` takes
    it), port and log file."""

    name: str
    process: subprocess.Popen
    url: str
    port: int
    log_path: Path
    command: list[str]
    startup_s: float | None = None

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after 10 s; returns the exit code (None if it was not running)."""
        if self.process.poll() is None:
            self.process.terminate()
        try:
            return self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def _spawn(name: str, command: list[str], log_path: Path, url: str, port: int) -> EngineServer:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=os.environ
        )
    return EngineServer(name, process, url, port, log_path, command)


def spawn_wyoming_whisper(data_dir: Path, log_path: Path, port: int | None = None) -> EngineServer:
    """Start wyoming-faster-whisper on the embedded model (not waiting for it to be ready)."""
    from voiceorch.engines.embedded import whisper_model_dir

    exe = find_command("wyoming-faster-whisper")
    if exe is None:
        raise EngineServerError("wyoming-faster-whisper is not installed (pip install -e '.[test]')")
    port = port or free_port()
    settings = whisper_settings()
    command = [
        exe, "--uri", f"tcp://127.0.0.1:{port}",
        "--model", str(whisper_model_dir()), "--data-dir", str(data_dir),
        "--language", "en", "--local-files-only", "--stt-library", "faster-whisper",
        "--compute-type", str(settings["compute_type"]),
        "--cpu-threads", str(settings["cpu_threads"]),
        "--beam-size", str(settings["beam_size"]),
    ]  # fmt: skip
    return _spawn("wyoming-faster-whisper", command, log_path, f"wyoming://127.0.0.1:{port}", port)


def spawn_wyoming_piper(log_path: Path, port: int | None = None) -> EngineServer:
    """Start wyoming-piper on the embedded voice (not waiting for it to be ready)."""
    from voiceorch.engines.embedded import piper_voice_path

    exe = find_command("wyoming-piper")
    if exe is None:
        raise EngineServerError("wyoming-piper is not installed (pip install -e '.[test]')")
    port = port or free_port()
    voice = piper_voice_path()
    command = [
        exe, "--uri", f"tcp://127.0.0.1:{port}",
        "--voice", voice.name.removesuffix(".onnx"), "--data-dir", str(voice.parent),
    ]  # fmt: skip
    return _spawn("wyoming-piper", command, log_path, f"wyoming://127.0.0.1:{port}", port)


def spawn_llama(log_path: Path, port: int | None = None) -> EngineServer:
    """Start the llama.cpp server on the embedded GGUF, as ``serve`` starts its child (not
    waiting for it). Its bootstrap makes it exit if our process dies."""
    from voiceorch.engines.embedded import smollm2_gguf_path
    from voiceorch.engines.llama_server import LlamaServerConfig, llama_server_command

    port = port or free_port()
    command = llama_server_command(LlamaServerConfig(model_path=smollm2_gguf_path()), port)
    return _spawn("llama.cpp", command, log_path, f"http://127.0.0.1:{port}/v1", port)


def wyoming_describe(port: int, timeout: float = 5.0) -> Info:
    """Ask the Wyoming server on ``port`` ``describe``; its ``info`` (``OSError`` if it does
    not answer)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock, sock.makefile("rwb") as stream:
        write_event(Describe().event(), stream)
        stream.flush()
        while (event := read_event(stream)) is not None:
            if Info.is_type(event.type):
                return Info.from_event(event)
    raise OSError(f"the server on port {port} closed without an info event")


def _answers(server: EngineServer) -> bool:
    if server.url.startswith("wyoming://"):
        try:
            wyoming_describe(server.port)
        except (OSError, ValueError):
            return False
        return True
    try:
        with httpx.Client(timeout=2.0, trust_env=False) as client:
            return client.get(f"{server.url}/models").status_code == 200
    except httpx.HTTPError:
        return False


def wait_ready(servers: list[EngineServer], timeout: float = READY_TIMEOUT_S) -> None:
    """Block until every server answers (Wyoming ``describe``, llama.cpp ``GET /models``);
    records each one's ``startup_s``. Raises :class:`EngineServerError` with the log's tail if
    one exits or stays silent (the servers are left running: the caller stops them)."""
    started = time.monotonic()
    waiting = [s for s in servers if s.startup_s is None]
    while waiting:
        for server in list(waiting):
            if server.process.poll() is not None:
                raise EngineServerError(f"{server.name} exited with {server.process.returncode}:\n{server.log_tail()}")
            if _answers(server):
                server.startup_s = round(time.monotonic() - started, 2)
                waiting.remove(server)
        if waiting:
            if time.monotonic() - started > timeout:
                names = ", ".join(s.name for s in waiting)
                raise EngineServerError(
                    f"{names} did not answer within {timeout:g} s:\n" + "\n".join(s.log_tail() for s in waiting)
                )
            time.sleep(0.2)


class EngineServers:
    """Any of the three servers, started together (they load their models in parallel), ready
    when the constructor returns; ``stop()`` (or leaving the ``with`` block) stops them all.

    ``stt_url``/``tts_url``/``llm_url`` are what ``voiceorch serve --stt-url/--tts-url/--llm-url``
    take; ``stt_port``/``tts_port`` the Wyoming ports. Logs go to ``log_dir`` (a temporary
    folder by default): ``stt.log``, ``tts.log``, ``llm.log``.
    """

    def __init__(self, *, stt: bool = True, tts: bool = True, llm: bool = True, log_dir: Path | None = None) -> None:
        self.dir = Path(log_dir) if log_dir is not None else Path(tempfile.mkdtemp(prefix="voiceorch-engines-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.servers: dict[str, EngineServer] = {}
        try:
            if stt:
                self.servers["stt"] = spawn_wyoming_whisper(self.dir / "whisper-data", self.dir / "stt.log")
            if tts:
                self.servers["tts"] = spawn_wyoming_piper(self.dir / "tts.log")
            if llm:
                self.servers["llm"] = spawn_llama(self.dir / "llm.log")
            wait_ready(list(self.servers.values()))
        except BaseException:
            self.stop()
            raise

    def __enter__(self) -> EngineServers:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def _server(self, kind: str) -> EngineServer:
        if kind not in self.servers:
            raise AttributeError(f"no {kind} server was started")
        return self.servers[kind]

    @property
    def stt_url(self) -> str:
        return self._server("stt").url

    @property
    def tts_url(self) -> str:
        return self._server("tts").url

    @property
    def llm_url(self) -> str:
        return self._server("llm").url

    @property
    def stt_port(self) -> int:
        return self._server("stt").port

    @property
    def tts_port(self) -> int:
        return self._server("tts").port

    @property
    def processes(self) -> dict[str, subprocess.Popen]:
        return {kind: server.process for kind, server in self.servers.items()}

    def describe(self) -> dict:
        """For the bench's JSON: each server's URL, command, start-up time, log."""
        return {
            kind: {
                "name": s.name,
                "url": s.url,
                "command": s.command,
                "startup_s": s.startup_s,
                "log": str(s.log_path),
                "pid": s.process.pid,
            }
            for kind, s in self.servers.items()
        }

    def stop(self) -> dict[str, int | None]:
        """Stop every server (SIGTERM together, then wait); their exit codes by kind."""
        for server in self.servers.values():
            if server.process.poll() is None:
                server.process.terminate()
        return {kind: server.stop() for kind, server in self.servers.items()}
