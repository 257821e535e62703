"""Start ``voiceorch serve`` as a real child process on a free loopback port, for tests."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import attrs


@attrs.define
class RunningServer:
    process: subprocess.Popen
    url: str
    log_path: Path
    #: The HTTP side's base URL (``http://127.0.0.1:PORT``), if it printed one.
    http_url: str | None = None

    def log_lines(self) -> list[dict]:
        lines = []
        for raw in self.log_path.read_text().splitlines():
            try:
                lines.append(json.loads(raw))
            except ValueError:
                pass
        return lines

    def stop(self) -> int:
        """SIGTERM, as a service manager would; the server exits 0 after cleaning up."""
        self.process.terminate()
        try:
            return self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def start_server(*args: str, ready_timeout: float = 240) -> RunningServer:
    """Run ``python -m voiceorch serve --port 0 ARGS`` and wait for its ready line."""
    log_file = tempfile.NamedTemporaryFile(prefix="voiceorch-server-", suffix=".log", delete=False)
    process = subprocess.Popen(
        [sys.executable, "-m", "voiceorch", "serve", "--port", "0", "--http-port", "0", "--log-level", "debug", *args],
        stdout=subprocess.PIPE,
        stderr=log_file,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    deadline = time.monotonic() + ready_timeout
    seen = []
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        seen.append(line)
        match = re.search(r"ready: (ws://\S+)", line)
        if match:
            page = next((m.group(1) for m in map(re.compile(r"page: (http://[^/\s]+)").search, seen) if m), None)
            return RunningServer(process, match.group(1), Path(log_file.name), http_url=page)
    process.kill()
    raise RuntimeError(
        "voiceorch serve did not become ready:\n" + "".join(seen) + Path(log_file.name).read_text()[-3000:]
    )
