"""The voice socket shared by the worker processes of ``serve --workers N``, as a Trio listener.

The parent binds and listens; every worker inherits the socket and accepts on it. The kernel
keeps one accept queue for all of them and each connection goes to the worker whose ``accept``
comes first. Which one that is, is steered through a small table in shared memory
(:class:`WorkerTable`: each worker's session count, or -1 while it takes none: starting,
draining, gone, or its engines cannot serve), so that the sessions are spread like a least-connections balancer would:

- a worker with more sessions than the least busy worker waits :data:`BALANCE_S` before it
  tries, so the least busy one takes the connection;
- a full worker (``--max-sessions``) does not take connections while another worker has room;
  only when every worker is full does one of them take it, to refuse it with 1013 as a single
  process does.

A connection another worker took first is simply gone (``EAGAIN``): wait again. Nothing queued
is lost when one worker stops accepting (drain, crash): the queue belongs to the socket, which
the others still hold.
"""

from __future__ import annotations

import errno
import mmap
import os
import socket
import struct
import tempfile
from collections.abc import Callable

import trio

#: How long a worker with more sessions than the least busy one waits before taking a connection.
BALANCE_S = 0.01
#: How often a full worker looks again whether another one has room.
FULL_RECHECK_S = 0.05
#: A worker that takes no connections (starting, draining, gone).
NOT_ACCEPTING = -1

#: accept() errors that concern one connection only (as trio.SocketListener ignores them).
_IGNORED = {errno.EPERM, errno.ECONNABORTED, errno.EPROTO, errno.ENETDOWN, errno.EHOSTUNREACH}
_SLOT = struct.Struct("=i")


class WorkerTable:
    """Each worker's session count (or :data:`NOT_ACCEPTING`), one 32-bit slot per worker in
    shared memory: the parent creates it (:meth:`create`), each worker writes its own slot and
    reads the others'. A slot is written and read whole (aligned 4 bytes), so no lock is needed;
    a value read may be a moment old, which only makes one accept less well placed."""

    def __init__(self, fd: int, index: int | None = None) -> None:
        self.fd = fd
        self.count = os.fstat(fd).st_size // _SLOT.size
        self._map = mmap.mmap(fd, self.count * _SLOT.size)
        self.index = index  # this worker's slot (1-based); None in the parent

    @classmethod
    def create(cls, count: int) -> WorkerTable:
        """A new table of ``count`` slots, all :data:`NOT_ACCEPTING` (its fd is inheritable)."""
        if hasattr(os, "memfd_create"):
            fd = os.memfd_create("voiceorch-workers", 0)
        else:  # (no memfd, e.g. macOS: an unlinked temporary file does the same)
            with tempfile.TemporaryFile() as file:
                fd = os.dup(file.fileno())
        os.ftruncate(fd, count * _SLOT.size)
        table = cls(fd)
        for index in range(1, count + 1):
            table.set(index, NOT_ACCEPTING)
        return table

    def set(self, index: int, value: int) -> None:
        _SLOT.pack_into(self._map, (index - 1) * _SLOT.size, value)

    def get(self, index: int) -> int:
        return _SLOT.unpack_from(self._map, (index - 1) * _SLOT.size)[0]

    def publish(self, value: int) -> None:
        """This worker's own slot. Not a checkpoint."""
        assert self.index is not None
        self.set(self.index, value)

    def others(self) -> list[int]:
        """The session counts of the other workers that take connections now."""
        found = [self.get(index) for index in range(1, self.count + 1) if index != self.index]
        return [value for value in found if value != NOT_ACCEPTING]


class SharedSocketListener(trio.abc.Listener[trio.SocketStream]):
    """Accepts on a listening socket that other processes accept on too.

    ``load()`` (not a checkpoint) gives this worker's (sessions, max_sessions); with a ``table``
    the accepts are steered as the module says, without one it accepts whenever it can."""

    def __init__(
        self,
        sock: socket.socket,
        *,
        load: Callable[[], tuple[int, int]] = lambda: (0, 1),
        table: WorkerTable | None = None,
    ) -> None:
        sock.setblocking(False)
        self.socket = sock
        self._load = load
        self._table = table

    @classmethod
    def from_fd(cls, fd: int, **kwargs) -> SharedSocketListener:
        """Take over the inherited listening socket ``fd`` (family and type read from it)."""
        return cls(socket.socket(fileno=fd), **kwargs)

    async def accept(self) -> trio.SocketStream:
        """The next connection this process wins. Cancellable (nothing is accepted then)."""
        while True:
            await trio.lowlevel.wait_readable(self.socket)
            sessions, most = self._load()
            others = self._table.others() if self._table is not None else []
            if sessions >= most and any(count < most for count in others):
                await trio.sleep(FULL_RECHECK_S)  # another worker has room: it takes it
                continue
            if sessions < most and others and sessions > min(others):
                await trio.sleep(BALANCE_S)  # a less busy worker goes first
            try:
                conn, _ = self.socket.accept()
            except BlockingIOError:
                continue  # another worker took it
            except OSError as exc:
                if exc.errno == errno.EBADF:
                    raise trio.ClosedResourceError("the listener is closed") from None
                if exc.errno in _IGNORED:
                    continue
                raise
            return trio.SocketStream(trio.socket.from_stdlib_socket(conn))

    async def aclose(self) -> None:
        """Close this process's copy of the socket (the others keep accepting on theirs)."""
        if self.socket.fileno() != -1:
            trio.lowlevel.notify_closing(self.socket)
            self.socket.close()
        await trio.lowlevel.checkpoint()
