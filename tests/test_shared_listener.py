"""The voice socket shared by workers (voiceorch/server/shared_listener.py), in one process: two
listeners on copies of one listening socket stand for two workers, with a real WorkerTable."""

from __future__ import annotations

import os
import socket

import trio
import trio.testing

from voiceorch.server.shared_listener import NOT_ACCEPTING, SharedSocketListener, WorkerTable


def two_workers(loads: list[tuple[int, int]]):
    """A listening socket on loopback, a table, and one listener per worker (loads: sessions, max)."""
    sock = socket.create_server(("127.0.0.1", 0))
    table = WorkerTable.create(len(loads))
    listeners = []
    for index, load in enumerate(loads, start=1):
        table.set(index, load[0])
        worker_table = WorkerTable(table.fd, index)
        listeners.append(SharedSocketListener(sock.dup(), load=lambda load=load: load, table=worker_table))
    return sock, table, listeners


async def winner(listeners: list[SharedSocketListener], port: int) -> int:
    """Which listener (1-based) accepts the next connection to ``port``."""
    won: list[int] = []
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:

            async def accept(index: int, listener: SharedSocketListener) -> None:
                stream = await listener.accept()
                won.append(index)
                await stream.aclose()
                nursery.cancel_scope.cancel()

            for index, listener in enumerate(listeners, start=1):
                nursery.start_soon(accept, index, listener)
            await trio.testing.wait_all_tasks_blocked()
            client = await trio.open_tcp_stream("127.0.0.1", port)
            await client.aclose()
    assert len(won) == 1
    return won[0]


# Without the steering either listener may win (Trio does not promise an order): ten in a row
# to the one expected cannot happen by chance (1 in 1024).


async def test_a_full_worker_leaves_the_connection_to_one_with_room():
    sock, _table, listeners = two_workers([(2, 2), (1, 2)])
    assert [await winner(listeners, sock.getsockname()[1]) for _ in range(10)] == [2] * 10


async def test_the_least_busy_worker_takes_the_connection():
    sock, _table, listeners = two_workers([(5, 32), (1, 32)])
    assert [await winner(listeners, sock.getsockname()[1]) for _ in range(10)] == [2] * 10


async def test_when_every_worker_is_full_one_takes_it_to_refuse_it():
    sock, _table, listeners = two_workers([(2, 2), (2, 2)])
    assert await winner(listeners, sock.getsockname()[1]) in (1, 2)


async def test_a_worker_that_takes_no_connections_does_not_hold_back_a_full_one():
    sock, table, listeners = two_workers([(2, 2), (0, 2)])
    table.set(2, NOT_ACCEPTING)  # worker 2 is draining (or gone): worker 1, full, takes it to refuse it
    assert await winner(listeners[:1], sock.getsockname()[1]) == 1


def test_the_table_is_shared_through_its_file_descriptor():
    table = WorkerTable.create(3)
    assert [table.get(i) for i in (1, 2, 3)] == [NOT_ACCEPTING] * 3
    mine = WorkerTable(os.dup(table.fd), 2)
    mine.publish(7)
    table.set(3, 4)
    assert table.get(2) == 7 and mine.others() == [4]
