"""``voiceorch serve`` as a child process of the bench (as tests/real_server.py runs it).

``python -m voiceorch serve --port 0 --log-level debug ARGS``: stdout (progress and the
``ready: ws://...`` line) goes to one file, stderr (the JSON log lines) to another. ``stop``
sends SIGTERM and waits; the server then stops its own llama.cpp child.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import attrs


@attrs.define
class ServerProcess:
    process: subprocess.Popen
    url: str
    log_path: Path
    stdout_path: Path
    startup_s: float

    @property
    def pid(self) -> int:
        return self.process.pid

    @classmethod
    def start(cls, *args: str, log_path: Path, ready_timeout: float = 300, tree: Path | None = None) -> ServerProcess:
        """``tree``: run the ``voiceorch`` package of that checkout (cwd and PYTHONPATH), not this one."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        stdout_path = log_path.with_suffix(".stdout")
        started = time.monotonic()
        with open(stdout_path, "wb") as out, open(log_path, "wb") as err:
            process = subprocess.Popen(
                [sys.executable, "-m", "voiceorch", "serve", "--port", "0", "--log-level", "debug", *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                **child_environment(tree),
            )
        server = None
        try:
            deadline = started + ready_timeout
            while time.monotonic() < deadline:
                match = re.search(r"ready: (ws://\S+)", stdout_path.read_text(errors="replace"))
                if match:
                    server = cls(process, match.group(1), log_path, stdout_path, time.monotonic() - started)
                    return server
                if process.poll() is not None:
                    break
                time.sleep(0.1)
            raise RuntimeError(
                f"voiceorch serve did not become ready (exit code {process.poll()}):\n"
                + stdout_path.read_text(errors="replace")[-2000:]
                + log_path.read_text(errors="replace")[-3000:]
            )
        finally:
            if server is None:
                _terminate(process)

    def rss_kb(self) -> int | None:
        return rss_kb(self.pid)

    def cpu_s(self) -> float | None:
        return cpu_seconds(self.pid)

    def stop(self) -> int:
        return _terminate(self.process)

    def log_lines(self) -> list[dict]:
        return read_log(self.log_path)


def child_environment(tree: Path | None) -> dict:
    """``cwd`` and ``env`` of a ``python -m voiceorch`` child: this checkout's, or ``tree``'s."""
    # One server process unless a level asks for workers with --workers (serve's default is one
    # per core; an older checkout without workers ignores the variable).
    env = {"VOICEORCH_WORKERS": "1", **os.environ, "PYTHONUNBUFFERED": "1"}
    if tree is None:
        return {"env": env}
    env["PYTHONPATH"] = os.pathsep.join([str(tree), *filter(None, [os.environ.get("PYTHONPATH")])])
    return {"env": env, "cwd": str(tree)}


def server_code(tree: Path | None) -> dict:
    """Which ``voiceorch`` a child started with :func:`child_environment` imports, and its commit."""
    root = tree or Path(__file__).resolve().parent.parent
    probe = subprocess.run(
        [sys.executable, "-c", "import voiceorch; print(voiceorch.__file__)"],
        capture_output=True,
        text=True,
        timeout=60,
        **child_environment(tree),
    )
    git = ["git", "-C", str(root)]
    commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip() or None
    dirty = subprocess.run(
        [*git, "status", "--porcelain", "--", "voiceorch"], capture_output=True, text=True
    ).stdout.splitlines()
    return {
        "tree": str(root),
        "voiceorch_file": probe.stdout.strip() or None,
        "commit": commit,
        "uncommitted_voiceorch_files": [line[3:] for line in dirty],
    }


def _terminate(process: subprocess.Popen) -> int:
    if process.poll() is None:
        process.terminate()
    try:
        return process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


def read_log(path: Path) -> list[dict]:
    lines = []
    for raw in path.read_text(errors="replace").splitlines():
        try:
            line = json.loads(raw)
        except ValueError:
            continue
        if isinstance(line, dict):
            lines.append(line)
    return lines


def rss_kb(pid: int) -> int | None:
    """VmRSS of a process, in kB (None if it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
