"""Dynamic batching: concurrent requests share forward passes of one model-owning thread.

An MLLM forward pass on a batch of 16 costs far less than 16 passes of one, so the server queues
the items of concurrent requests and lets a single worker thread encode them together. The worker
waits at most ``max_wait_s`` after the OLDEST queued request arrived (requests that queued while
the model was busy have already waited and go at once), takes whole requests up to
``max_batch_size`` items, encodes them in one call and hands each request its own rows. Owning
the model in one thread also means the model and its tokenizer are never used concurrently.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

EncodeFn = Callable[[list[Any]], np.ndarray]
CountFn = Callable[[list[Any]], Sequence[int]]


class QueueFull(Exception):
    """More items are waiting than the batcher accepts; the client should retry later."""


@dataclass(frozen=True)
class EncodeResult:
    """The rows of one request and the number of text tokens its inputs held."""

    embeddings: np.ndarray
    tokens: int


@dataclass
class _Job:
    items: list[Any]
    future: Future[EncodeResult]
    enqueued: float


@dataclass
class BatcherStats:
    """Counters for monitoring and benchmarks: how well requests were merged."""

    batches: int = 0
    requests: int = 0
    items: int = 0
    largest_batch: int = 0


class DynamicBatcher:
    """Merges concurrent ``submit`` calls into batched ``encode_fn`` calls on one worker thread.

    ``encode_fn(items)`` must return a float array with one row per item; ``count_fn(items)``
    (optional) returns the number of text tokens of each item for usage reporting. If a merged
    batch fails, each of its requests is retried alone, so one bad input fails only its own
    request.
    """

    def __init__(
        self,
        encode_fn: EncodeFn,
        *,
        max_batch_size: int,
        max_wait_s: float,
        max_queued_items: int,
        count_fn: CountFn | None = None,
    ) -> None:
        self._encode_fn = encode_fn
        self._count_fn = count_fn
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_queued_items = max_queued_items
        self.stats = BatcherStats()
        self._queue: deque[_Job] = deque()
        self._queued_items = 0
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def queued_items(self) -> int:
        return self._queued_items

    def start(self) -> None:
        if self.alive:
            return
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="unime-encoder", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = 30.0) -> None:
        """Finish the batch in progress, fail the queued requests, and end the worker."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        self._fail_queued(RuntimeError("the server is shutting down"))

    def submit(self, items: list[Any]) -> Future[EncodeResult]:
        """Queue one request's items; the future resolves to its own rows, in order."""
        if not items:
            raise ValueError("submit() needs at least one item")
        future: Future[EncodeResult] = Future()
        with self._cond:
            if self._stopping or not self.alive:
                raise RuntimeError("the encoder is not running")
            if self._queued_items + len(items) > self.max_queued_items:
                raise QueueFull(
                    f"{self._queued_items} items are already waiting (max_queued_items="
                    f"{self.max_queued_items}); retry later"
                )
            self._queue.append(_Job(list(items), future, time.monotonic()))
            self._queued_items += len(items)
            self._cond.notify_all()
        return future

    def _run(self) -> None:
        while True:
            jobs = self._next_batch()
            if jobs is None:
                return
            if jobs:
                self._process(jobs)

    def _next_batch(self) -> list[_Job] | None:
        """Block until a batch is due, then take whole requests up to ``max_batch_size`` items."""
        with self._cond:
            while not self._queue and not self._stopping:
                self._cond.wait()
            if self._stopping:
                return None
            deadline = self._queue[0].enqueued + self.max_wait_s
            while self._queued_items < self.max_batch_size and not self._stopping:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            jobs: list[_Job] = []
            taken = 0
            while self._queue:
                job = self._queue[0]
                # A request larger than a batch goes alone; encode_fn splits it into batches.
                if jobs and taken + len(job.items) > self.max_batch_size:
                    break
                self._queue.popleft()
                self._queued_items -= len(job.items)
                # False when the client went away (its future was cancelled): skip the work.
                if job.future.set_running_or_notify_cancel():
                    jobs.append(job)
                    taken += len(job.items)
            return jobs

    def _process(self, jobs: list[_Job]) -> None:
        items = [item for job in jobs for item in job.items]
        try:
            embeddings, counts = self._encode(items)
        except Exception as error:  # routed to the waiting requests, never kills the worker
            if len(jobs) == 1:
                jobs[0].future.set_exception(error)
                return
            logger.info("a batch of %d requests failed (%s); retrying each alone", len(jobs), error)
            for job in jobs:
                self._process([job])
            return
        self.stats.batches += 1
        self.stats.requests += len(jobs)
        self.stats.items += len(items)
        self.stats.largest_batch = max(self.stats.largest_batch, len(items))
        start = 0
        for job in jobs:
            stop = start + len(job.items)
            job.future.set_result(EncodeResult(embeddings[start:stop].copy(), int(sum(counts[start:stop]))))
            start = stop

    def _encode(self, items: list[Any]) -> tuple[np.ndarray, Sequence[int]]:
        embeddings = np.asarray(self._encode_fn(items), dtype=np.float32)
        if embeddings.ndim != 2 or embeddings.shape[0] != len(items):
            raise RuntimeError(
                f"the model returned an array of shape {embeddings.shape} for {len(items)} inputs"
            )
        counts = self._count_fn(items) if self._count_fn is not None else [0] * len(items)
        return embeddings, counts

    def _fail_queued(self, error: Exception) -> None:
        with self._cond:
            jobs = list(self._queue)
            self._queue.clear()
            self._queued_items = 0
        for job in jobs:
            if job.future.set_running_or_notify_cancel():
                job.future.set_exception(error)
