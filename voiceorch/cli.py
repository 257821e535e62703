"""The ``voiceorch`` command: ``serve`` runs the server, ``talk`` is a test client."""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from . import __version__, logs
from .session import SessionSettings

#: How a parsed ``serve`` argument becomes a field of :class:`~voiceorch.server.app.ServerConfig`:
#: (argparse dest, dotted path in the config: ``field``, ``session.field`` or ``access.field``,
#: converter or None). :func:`_serve_parser` fills it as it declares each option, taking the
#: option's default from the same field, so the classes hold the one copy of every default.
ConfigArgs = list[tuple[str, str, "Callable[[Any], Any] | None"]]


def _config_default(path: str) -> Any:
    """The default of a ServerConfig field (``session.``/``access.`` for the nested ones)."""
    from .server.app import ServerConfig

    value: Any = ServerConfig()
    for name in path.split("."):
        value = getattr(value, name)
    return value


def _none_if_zero(value: int | None) -> int | None:
    return value or None


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _off_if_negative(port: int) -> int | None:
    return None if port < 0 else port


def _serve_parser(sub: argparse._SubParsersAction) -> ConfigArgs:
    s = sub.add_parser(
        "serve",
        help="run the voice server with the embedded models",
        description=(
            "Serve the voice WebSocket (ws://HOST:PORT/v1/voice, and on the same port the OpenAI "
            "Realtime-compatible /v1/realtime and the phone carriers' media streams /v1/twilio, "
            "/v1/telnyx and /v1/vonage). By default speech-to-text "
            "(faster-whisper tiny.en), text-to-speech (Piper en_US-joe-medium) and the LLM "
            "(SmolLM2-135M served by llama-cpp-python as a child process) come from PyPI packages "
            "installed with voiceorch: nothing is downloaded at run time. A second, HTTP port serves "
            "the browser page (http://HTTP_HOST:HTTP_PORT/), /healthz, /readyz and Prometheus "
            "/metrics. Logs are JSON lines on stderr; progress and the addresses to connect to are "
            "printed on stdout."
        ),
    )
    targets: ConfigArgs = []

    def option(group, flag: str, path: str, convert=None, **kwargs) -> None:
        """An option that sets the config field ``path`` (its default, unless given, that field's)."""
        if "default" not in kwargs and kwargs.get("action") not in ("store_true", "store_false"):
            kwargs["default"] = _config_default(path)
        action = group.add_argument(flag, **kwargs)
        targets.append((action.dest, path, convert))

    option(s, "--host", "host", help="address to listen on (default: %(default)s)")
    option(s, "--port", "port", type=int, help="voice WebSocket port; 0 picks a free one (default: %(default)s)")
    option(
        s,
        "--http-port",
        "http_port",
        _off_if_negative,
        type=int,
        help="HTTP port of the browser page, /healthz, /readyz and /metrics; 0 picks a free one, "
        "-1 turns it off (default: %(default)s)",
    )
    option(s, "--http-host", "http_host", help="address of the HTTP server (default: the same as --host)")
    option(
        s,
        "--page-voice-url",
        "page_voice_url",
        metavar="URL",
        help="where the browser page connects for voice: a path on the page's own origin, e.g. /v1/voice "
        "when a proxy serves the page and the voice endpoint on one port, or a full ws(s):// URL "
        "(default: --port on the page's host)",
    )
    llm = s.add_argument_group("LLM")
    help_url = (
        "use this OpenAI-compatible server instead of the embedded one: the base URL ending "
        "in /v1, e.g. http://127.0.0.1:8000/v1 (llama.cpp, vLLM, Ollama, OpenAI). Repeat it for "
        "failover: a request that fails before any text arrived goes to the next server"
    )
    llm_url = llm.add_argument("--llm-url", action="append", default=[], help=help_url)
    targets.append((llm_url.dest, "llm_url", lambda urls: urls[0] if urls else None))
    targets.append((llm_url.dest, "llm_fallback_urls", lambda urls: tuple(urls[1:])))
    option(
        llm,
        "--llm-api-key",
        "llm_api_key",
        default=os.environ.get("VOICEORCH_LLM_API_KEY"),
        help="API key for --llm-url (default: $VOICEORCH_LLM_API_KEY); never logged",
    )
    option(llm, "--llm-model", "llm_model", help="model name sent to the LLM server (default: %(default)s)")
    option(
        llm, "--llm-max-tokens", "llm_max_tokens", type=int, help="reply length limit in tokens (default: %(default)s)"
    )
    option(
        llm,
        "--llm-timeout",
        "llm_timeout_s",
        type=float,
        help="seconds allowed for the first text of a reply (the wait for a request slot included), and "
        "for any silence of the LLM server within it; past it the turn fails with llm_timeout "
        "(default: %(default)s)",
    )
    from .server.app import EMBEDDED_LLM_CONCURRENCY, REMOTE_LLM_CONCURRENCY

    option(
        llm,
        "--llm-concurrency",
        "llm_concurrency",
        type=_positive_int,
        metavar="N",
        help="LLM requests at a time from this process; more wait for a slot (within --llm-timeout). A "
        "request holds its slot while the reply is generated, not while it plays (default: "
        f"{EMBEDDED_LLM_CONCURRENCY} for the embedded LLM, which answers one request at a time; "
        f"{REMOTE_LLM_CONCURRENCY} with --llm-url)",
    )
    option(
        llm,
        "--llm-gguf",
        "llm_gguf",
        type=Path,
        help="GGUF file for the embedded LLM server (default: SmolLM2-135M-Instruct)",
    )
    option(
        llm,
        "--llm-log",
        "llm_log",
        type=Path,
        metavar="FILE",
        help="append the embedded LLM server's output to this file, rotated to FILE.1 past 10 MB (default: none; "
        "its last lines are logged if it fails)",
    )
    models = s.add_argument_group("speech models")
    option(
        models,
        "--stt-model",
        "stt_model",
        type=Path,
        help="faster-whisper (CTranslate2) model folder (default: embedded tiny.en)",
    )
    option(
        models,
        "--tts-voice",
        "tts_voice",
        type=Path,
        help="Piper voice .onnx file, with its .onnx.json beside it (default: embedded en_US-joe-medium)",
    )
    option(
        models,
        "--no-text-end-of-turn",
        "text_end_of_turn",
        dest="text_end_of_turn",
        action="store_false",
        help="do not load the text end-of-turn model (SmolLM2-135M in this process, ~120 MB resident) that "
        "semantic_vad asks whether the words so far are a finished sentence; without it the words' last "
        "word alone is checked (more cut-offs, less CPU per pause)",
    )
    option(
        models,
        "--stt-url",
        "remote_stt",
        type=_engine_url("stt"),
        metavar="URL",
        help="use this speech-to-text server instead of the embedded model: wyoming://HOST:PORT "
        "(wyoming-faster-whisper), wyoming+unix:///PATH, or an OpenAI-compatible http(s)://HOST:PORT/v1; "
        "engine options as ?name=value (docs/deploy.md, Remote engines)",
    )
    option(
        models,
        "--tts-url",
        "remote_tts",
        type=_engine_url("tts"),
        metavar="URL",
        help="use this text-to-speech server instead of the embedded voice: wyoming://HOST:PORT "
        "(wyoming-piper), wyoming+unix:///PATH, or an OpenAI-compatible http(s)://HOST:PORT/v1 (?voice=...)",
    )
    option(
        models,
        "--stt-api-key",
        "stt_api_key",
        default=os.environ.get("VOICEORCH_STT_API_KEY"),
        help="API key for an http(s) --stt-url (default: $VOICEORCH_STT_API_KEY); never logged",
    )
    option(
        models,
        "--tts-api-key",
        "tts_api_key",
        default=os.environ.get("VOICEORCH_TTS_API_KEY"),
        help="API key for an http(s) --tts-url (default: $VOICEORCH_TTS_API_KEY); never logged",
    )
    option(
        models,
        "--stt-timeout",
        "session.stt_timeout_s",
        type=float,
        help="seconds allowed for one transcription; past it the turn fails with stt_timeout (default: %(default)s)",
    )
    option(
        models,
        "--tts-timeout",
        "session.tts_timeout_s",
        type=float,
        help="seconds allowed to synthesize one sentence; past it the turn fails with tts_timeout "
        "(default: %(default)s)",
    )
    option(
        models,
        "--no-warm-up",
        "warm_up",
        dest="warm_up",
        action="store_false",
        help="skip running each model once at start-up",
    )
    option(
        models,
        "--fake-engines",
        "fake_engines",
        action="store_true",
        help="use zero-cost FAKE speech-to-text, LLM and text-to-speech instead of models (speech "
        "detection stays real; with --llm-url, the LLM is that server's): for load tests of the "
        "orchestration, and tests of an LLM server's tool calls",
    )
    tools = s.add_argument_group(
        "tools (MCP)",
        "Tools from Model Context Protocol servers, offered to the LLM beside the client's own and "
        "called by the server itself. --mcp and --mcp-url may be repeated and mixed; when two servers "
        "offer the same tool name, the one given first keeps it.",
    )
    mcp = tools.add_argument(
        "--mcp",
        dest="mcp_servers",
        action="append",
        default=[],
        type=_mcp_server("stdio"),
        metavar='"COMMAND ARGS..."',
        help="start this stdio MCP server (one quoted command line, split as a shell would; no shell runs) "
        "and keep it running: restarted with a backoff if it exits. It gets a minimal environment "
        "(HOME, PATH, ...); pass more with env NAME=VALUE COMMAND",
    )
    tools.add_argument(
        "--mcp-url",
        dest="mcp_servers",
        action="append",
        type=_mcp_server("http"),
        metavar="URL",
        help="use this streamable HTTP MCP server, e.g. http://127.0.0.1:8000/mcp",
    )
    targets.append((mcp.dest, "mcp_servers", tuple))
    option(
        tools,
        "--mcp-timeout",
        "mcp_timeout_s",
        type=float,
        metavar="SECONDS",
        help="time limit of one tool call; past it the call is cancelled and the LLM is told it failed "
        "(default: %(default)s)",
    )
    sess = s.add_argument_group("sessions")
    option(
        tools,
        "--tool-filler",
        "session.tool_filler",
        metavar="TEXT",
        help="words said while a reply's tool calls run, when it said nothing before them, e.g. "
        '"One moment." (default: none)',
    )
    option(sess, "--instructions", "session.instructions", help="system prompt of new sessions")
    option(
        sess,
        "--max-input-audio-ms",
        "session.max_input_audio_ms",
        type=int,
        help="audio one user turn may hold; more is dropped with an error (default: %(default)s)",
    )
    option(
        sess,
        "--max-audio-ahead-ms",
        "session.max_audio_ahead_ms",
        _none_if_zero,
        type=int,
        help="how far a client's audio may run ahead of four times real time (so a whole turn may be "
        "uploaded at once); beyond it frames are dropped with an error; 0 turns the bound off "
        "(default: %(default)s)",
    )
    option(
        sess,
        "--send-timeout",
        "session.send_timeout_s",
        type=float,
        help="seconds a client may take to read one message before it is disconnected (default: %(default)s)",
    )
    option(
        sess,
        "--idle-timeout",
        "session.idle_timeout_s",
        type=float,
        help="close a session whose client sends nothing this many seconds, no reply playing (default: %(default)s)",
    )
    option(
        sess,
        "--max-session",
        "session.max_session_s",
        type=float,
        help="close any session after this many seconds (default: %(default)s)",
    )
    access = s.add_argument_group("access")
    option(
        access,
        "--max-sessions",
        "access.max_sessions",
        type=int,
        help="sessions at once; more are closed at once with 1013, try again later (default: %(default)s)",
    )
    option(
        access,
        "--auth-token",
        "access.token",
        _none_if_zero,
        default=os.environ.get("VOICEORCH_AUTH_TOKEN"),
        help="require this token: Authorization: Bearer TOKEN, or ?token=TOKEN for browsers "
        "(default: $VOICEORCH_AUTH_TOKEN; none: no authentication); never logged",
    )
    option(
        access,
        "--allowed-origin",
        "access.allowed_origins",
        frozenset,
        action="append",
        default=[],
        help="accept browser connections only from this Origin, e.g. https://app.example.com (repeatable)",
    )
    phone = s.add_argument_group("phone calls (/v1/twilio, /v1/telnyx, /v1/vonage; docs/telephony.md)")
    option(
        phone,
        "--twilio-auth-token",
        "access.twilio_auth_token",
        _none_if_zero,
        metavar="TOKEN",
        default=os.environ.get("TWILIO_AUTH_TOKEN"),
        help="verify X-Twilio-Signature on /v1/twilio with this account auth token (401 without it, 403 when "
        "wrong), in place of --auth-token there (default: $TWILIO_AUTH_TOKEN; none: no check); never logged",
    )
    option(
        phone,
        "--public-url",
        "access.public_url",
        metavar="URL",
        help="the public base URL the carriers connect to, e.g. wss://voice.example.com (the <Stream url> "
        "without /v1/twilio), which Twilio's signature covers; needed with --twilio-auth-token",
    )
    option(
        phone,
        "--telnyx-stream-token",
        "access.telnyx_stream_token",
        _none_if_zero,
        metavar="TOKEN",
        default=os.environ.get("TELNYX_STREAM_AUTH_TOKEN"),
        help="require on /v1/telnyx the stream_auth_token given to Telnyx's Call Control, as Authorization: "
        "Bearer TOKEN, in place of --auth-token there (default: $TELNYX_STREAM_AUTH_TOKEN); never logged",
    )
    option(
        phone,
        "--call-instructions-param",
        "access.call_instruction_params",
        tuple,
        action="append",
        default=[],
        metavar="NAME",
        help="a call's start custom parameter (Vonage: header) of this name sets the session's instructions "
        "(repeatable, the first present wins; default: none, a call never sets them)",
    )
    option(
        sess,
        "--playback-lead-ms",
        "session.playback_lead_ms",
        type=int,
        help="reply audio is paced to real time, at most this far ahead of playback; phone calls always use "
        "200 ms (docs/telephony.md) (default: %(default)s)",
    )
    option(
        sess,
        "--speculate-after-ms",
        "session.speculate_after_ms",
        _none_if_zero,
        type=int,
        help="under server (or semantic) VAD, start answering once a pause has lasted this long, output held "
        "until the turn ends; 0 turns it off (default: %(default)s)",
    )
    option(
        sess,
        "--transcribe-pieces",
        "session.transcribe_pieces",
        action="store_true",
        help="under server or semantic VAD, transcribe the user's speech while they speak, in pieces cut at "
        "their pauses (sent as transcript.delta); only the last piece is left when the turn ends",
    )
    option(
        s,
        "--no-freeze-heap",
        "freeze_heap_when_ready",
        dest="freeze_heap_when_ready",
        action="store_false",
        help="leave the garbage collector as it is; by default, once ready, what start-up made (models, "
        "engines, modules) is moved out of later collections (gc.freeze), which shortens their pauses",
    )
    option(
        s,
        "--shutdown-grace",
        "shutdown_grace_s",
        type=float,
        help="on SIGINT/SIGTERM, stop accepting and give responses in progress this many seconds to "
        "finish before closing every session with 1001; a second signal stops at once (default: %(default)s)",
    )
    option(
        s,
        "--instance-id",
        "instance_id",
        default=f"{socket.gethostname()}-{os.getpid()}",
        help="name of this process among several behind a load balancer: every log line carries it as "
        '"instance", and /readyz answers it (default: HOSTNAME-PID)',
    )
    s.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    _workers_options(s)
    targets += [("listen_fd", "listen_fds", tuple), ("worker_table_fd", "worker_table_fd", None)]
    targets.append(("worker_index", "worker_index", None))
    return targets


