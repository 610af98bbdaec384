"""Congestion: a deployment at its concurrency bound queues requests, up to a bound, then answers 429.

A deployment takes ``bound × replicas usable now`` requests at once (at least one replica's worth,
so requests waiting for an on-demand start count too). The bound per replica is what its engine runs
at once: ``--max-num-seqs`` (vLLM) or ``--max-running-requests`` (SGLang) when the deployment's engine
flags set it (``llmdock up MODEL -- --max-num-seqs 64``; read by
:func:`llmdock.engines.base.engine_concurrency`), else ``serve --replica-concurrency``
(default 1024, vLLM's largest default ``max_num_seqs``, the one it picks on H100/H200-class GPUs; an
engine queues what is beyond its batch itself, so the bound only keeps a flood from piling up there).

Beyond it a request waits, first come first served, while fewer than ``queue_length`` wait for that
deployment (``serve --queue-length``, default 1024) and for at most ``queue_wait_s`` (``serve
--queue-wait``, default 30 s). A full queue, or a wait that ran out, is a 429 ``model_congested``
with ``Retry-After: 1``.

Example::

    gate = Gate()
    await gate.enter("qwen", capacity=2, queue_length=8, wait_s=30)   # returns when a slot is free
    ...
    gate.leave(capacity=2)
"""

from __future__ import annotations

import asyncio
from collections import deque

from llmdock.gateway.wire import RateLimited


class Congested(RateLimited):
    code = "model_congested"

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Gate:
    """One deployment's requests at its engines (``active``) and the queue in front of them."""

    __slots__ = ("active", "waiters")

    def __init__(self) -> None:
        self.active = 0
        self.waiters: deque[asyncio.Future[None]] = deque()

    async def enter(self, name: str, capacity: int, queue_length: int, wait_s: float) -> None:
        """Take a slot, waiting in line for one; :class:`Congested` when the line is full or too slow."""
        self.wake(capacity)  # the bound grew (a replica turned healthy): let those in line in first
        if self.active < capacity and not self.waiters:
            self.active += 1
            return
        if len(self.waiters) >= queue_length:
            raise Congested(
                f"{name!r} is at its bound of {capacity} requests at once and {len(self.waiters)} wait "
                "already; retry shortly, or add replicas (`llmdock up ... --replicas N`)"
            )
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters.append(fut)
        try:
            await asyncio.wait_for(fut, wait_s)
        except asyncio.TimeoutError:
            if fut.done() and not fut.cancelled():
                return  # handed a slot as the wait ran out: take it
            raise Congested(
                f"{name!r} is at its bound of {capacity} requests at once and no slot freed within "
                f"{wait_s:g}s; retry shortly, or add replicas (`llmdock up ... --replicas N`)"
            ) from None
        except BaseException:
            if fut.done() and not fut.cancelled():
                self.leave(capacity)  # handed a slot, then the client left: pass it on
            raise
        finally:
            if fut in self.waiters:
                self.waiters.remove(fut)

    def leave(self, capacity: int) -> None:
        """Give a slot back: to the first in line (it becomes theirs) or to the pool."""
        self.active -= 1
        self.wake(capacity)

    def wake(self, capacity: int) -> None:
        while self.waiters and self.active < capacity:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                self.active += 1
