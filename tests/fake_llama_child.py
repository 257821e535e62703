"""A FAKE llama_cpp.server for tests of the child supervision (run as the child's module).

Takes the real server's ``--host`` and ``--port`` (ignores the rest), writes
``$FAKE_LLAMA_OUTPUT_BYTES`` bytes of log lines (default 0), then prints ``fake llama: ready``
and answers ``GET /v1/models`` with 200; after ``$FAKE_LLAMA_EXIT_AFTER`` seconds (if set) it
exits with code 3, as a crashing server would; with ``$FAKE_LLAMA_CRASH_ONCE`` naming a file,
only the child that creates that file does.
"""

from __future__ import annotations

import argparse
import http.server
import os
import sys
import threading

parser = argparse.ArgumentParser()
parser.add_argument("--host")
parser.add_argument("--port", type=int)
args, _rest = parser.parse_known_args()


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        body = b'{"object": "list", "data": []}'
        self.send_response(200 if self.path == "/v1/models" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *values) -> None:
        sys.stderr.write("request: " + format % values + "\n")


server = http.server.HTTPServer((args.host, args.port), Handler)  # fails if the port is taken
line = "llama_print_timings: prompt eval time = 12.34 ms / 5 tokens\n"
for _ in range(int(os.environ.get("FAKE_LLAMA_OUTPUT_BYTES", "0")) // len(line)):
    sys.stdout.write(line)
print("fake llama: ready", flush=True)
exit_after = os.environ.get("FAKE_LLAMA_EXIT_AFTER")
crash_once = os.environ.get("FAKE_LLAMA_CRASH_ONCE")
if crash_once:
    try:
        open(crash_once, "x").close()
    except FileExistsError:
        exit_after = None
if exit_after:
    threading.Timer(float(exit_after), lambda: os._exit(3)).start()
server.serve_forever()
