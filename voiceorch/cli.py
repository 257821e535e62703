"""The ``voiceorch`` command: ``serve`` runs the server, ``talk`` is a test client."""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path

import trio

from . import __version__, logs
from .session import SessionSettings


def _serve_parser(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser(
        "serve",
        help="run the voice server with the embedded models",
        description=(
            "Serve the voice WebSocket (ws://HOST:PORT/v1/voice, and the OpenAI Realtime-compatible "
            "ws://HOST:PORT/v1/realtime on the same port). By default speech-to-text "
            "(faster-whisper tiny.en), text-to-speech (Piper en_US-joe-medium) and the LLM "
            "(SmolLM2-135M served by llama-cpp-python as a child process) come from PyPI packages "
            "installed with voiceorch: nothing is downloaded at run time. A second, HTTP port serves "
            "the browser page (http://HTTP_HOST:HTTP_PORT/), /healthz, /readyz and Prometheus "
            "/metrics. Logs are JSON lines on stderr; progress and the addresses to connect to are "
            "printed on stdout."
        ),
    )
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    s.add_argument("--port", type=int, default=8765, help="voice WebSocket port; 0 picks a free one (default: %(default)s)")
    s.add_argument(
        "--http-port", type=int, default=8766,
        help="HTTP port of the browser page, /healthz, /readyz and /metrics; 0 picks a free one, "
        "-1 turns it off (default: %(default)s)",
    )
    s.add_argument("--http-host", help="address of the HTTP server (default: the same as --host)")
    s.add_argument(
        "--page-voice-url", metavar="URL",
        help="where the browser page connects for voice: a path on the page's own origin, e.g. /v1/voice "
        "when a proxy serves the page and the voice endpoint on one port, or a full ws(s):// URL "
        "(default: --port on the page's host)",
    )
    llm = s.add_argument_group("LLM")
    llm.add_argument(
        "--llm-url", action="append", default=[],
        help="use this OpenAI-compatible server instead of the embedded one: the base URL ending "
        "in /v1, e.g. http://127.0.0.1:8000/v1 (llama.cpp, vLLM, Ollama, OpenAI). Repeat it for "
        "failover: a request that fails before any text arrived goes to the next server",
    )
    llm.add_argument(
        "--llm-api-key",
        default=os.environ.get("VOICEORCH_LLM_API_KEY"),
        help="API key for --llm-url (default: $VOICEORCH_LLM_API_KEY); never logged",
    )
    llm.add_argument("--llm-model", default="default", help="model name sent to the LLM server (default: %(default)s)")
    llm.add_argument("--llm-max-tokens", type=int, default=120, help="reply length limit in tokens (default: %(default)s)")
    llm.add_argument(
        "--llm-timeout", type=float, default=15.0,
        help="seconds allowed for the first text of a reply, and for any silence of the LLM server within "
        "it; past it the turn fails with llm_timeout (default: %(default)s)",
    )
    llm.add_argument("--llm-gguf", type=Path, help="GGUF file for the embedded LLM server (default: SmolLM2-135M-Instruct)")
    llm.add_argument("--llm-log", type=Path, help="file for the embedded LLM server's output (default: a temporary file)")
    models = s.add_argument_group("speech models")
    models.add_argument("--stt-model", type=Path, help="faster-whisper (CTranslate2) model folder (default: embedded tiny.en)")
    models.add_argument("--tts-voice", type=Path, help="Piper voice .onnx file, with its .onnx.json beside it (default: embedded en_US-joe-medium)")
    models.add_argument(
        "--stt-url", type=_engine_url("stt"), metavar="URL",
        help="use this speech-to-text server instead of the embedded model: wyoming://HOST:PORT "
        "(wyoming-faster-whisper), wyoming+unix:///PATH, or an OpenAI-compatible http(s)://HOST:PORT/v1; "
        "engine options as ?name=value (docs/deploy.md, Remote engines)",
    )
    models.add_argument(
        "--tts-url", type=_engine_url("tts"), metavar="URL",
        help="use this text-to-speech server instead of the embedded voice: wyoming://HOST:PORT "
        "(wyoming-piper), wyoming+unix:///PATH, or an OpenAI-compatible http(s)://HOST:PORT/v1 (?voice=...)",
    )
    models.add_argument(
        "--stt-api-key", default=os.environ.get("VOICEORCH_STT_API_KEY"),
        help="API key for an http(s) --stt-url (default: $VOICEORCH_STT_API_KEY); never logged",
    )
    models.add_argument(
        "--tts-api-key", default=os.environ.get("VOICEORCH_TTS_API_KEY"),
        help="API key for an http(s) --tts-url (default: $VOICEORCH_TTS_API_KEY); never logged",
    )
    models.add_argument(
        "--stt-timeout", type=float, default=SessionSettings().stt_timeout_s,
        help="seconds allowed for one transcription; past it the turn fails with stt_timeout (default: %(default)s)",
    )
    models.add_argument(
        "--tts-timeout", type=float, default=SessionSettings().tts_timeout_s,
        help="seconds allowed to synthesize one sentence; past it the turn fails with tts_timeout "
        "(default: %(default)s)",
    )
    models.add_argument("--no-warm-up", dest="warm_up", action="store_false", help="skip running each model once at start-up")
    models.add_argument(
        "--fake-engines",
        action="store_true",
        help="use zero-cost FAKE speech-to-text, LLM and text-to-speech instead of models (speech "
        "detection stays real): for load tests of the orchestration only",
    )
    sess = s.add_argument_group("sessions")
    defaults = SessionSettings()
    sess.add_argument("--instructions", default=defaults.instructions, help="system prompt of new sessions")
    sess.add_argument(
        "--max-input-audio-ms", type=int, default=defaults.max_input_audio_ms,
        help="audio one user turn may hold; more is dropped with an error (default: %(default)s)",
    )
    sess.add_argument(
        "--max-audio-ahead-ms", type=int, default=defaults.max_audio_ahead_ms,
        help="how far a client's audio may run ahead of four times real time (so a whole turn may be "
        "uploaded at once); beyond it frames are dropped with an error; 0 turns the bound off "
        "(default: %(default)s)",
    )
    sess.add_argument(
        "--send-timeout", type=float, default=defaults.send_timeout_s,
        help="seconds a client may take to read one message before it is disconnected (default: %(default)s)",
    )
    sess.add_argument(
        "--idle-timeout", type=float, default=defaults.idle_timeout_s,
        help="close a session whose client sends nothing this many seconds, no reply playing (default: %(default)s)",
    )
    sess.add_argument(
        "--max-session", type=float, default=defaults.max_session_s,
        help="close any session after this many seconds (default: %(default)s)",
    )
    access = s.add_argument_group("access")
    access.add_argument(
        "--max-sessions", type=int, default=32,
        help="sessions at once; more are closed at once with 1013, try again later (default: %(default)s)",
    )
    access.add_argument(
        "--auth-token", default=os.environ.get("VOICEORCH_AUTH_TOKEN"),
        help="require this token: Authorization: Bearer TOKEN, or ?token=TOKEN for browsers "
        "(default: $VOICEORCH_AUTH_TOKEN; none: no authentication); never logged",
    )
    access.add_argument(
        "--allowed-origin", action="append", default=[],
        help="accept browser connections only from this Origin, e.g. https://app.example.com (repeatable)",
    )
    sess.add_argument(
        "--playback-lead-ms", type=int, default=defaults.playback_lead_ms,
        help="reply audio is paced to real time, at most this far ahead of playback (default: %(default)s)",
    )
    sess.add_argument(
        "--speculate-after-ms", type=int, default=defaults.speculate_after_ms,
        help="under server VAD, start answering once a pause has lasted this long, output held until "
        "the silence window ends the turn; 0 turns it off (default: %(default)s)",
    )
    s.add_argument(
        "--shutdown-grace", type=float, default=10.0,
        help="on SIGINT/SIGTERM, stop accepting and give responses in progress this many seconds to "
        "finish before closing every session with 1001; a second signal stops at once (default: %(default)s)",
    )
    s.add_argument(
        "--instance-id", default=f"{socket.gethostname()}-{os.getpid()}",
        help="name of this process among several behind a load balancer: every log line carries it as "
        "\"instance\", and /readyz answers it (default: HOSTNAME-PID)",
    )
    s.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def _engine_url(kind: str):
    """An argparse type: a remote engine URL, parsed (a clear message if it is not one)."""

    def parse(url: str):
        from .engines.remote import parse_engine_url

        try:
            return parse_engine_url(kind, url)
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
    _serve_parser(sub)
    _talk_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "serve":
        for kind, model in (("stt", "--stt-model"), ("tts", "--tts-voice")):
            if getattr(args, f"{kind}_url") and getattr(args, model[2:].replace("-", "_")):
                parser.error(f"--{kind}-url and {model} exclude each other (a remote engine has no local model)")
        return _serve(args)
    return _talk(args)


def _serve(args: argparse.Namespace) -> int:
    from .server.access import AccessPolicy
    from .server.app import ServerConfig, run_until_signalled

    logs.configure(args.log_level)
    logs.instance_id_var.set(args.instance_id)  # trio.run's tasks inherit it
    config = ServerConfig(
        host=args.host,
        port=args.port,
        http_host=args.http_host,
        http_port=None if args.http_port < 0 else args.http_port,
        llm_url=args.llm_url[0] if args.llm_url else None,
        llm_fallback_urls=tuple(args.llm_url[1:]),
        llm_api_key=args.llm_api_key,
        llm_model=args.llm_model,
        llm_max_tokens=args.llm_max_tokens,
        llm_timeout_s=args.llm_timeout,
        llm_gguf=args.llm_gguf,
        llm_log=args.llm_log,
        stt_model=args.stt_model,
        tts_voice=args.tts_voice,
        remote_stt=args.stt_url,
        remote_tts=args.tts_url,
        stt_api_key=args.stt_api_key,
        tts_api_key=args.tts_api_key,
        warm_up=args.warm_up,
        fake_engines=args.fake_engines,
        shutdown_grace_s=args.shutdown_grace,
        instance_id=args.instance_id,
        page_voice_url=args.page_voice_url,
        session=SessionSettings(
            stt_timeout_s=args.stt_timeout,
            tts_timeout_s=args.tts_timeout,
            instructions=args.instructions,
            max_input_audio_ms=args.max_input_audio_ms,
            max_audio_ahead_ms=args.max_audio_ahead_ms or None,
            send_timeout_s=args.send_timeout,
            playback_lead_ms=args.playback_lead_ms,
            idle_timeout_s=args.idle_timeout,
            max_session_s=args.max_session,
            speculate_after_ms=args.speculate_after_ms or None,
        ),
        access=AccessPolicy(
            token=args.auth_token or None,
            allowed_origins=frozenset(args.allowed_origin),
            max_sessions=args.max_sessions,
        ),
    )
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
