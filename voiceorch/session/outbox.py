"""The session writer's inbox: two lanes, control before data.

- **Control** (:meth:`Outbox.send_control`): what the reader produces in answer to the client
  (``input_audio.speech_started``/``stopped``, ``input_audio.committed``, ``error``,
  ``session.updated``, a transport's :class:`~voiceorch.session.transport.TransportReply`,
  the drain's markers). A bounded FIFO: queueing is immediate while there is room, so the
  reader goes on reading while the writer is busy with a slow client.
- **Data** (:meth:`Outbox.send`, the interface a turn sees): a turn's events and audio frames,
  a rendezvous (``send`` returns once the writer has taken the item), so each turn's events
  keep their order relative to its audio, reply audio stays paced by the writer, and a
  cancelled turn hands nothing more to the writer (``send`` either delivers or not).

The writer (:meth:`Outbox.receive`) always takes a queued control item before a data item.
When the control lane is full (a client that does not read, ``CONTROL_QUEUE`` items behind),
:meth:`send_control` waits for room: backpressure on the reader, bounded by the writer's send
timeout, which then closes the session (1008).
"""

from __future__ import annotations

import attrs
import trio

#: Control items that may wait for the writer before the reader waits with them.
CONTROL_QUEUE = 64


@attrs.frozen
class OutboxStatistics:
    control_queued: int
    data_senders_waiting: int


class Outbox:
    def __init__(self, control_queue: int = CONTROL_QUEUE) -> None:
        self._control_send, self._control_recv = trio.open_memory_channel[object](control_queue)
        self._data_send, self._data_recv = trio.open_memory_channel[object](0)
        self._wake = trio.Event()  # set when something was offered on either lane

    async def send_control(self, item: object) -> None:
        """Queue a control item for the writer, ahead of any data item. A checkpoint; it
        waits only when ``control_queue`` items are already queued. Raises
        ``trio.BrokenResourceError`` once the writer has gone. Atomic with respect to
        cancellation (the item is queued or not)."""
        self._wake.set()
        await self._control_send.send(item)

    async def send(self, item: object) -> None:
        """Hand a data item (a turn's event or audio frame) to the writer; returns once it took
        it. Raises ``trio.BrokenResourceError`` once the writer has gone. Atomic with respect to
        cancellation: a cancelled send has handed nothing over."""
        self._wake.set()  # (the send below parks without yielding first, unless cancelled)
        await self._data_send.send(item)

    async def receive(self) -> object:
        """The writer's next item: a control item if any is queued, else the oldest data item;
        waits for one. Raises ``trio.ClosedResourceError`` after :meth:`close`. Cancellable."""
        while True:
            for lane in (self._control_recv, self._data_recv):
                try:
                    item = lane.receive_nowait()
                except trio.WouldBlock:
                    continue
                await trio.lowlevel.cancel_shielded_checkpoint()
                return item
            await self._wake.wait()
            self._wake = trio.Event()

    def close(self) -> list[object]:
        """The writer is gone: every waiting and later sender gets ``trio.BrokenResourceError``.
        Returns the control items still queued (never to be written). Not a checkpoint."""
        left = []
        while True:
            try:
                left.append(self._control_recv.receive_nowait())
            except trio.WouldBlock:
                break
        self._control_recv.close()
        self._data_recv.close()
        return left

    def statistics(self) -> OutboxStatistics:
        return OutboxStatistics(
            control_queued=self._control_send.statistics().current_buffer_used,
            data_senders_waiting=self._data_send.statistics().tasks_waiting_send,
        )