def _default_workers() -> int:
    """``$VOICEORCH_WORKERS``, else the number of cores."""
    text = os.environ.get("VOICEORCH_WORKERS")
    if not text:
        return os.cpu_count() or 1
    try:
        return _positive_int(text)
    except (ValueError, argparse.ArgumentTypeError):
        raise SystemExit(f"voiceorch: VOICEORCH_WORKERS must be a whole number of at least 1, not {text!r}") from None


def _workers_options(s: argparse.ArgumentParser) -> None:
    """``--workers`` and the hidden options by which ``serve`` starts its worker processes
    (voiceorch/server/workers.py)."""
    s.add_argument(
        "--workers",
        type=_positive_int,
        default=_default_workers(),
        metavar="N",
        help="worker processes serving the one voice port, each with its own models, embedded LLM and "
        "--max-sessions; the HTTP port answers for all of them (default: $VOICEORCH_WORKERS, else the "
        "number of cores: %(default)s here). 1 runs everything in this one process",
    )
    s.add_argument("--listen-fd", type=int, action="append", default=[], help=argparse.SUPPRESS)
    s.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    s.add_argument("--worker-table-fd", type=int, help=argparse.SUPPRESS)


def server_config(args: argparse.Namespace, targets: ConfigArgs):
    """The :class:`~voiceorch.server.app.ServerConfig` that parsed ``serve`` arguments describe."""
    from .server.access import AccessPolicy
    from .server.app import ServerConfig

    fields: dict[str, dict[str, Any]] = {"": {}, "session": {}, "access": {}}
    for dest, path, convert in targets:
        section, _, name = path.rpartition(".")
        value = getattr(args, dest)
        fields[section][name] = convert(value) if convert is not None else value
    return ServerConfig(
        **fields[""], session=SessionSettings(**fields["session"]), access=AccessPolicy(**fields["access"])
    )


