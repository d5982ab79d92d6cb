"""Continuous batching: one decoding thread owns the model; requests join and leave between steps.

A submitted ``Job`` waits in a bounded queue (full: ``ServerBusyError``, the server's 429). Before
every step the thread takes waiting jobs up to ``max_batch`` live rows, prefills them and merges
them into the running batch (``structgen.decoding.loop.Batch``), drops the rows whose job was
cancelled (a client that left), then decodes one token for every live row. Each row keeps its
own constraint, budget and sampling (temperature, top-p, its own seeded generator). Tokens and
the end of a row are handed to the job's callbacks on the decoding thread; the server passes
them on to its event loop.
"""

from __future__ import annotations

import collections
import logging
import threading
from dataclasses import dataclass, field
from typing import Callable

import torch

from structgen.backends.transformers import Model
from structgen.decoding.loop import Batch, Row, Sampling, sample
from structgen.errors import GenerationError, ServerBusyError

log = logging.getLogger("structgen.serve")
# Masks kept by the long-lived batch: one per constraint state, a vocabulary's bits each (48 KiB for
# SmolLM2), so about 100 MiB at most; unbounded, a server's memory would grow with every new state.
MASK_ENTRIES = 2048


def check_limits(max_batch: int, max_queue: int) -> None:
    """``GenerationError`` unless at least one row may decode and no fewer than none wait; checked
    before a server loads its model, so a bad flag costs no load."""
    if max_batch < 1 or max_queue < 0:
        raise GenerationError(f"max_batch (--max-batch) must be at least 1 and max_queue (--max-queue) "
                              f"at least 0, not {max_batch} and {max_queue}")


@dataclass(eq=False)
class Job:
    """One row to decode, how to sample it, and who to tell: ``on_token(token)`` for each token,
    then ``on_done(error)`` once (None: the row finished, its ``stop_reason`` says how)."""

    row: Row
    sampling: Sampling
    on_token: Callable[[int], None]
    on_done: Callable[[BaseException | None], None]
    cancelled: threading.Event = field(default_factory=threading.Event)
    generator: torch.Generator | None = None
    done: bool = False

    def cancel(self) -> None:
        """Take the row out before the next step (safe from any thread, any number of times)."""
        self.cancelled.set()

    def finish(self, error: BaseException | None = None) -> None:
        """Call ``on_done`` (once, whatever happens)."""
        if not self.done:
            self.done = True
            self.on_done(error)


class Scheduler:
    """Runs jobs on ``model``, at most ``max_batch`` at a time, ``max_queue`` more waiting."""

    def __init__(self, model: Model, *, max_batch: int = 8, max_queue: int = 64, merge: bool = True):
        check_limits(max_batch, max_queue)
        self.model, self.max_batch, self.max_queue, self.merge = model, max_batch, max_queue, merge
        self.stats = collections.Counter()  # submitted, refused, admitted, finished, cancelled, failed, steps
        self.live = 0
        self._waiting: collections.deque[Job] = collections.deque()
        self._jobs: dict[int, Job] = {}  # id(row) -> its job, for the rows in the batch
        self._wake = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="structgen-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Finish the current step, then end every job still here as cancelled."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join()

    def submit(self, job: Job) -> None:
        """Queue ``job``; ``ServerBusyError`` when ``max_queue`` jobs are already waiting."""
        if not job.sampling.greedy and job.sampling.seed is not None:
            job.generator = torch.Generator(device=self.model.hf_model.device).manual_seed(job.sampling.seed)
        with self._wake:
            if self._stopping:
                raise ServerBusyError("the server is shutting down")
            if len(self._waiting) >= self.max_queue:
                self.stats["refused"] += 1
                raise ServerBusyError(f"{self.live} requests are decoding (--max-batch {self.max_batch}) "
                                      f"and {len(self._waiting)} are waiting (--max-queue {self.max_queue})")
            self.stats["submitted"] += 1
            self._waiting.append(job)
            self._wake.notify()

    def _run(self) -> None:
        batch = Batch(self.model, merge=self.merge, mask_entries=MASK_ENTRIES)
        with torch.inference_mode():
            while True:
                with self._wake:
                    while not self._waiting and not batch.rows and not self._stopping:
                        self._wake.wait()
                    if self._stopping:
                        break
                    room = self.max_batch - len(batch.rows)
                    newcomers = [self._waiting.popleft() for _ in range(min(room, len(self._waiting)))]
                try:
                    self._decode(batch, newcomers)
                except Exception as error:  # the model failed (out of memory, ...): end the batch's jobs
                    log.exception("decoding step failed; the requests in the batch get an error")
                    self.stats["failed"] += len(batch.rows)
                    for job in [*self._jobs.values(), *newcomers]:
                        job.finish(error)
                    self._jobs.clear()
                    batch = Batch(self.model, merge=self.merge, mask_entries=MASK_ENTRIES)
                self.live = len(batch.rows)
        with self._wake:
            waiting, self._waiting = list(self._waiting), collections.deque()
        for job in [*self._jobs.values(), *waiting]:
            job.row.stop_reason = "cancelled"
            job.finish()
        self._jobs.clear()

    def _decode(self, batch: Batch, newcomers: list[Job]) -> None:
        admitted = []
        for job in newcomers:
            if job.cancelled.is_set():
                job.row.stop_reason = "cancelled"
                self.stats["cancelled"] += 1
                job.finish()
            else:
                admitted.append(job)
        if admitted:
            batch.admit([job.row for job in admitted])
            for job in admitted:
                self._jobs[id(job.row)] = job
            self.stats["admitted"] += len(admitted)
        gone = [row for row in batch.rows if self._jobs[id(row)].cancelled.is_set()]
        if gone:
            batch.drop(gone)
            for row in gone:
                row.stop_reason = "cancelled"
                self.stats["cancelled"] += 1
                self._end(row)
        if not batch.rows:
            return
        self.stats["max_live"] = max(self.stats["max_live"], len(batch.rows))
        finished = batch.step(self._choose, self._token)
        self.stats["steps"] += 1
        for row in finished:
            self.stats["finished"] += 1
            self._end(row)

    def _choose(self, logits: torch.Tensor, rows: list[Row]) -> list[int]:
        """Each row's token under its own sampling: greedy rows by one argmax, the others alone."""
        chosen = logits.argmax(dim=-1).tolist()
        for position, row in enumerate(rows):
            job = self._jobs[id(row)]
            if not job.sampling.greedy:
                chosen[position] = int(sample(logits[position:position + 1], job.sampling, job.generator))
        return chosen

    def _token(self, row: Row, token: int) -> None:
        self._jobs[id(row)].on_token(token)

    def _end(self, row: Row) -> None:
        self._jobs.pop(id(row)).finish()
