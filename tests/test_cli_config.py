"""``voiceorch serve``'s options: their defaults are the config classes' defaults, and every
option lands in its ServerConfig field (no process is started)."""

from __future__ import annotations

import argparse

import pytest

from voiceorch import cli
from voiceorch.server.access import AccessPolicy
from voiceorch.server.app import ServerConfig
from voiceorch.session import SessionSettings


def parse(*argv: str) -> tuple[argparse.Namespace, cli.ConfigArgs]:
    parser = argparse.ArgumentParser(prog="voiceorch")
    sub = parser.add_subparsers(dest="command", required=True)
    targets = cli._serve_parser(sub)
    return parser.parse_args(["serve", *argv]), targets


@pytest.fixture(autouse=True)
def _no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "VOICEORCH_AUTH_TOKEN",
        "VOICEORCH_LLM_API_KEY",
        "VOICEORCH_STT_API_KEY",
        "VOICEORCH_TTS_API_KEY",
        "TWILIO_AUTH_TOKEN",
        "TELNYX_STREAM_AUTH_TOKEN",
    ):
        monkeypatch.delenv(name, raising=False)


def test_the_parsers_defaults_are_the_config_classes_defaults() -> None:
    args, targets = parse()
    # Every field but the process's own name comes out as the classes' default.
    assert cli.server_config(args, targets) == ServerConfig(instance_id=args.instance_id)


def test_every_config_field_has_an_option_or_is_left_at_its_default_on_purpose() -> None:
    _args, targets = parse()
    paths = {path for _dest, path, _convert in targets}
    import attrs

    server_fields = {f.name for f in attrs.fields(ServerConfig)} - {"session", "access"}
    assert server_fields <= paths
    assert {f"access.{f.name}" for f in attrs.fields(AccessPolicy)} <= paths
    session_paths = {p.removeprefix("session.") for p in paths if p.startswith("session.")}
    assert session_paths <= {f.name for f in attrs.fields(SessionSettings)}


def test_the_phone_options_land_in_the_access_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "from-env")
    args, targets = parse(
        "--public-url", "wss://voice.example.com", "--telnyx-stream-token", "tx",
        "--call-instructions-param", "persona", "--call-instructions-param", "instructions",
    )  # fmt: skip
    assert cli.server_config(args, targets).access == AccessPolicy(
        twilio_auth_token="from-env",
        public_url="wss://voice.example.com",
        telnyx_stream_token="tx",
        call_instruction_params=("persona", "instructions"),
    )
    with pytest.raises(SystemExit):  # a signature check needs the URL Twilio signs
        cli.main(["serve", "--twilio-auth-token", "t"])


def test_options_land_in_their_fields() -> None:
    args, targets = parse(
        "--port", "9000", "--http-port", "-1", "--llm-url", "http://a/v1", "--llm-url", "http://b/v1",
        "--llm-concurrency", "3", "--llm-timeout", "4", "--max-audio-ahead-ms", "0", "--speculate-after-ms", "0",
        "--max-sessions", "5", "--allowed-origin", "https://x.example", "--auth-token", "t0k", "--no-warm-up",
        "--stt-timeout", "7", "--no-text-end-of-turn",
    )  # fmt: skip
    config = cli.server_config(args, targets)
    assert config.port == 9000 and config.http_port is None
    assert config.llm_url == "http://a/v1" and config.llm_fallback_urls == ("http://b/v1",)
    assert config.llm_concurrency == 3 and config.llm_timeout_s == 4
    assert config.session.max_audio_ahead_ms is None and config.session.speculate_after_ms is None
    assert config.session.stt_timeout_s == 7
    assert config.access == AccessPolicy(token="t0k", allowed_origins=frozenset({"https://x.example"}), max_sessions=5)
    assert config.warm_up is False
    assert config.text_end_of_turn is False and ServerConfig().text_end_of_turn is True


def test_mcp_servers_land_in_the_order_given() -> None:
    from voiceorch.engines.mcp_tools import McpServerSpec

    args, targets = parse(
        "--mcp", "npx -y @modelcontextprotocol/server-everything", "--mcp-url", "http://127.0.0.1:8000/mcp",
        "--mcp", "uvx 'mcp-server-time' --local-timezone=Europe/Paris", "--mcp-timeout", "4.5",
    )  # fmt: skip
    config = cli.server_config(args, targets)
    assert config.mcp_servers == (
        McpServerSpec(command=("npx", "-y", "@modelcontextprotocol/server-everything")),
        McpServerSpec(url="http://127.0.0.1:8000/mcp"),
        McpServerSpec(command=("uvx", "mcp-server-time", "--local-timezone=Europe/Paris")),
    )
    assert config.mcp_timeout_s == 4.5
    assert config.mcp_servers[0].label == "npx -y @modelcontextprotocol/server-everything"


def test_an_mcp_urls_credentials_stay_out_of_logs_and_metrics() -> None:
    from voiceorch.engines.mcp_tools import McpServerSpec

    spec = McpServerSpec.http("https://user:s3cret@tools.example:8443/mcp?api_key=k3y")
    assert spec.label == "https://tools.example:8443/mcp"
    assert "s3cret" not in spec.describe() and "k3y" not in spec.describe()


@pytest.mark.parametrize(("flag", "value"), [("--mcp-url", "ftp://x/mcp"), ("--mcp", "  "), ("--mcp", "a 'b")])
def test_a_bad_mcp_server_is_a_clear_error(flag: str, value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse(flag, value)
    err = capsys.readouterr().err
    assert f"argument {flag}" in err and "MCP server" in err


def test_llm_concurrency_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse("--llm-concurrency", "0")
    assert "at least 1" in capsys.readouterr().err


def test_help_shows_the_classes_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    defaults = ServerConfig()
    for shown in (
        f"(default: {defaults.port})",
        f"(default: {defaults.http_port})",
        f"(default: {defaults.llm_max_tokens})",
        f"(default: {defaults.llm_timeout_s})",
        f"(default: {defaults.access.max_sessions})",
        f"(default: {defaults.mcp_timeout_s})",
        f"(default: {defaults.session.idle_timeout_s})",
        "(default: 1 for the embedded LLM, which answers one request at a time; 8 with --llm-url)",
    ):
        assert shown in text


def test_workers_default_to_the_environment_then_the_number_of_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOICEORCH_WORKERS", "3")
    assert parse()[0].workers == 3
    monkeypatch.delenv("VOICEORCH_WORKERS")
    monkeypatch.setattr(cli.os, "cpu_count", lambda: 5)
    assert parse()[0].workers == 5
    assert parse("--workers", "1")[0].workers == 1
    monkeypatch.setenv("VOICEORCH_WORKERS", "0")
    with pytest.raises(SystemExit, match="VOICEORCH_WORKERS"):
        parse()
