"""Engine readiness (voiceorch/server/readiness.py) and a worker stepping aside from the shared
socket while its engines cannot serve (voice_ws.serve_voice with a WorkerTable)."""

from __future__ import annotations

import socket

import attrs
import pytest
import trio
import trio_websocket

from session_harness import fake_engines
from voiceorch.engines.fakes import FakeLLM
from voiceorch.server.readiness import READY_TIMEOUT_S, engine_problem, watch_engines
from voiceorch.server.shared_listener import NOT_ACCEPTING, WorkerTable
from voiceorch.server.voice_ws import serve_voice
from voiceorch.session import SessionSettings


@attrs.define
class FakeLLMWithHealth(FakeLLM):
    """A FAKE LLM whose health check answers ``problem`` (or raises it, or hangs)."""

    problem: str | None = None
    raises: bool = False
    hangs: bool = False

    async def check_ready(self) -> str | None:
        if self.hangs:
            await trio.sleep_forever()
        if self.raises:
            raise RuntimeError("boom")
        return self.problem


async def test_the_engines_problem_is_the_first_reason_a_check_gives(autojump_clock):
    assert await engine_problem(fake_engines()) is None
    assert await engine_problem(fake_engines(llm=FakeLLMWithHealth(problem="the LLM server is down"))) == (
        "the LLM server is down"
    )
    assert "the LLM check failed" in await engine_problem(fake_engines(llm=FakeLLMWithHealth(raises=True)))
    assert await engine_problem(fake_engines(llm=FakeLLMWithHealth(hangs=True))) == (
        f"the LLM did not answer within {READY_TIMEOUT_S:g} s"
    )


async def test_watch_engines_reports_each_check(autojump_clock):
    llm = FakeLLMWithHealth(problem="down")
    reports: list[str | None] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch_engines, fake_engines(llm=llm), reports.append, 2.0)
        await trio.sleep(1.0)
        llm.problem = None
        await trio.sleep(2.0)
        nursery.cancel_scope.cancel()
    assert reports == ["down", None]


@pytest.fixture
def shared_socket():
    sock = socket.create_server(("127.0.0.1", 0))
    yield sock
    sock.close()


async def test_a_worker_whose_engines_cannot_serve_takes_no_connection_while_another_can(shared_socket):
    table = WorkerTable.create(2)
    table.set(1, 0)  # the other worker: no sessions, room for more
    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            lambda task_status: serve_voice(
                fake_engines(),
                SessionSettings(),
                host="127.0.0.1",
                port=0,
                listen_fds=(shared_socket.dup().detach(),),
                worker_table=WorkerTable(table.fd, 0),
                task_status=task_status,
            )
        )
        assert table.get(0) == 0  # taking sessions, none yet
        server.engines_status("the LLM server is down")
        assert table.get(0) == NOT_ACCEPTING
        # A client now waits in the queue for the other worker (which never takes it here).
        connected = trio.Event()

        async def client() -> None:
            url = f"ws://127.0.0.1:{shared_socket.getsockname()[1]}/v1/voice"
            async with trio_websocket.open_websocket_url(url) as ws:
                await ws.get_message()  # session.created
                connected.set()
                await trio.sleep_forever()

        nursery.start_soon(client)
        await trio.sleep(0.5)
        assert not connected.is_set() and not server.sessions
        server.engines_status(None)
        assert table.get(0) == 0
        with trio.fail_after(10):  # it can serve again: it takes the waiting client
            await connected.wait()
        nursery.cancel_scope.cancel()
