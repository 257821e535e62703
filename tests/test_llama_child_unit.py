"""Supervision of the llama.cpp child with a FAKE server module (tests/fake_llama_child.py):
its output bounded, a fresh port per start. Real child processes, no model (a second or two)."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest
import trio

from voiceorch.engines.llama_server import ChildOutput, LlamaServerConfig, run_llama_server, supervise_llama_server

TIMEOUT = 30
TESTS = Path(__file__).parent


@pytest.fixture
def fake_child(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LlamaServerConfig:
    monkeypatch.setenv("PYTHONPATH", str(TESTS))
    model = tmp_path / "model.gguf"
    model.write_bytes(b"not a model")
    return LlamaServerConfig(model_path=model, server_module="fake_llama_child", start_timeout=20)


def test_child_output_is_rotated_at_its_bound_and_its_tail_kept(tmp_path: Path) -> None:
    path = tmp_path / "llama.log"
    output = ChildOutput(path, max_bytes=1000)
    for i in range(100):
        output.write(f"line {i:03d} ".encode() * 5 + b"\n")
    output.close()
    assert path.stat().st_size <= 1000
    assert path.with_name("llama.log.1").stat().st_size <= 1000
    assert "line 099" in path.read_text()
    assert output.tail().endswith("line 099 line 099 line 099 line 099 line 099")


async def test_a_chatty_child_leaves_a_bounded_log(fake_child: LlamaServerConfig, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("FAKE_LLAMA_OUTPUT_BYTES", "300000")
    log_path = tmp_path / "llama.log"
    config = LlamaServerConfig(**{**_fields(fake_child), "log_path": log_path, "log_max_bytes": 50_000})
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            await nursery.start(run_llama_server, config)
            while "fake llama: ready" not in (log_path.read_text() if log_path.exists() else ""):
                await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
    assert log_path.stat().st_size <= 50_000
    assert log_path.with_name("llama.log.1").stat().st_size <= 50_000


async def test_the_tail_of_a_crashed_childs_output_is_in_the_error(fake_child: LlamaServerConfig, monkeypatch) -> None:
    monkeypatch.setenv("FAKE_LLAMA_EXIT_AFTER", "0.2")
    with trio.fail_after(TIMEOUT), pytest.raises(RuntimeError) as info:
        await run_llama_server(fake_child)
    assert "with code 3" in str(info.value)
    assert "fake llama: ready" in str(info.value)


async def test_a_restarted_child_gets_a_fresh_port_when_its_old_one_was_taken(
    fake_child: LlamaServerConfig, monkeypatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("FAKE_LLAMA_EXIT_AFTER", "0.5")
    monkeypatch.setenv("FAKE_LLAMA_CRASH_ONCE", str(tmp_path / "crashed"))
    moved: list[str] = []
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # (the old port's TIME_WAITs)
    try:
        with trio.fail_after(TIMEOUT):
            async with trio.open_nursery() as nursery:
                first_url = await nursery.start(
                    lambda task_status: supervise_llama_server(
                        fake_child, restart_backoff=0.2, on_restart=moved.append, task_status=task_status
                    )
                )
                port = int(first_url.rsplit(":", 1)[1].split("/")[0])
                while True:  # the child dies; someone else takes its port
                    try:
                        squatter.bind(("127.0.0.1", port))
                        break
                    except OSError:
                        await trio.sleep(0.05)
                squatter.listen()
                while not moved:
                    await trio.sleep(0.05)
                assert moved[0] != first_url
                async with httpx.AsyncClient(trust_env=False) as client:
                    assert (await client.get(f"{moved[0]}/models")).status_code == 200
                nursery.cancel_scope.cancel()
    finally:
        squatter.close()


def _fields(config: LlamaServerConfig) -> dict:
    import attrs

    return attrs.asdict(config, recurse=False)