def _engine_url(kind: str):
    """An argparse type: a remote engine URL, parsed (a clear message if it is not one)."""

    def parse(url: str):
        from .engines.remote import parse_engine_url

        try:
            return parse_engine_url(kind, url)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def _mcp_server(kind: str):
    """An argparse type: an MCP server (``stdio``: a command line; ``http``: a URL)."""

    def parse(text: str):
        from .engines.mcp_tools import McpServerSpec

        try:
            return McpServerSpec.stdio(text) if kind == "stdio" else McpServerSpec.http(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def _talk_parser(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser(
        "talk",
        help="test client: send WAV files or text as turns, print the replies",
        description=(
            "Hold one conversation with a running server. Each WAV (any format; converted to 16 kHz "
            "mono s16le) is one spoken turn, sent in 20 ms frames and committed (push-to-talk), or "
            "with --vad streamed at real time and ended by the server's speech detection; each "
            "--text is a typed turn. WAV turns come first, then text turns, in the order given."
        ),
    )
    t.add_argument("wav", nargs="*", type=Path, help="audio files, one turn each")
    t.add_argument("--text", action="append", default=[], help="a typed turn (repeatable)")
    t.add_argument("--url", default="ws://127.0.0.1:8765/v1/voice", help="server URL (default: %(default)s)")
    t.add_argument("--out", type=Path, help="write the reply audio here (NAME_2.wav etc. for further turns)")
    t.add_argument("--instructions", help="system prompt for this session")
    t.add_argument("--realtime", action="store_true", help="send audio at real-time pace instead of at once")
    t.add_argument("--vad", action="store_true", help="let server VAD end each spoken turn (implies --realtime)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="voiceorch", description="Real-time voice orchestrator on Trio.")
    parser.add_argument("--version", action="version", version=f"voiceorch {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    targets = _serve_parser(sub)
    _talk_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "serve":
        for kind, model in (("stt", "--stt-model"), ("tts", "--tts-voice")):
            if getattr(args, f"{kind}_url") and getattr(args, model[2:].replace("-", "_")):
                parser.error(f"--{kind}-url and {model} exclude each other (a remote engine has no local model)")
        if args.twilio_auth_token and not args.public_url:
            parser.error("--twilio-auth-token needs --public-url: the URL Twilio connects to is what it signs")
        return _serve(args, targets, argv if argv is not None else sys.argv[1:])
    return _talk(args)


def _serve(args: argparse.Namespace, targets: ConfigArgs, argv: list[str]) -> int:
    from .server import workers
    from .server.app import run_until_signalled

    logs.configure(args.log_level)
    logs.instance_id_var.set(args.instance_id)  # trio.run's tasks inherit it
    config = server_config(args, targets)
    if args.worker_index is None and args.workers > 1:
        serve_argv = argv[argv.index("serve") + 1 :]
        code = trio.run(workers.run_workers, config, args.workers, serve_argv)
        print("[voiceorch] stopped", flush=True)
        return code
    if args.worker_index is not None:
        logs.worker_var.set(args.worker_index)
        trio.run(workers.run_worker, config)
        return 0
    trio.run(run_until_signalled, config)
    print("[voiceorch] stopped", flush=True)
    return 0


def _talk(args: argparse.Namespace) -> int:
    from .talk import TurnInput, talk

    turns = [TurnInput(wav=w) for w in args.wav] + [TurnInput(text=t) for t in args.text]
    if not turns:
        print("voiceorch talk: give at least one WAV file or --text", file=sys.stderr)
        return 2
    reports = trio.run(
        lambda: talk(
            args.url, turns, instructions=args.instructions, out_wav=args.out, vad=args.vad, realtime=args.realtime
        )
    )
    return 0 if all(r.done is not None and r.done.status == "completed" for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
