"""Speech probabilities off the event loop, all sessions' chunks in one thread hop.

:func:`probabilities` is what a session calls for the VAD chunks of each audio frame. A stream
with a ``probabilities(chunks)`` method (Silero: blocking ONNX work) goes through the
process-wide :class:`VADBatcher`: one task that, whenever requests are waiting, takes all of
them and runs them in ONE ``trio.to_thread.run_sync`` call (Silero's streams in one ONNX call
per chunk step, each row with its own state: ``SileroVAD.probabilities_many``), then hands each
caller its probabilities. A stream with only ``probability(chunk)`` (the fakes: pure Python, cheap) is
judged inline on the caller's thread, so tests under Trio's MockClock stay deterministic.

Each stream has at most one request in flight (its session waits for the answer before the
next frame), so its chunks are judged in order and its decisions are exactly those of judging
chunk by chunk. A caller cancelled before its request was taken withdraws it; one cancelled
after leaves the batch to finish for the others (its stream's state moves on, unused). One
stream's failure is its caller's error alone.
"""

from __future__ import annotations

import math
from typing import Protocol

import attrs
import trio
import trio.lowlevel

#: The shortest time between two batches. A thread hop costs about as much CPU as judging a few
#: chunks (trio's thread hand-off and its wake-up of the event loop, and the GIL changing hands),
#: so batches are gathered for up to this long: with many sessions, each hop carries many chunks.
#: A chunk is 32 ms of audio; a request waits at most this long beyond the batch before it.
BATCH_INTERVAL_S = 0.01


class BatchableStream(Protocol):
    def probabilities(self, chunks: list[bytes]) -> list[float]: ...


@attrs.define(eq=False)
class _Request:
    stream: BatchableStream
    chunks: list[bytes]
    done: trio.Event = attrs.field(factory=trio.Event)
    result: list[float] | None = None
    error: BaseException | None = None


def _judge_all(batch: list[_Request]) -> None:
    """In the worker thread: each request's probabilities, or its error. The streams of a model
    that judges many streams at once (``stream.model.probabilities_many``: Silero) go to it
    together, one ONNX call per chunk step for all of them; the others one by one."""
    by_model: dict[int, tuple[object, list[_Request]]] = {}
    for request in batch:
        model = getattr(request.stream, "model", None)
        if model is not None and getattr(model, "batch_session", None) is not None:
            by_model.setdefault(id(model), (model, []))[1].append(request)
            continue
        try:
            request.result = request.stream.probabilities(request.chunks)
        except Exception as exc:  # one stream's fault is its caller's alone
            request.error = exc
    for model, requests in by_model.values():
        answers = model.probabilities_many([(r.stream, r.chunks) for r in requests])  # type: ignore[attr-defined]
        for request, answer in zip(requests, answers):
            if isinstance(answer, Exception):
                request.error = answer
            else:
                request.result = answer


@attrs.define(eq=False)
class VADBatcher:
    """One per Trio run (see :func:`batcher`); its task is a system task of that run."""

    #: The shortest time between two thread hops (a request waits at most this long for its batch).
    interval_s: float = BATCH_INTERVAL_S
    _pending: list[_Request] = attrs.field(factory=list)
    _wake: trio.Event = attrs.field(factory=trio.Event)
    #: Thread calls made and requests judged (a batch is one call): see :meth:`statistics`.
    _batches: int = 0
    _requests: int = 0

    async def probabilities(self, stream: BatchableStream, chunks: list[bytes]) -> list[float]:
        """Each chunk's speech probability, judged in the next batch. Cancellable: a request
        not yet taken is withdrawn; one taken is finished for the others and its answer dropped.
        Raises what the stream raised."""
        if not chunks:
            await trio.lowlevel.checkpoint()
            return []
        request = _Request(stream, chunks)
        self._pending.append(request)
        self._wake.set()
        try:
            await request.done.wait()
        except BaseException:
            if request in self._pending:
                self._pending.remove(request)
            raise
        if request.error is not None:
            raise request.error
        assert request.result is not None
        return request.result

    async def run(self) -> None:
        """The batching loop (never returns; cancelled with its run)."""
        started = -math.inf
        while True:
            await self._wake.wait()
            # At most one thread hop per interval: the requests of that long go together.
            await trio.sleep_until(started + self.interval_s)
            started = trio.current_time()
            self._wake = trio.Event()
            batch, self._pending = self._pending, []
            if not batch:
                continue
            try:
                # Not abandoned on cancel: the thread moves the streams' state on.
                await trio.to_thread.run_sync(_judge_all, batch)
            finally:
                self._batches += 1
                self._requests += len(batch)
                for request in batch:
                    if request.result is None and request.error is None:
                        request.error = trio.BrokenResourceError("the VAD batcher stopped")
                    request.done.set()

    def statistics(self) -> dict[str, int]:
        return {"batches": self._batches, "requests": self._requests, "pending": len(self._pending)}


_BATCHER: trio.lowlevel.RunVar[VADBatcher] = trio.lowlevel.RunVar("voiceorch_vad_batcher")


def batcher() -> VADBatcher:
    """This Trio run's batcher, started (as a system task) on first use. Not a checkpoint."""
    try:
        return _BATCHER.get()
    except LookupError:
        found = VADBatcher()
        _BATCHER.set(found)
        trio.lowlevel.spawn_system_task(found.run, name="voiceorch.vad_batcher")
        return found


async def probabilities(stream: object, chunks: list[bytes]) -> list[float]:
    """Each chunk's speech probability from ``stream``: batched off the event loop when the
    stream can (``probabilities``), else inline (``probability``, cheap streams such as the
    fakes). A checkpoint either way only when batched. Cancellable (see :class:`VADBatcher`)."""
    if hasattr(stream, "probabilities"):
        return await batcher().probabilities(stream, chunks)  # type: ignore[arg-type]
    return [stream.probability(chunk) for chunk in chunks]  # type: ignore[attr-defined]
