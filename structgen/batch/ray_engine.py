"""Scale-out on Ray Data: the same job, with batches mapped over workers that each hold a model.

The driver keeps the job's state exactly as the local engine does: it holds the output's lock,
plans the run against the records already there, and appends the records that stream back from
the workers, one batch at a time (Ray Data's streaming execution hands results over as they
finish). Workers never touch the output, so the driver's lock covers them; a crash of the driver
resumes the same way, and a crashed worker is restarted by Ray and its batch redone.

Each worker is an actor (one per ``workers``, one CPU each unless the cluster gives GPUs) that
loads the model once and runs ``process_batch``, the function the local engine runs.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, replace
from pathlib import Path

import structgen
from structgen.batch.job import BatchJob, PendingRow, error_record, process_batch
from structgen.errors import BatchInputError


class BatchWorker:
    """A Ray Data callable class: loads the model once, then turns batches of rows into records."""

    def __init__(self, job: dict):
        self.job = BatchJob(**job)
        self.model = structgen.load_model(self.job.model)
        self.output_type = self.job.output_type()

    def __call__(self, batch: dict) -> dict:
        rows = [PendingRow(id=str(row_id), line=int(line), sha256=str(sha256), prompt=str(prompt))
                for row_id, line, sha256, prompt in zip(batch["id"], batch["line"], batch["sha256"],
                                                        batch["prompt"])]
        records = process_batch(self.job, self.model, self.output_type, rows)
        return {"record": [json.dumps(record, ensure_ascii=False) for record in records]}


def run_on_ray(job: BatchJob, pending: list[PendingRow], written, *, address: str | None = None,
               workers: int = 2, gpus_per_worker: float = 0) -> None:
    """Run ``pending`` on a Ray cluster (``address``; None starts a local one) with ``workers``
    model replicas, calling ``written(records)`` for every batch that comes back."""
    try:
        import ray
    except ImportError:
        raise BatchInputError("--engine ray needs Ray: pip install 'structgen[ray]'") from None
    failed = [row for row in pending if row.error is not None]
    if failed:
        written([error_record(row, row.error) for row in failed])
    runnable = [{"id": row.id, "line": row.line, "sha256": row.sha256, "prompt": row.prompt}
                for row in pending if row.error is None]
    if not runnable:
        return
    job = _portable(job)
    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=False, include_dashboard=False,
                 runtime_env={"env_vars": {"PYTHONPATH": _python_path()}})
    dataset = ray.data.from_items(runnable, override_num_blocks=max(1, len(runnable) // job.batch_size))
    results = dataset.map_batches(
        BatchWorker, fn_constructor_kwargs={"job": asdict(job)}, batch_size=job.batch_size,
        concurrency=workers, num_cpus=1 if not gpus_per_worker else None, num_gpus=gpus_per_worker or None,
    )
    for batch in results.iter_batches(batch_size=None, batch_format="numpy"):
        written([json.loads(text) for text in batch["record"]])


def _portable(job: BatchJob) -> BatchJob:
    """Workers may start elsewhere: a schema file path must be absolute to be found there."""
    if ":" not in job.schema or Path(job.schema).exists():
        return replace(job, schema=str(Path(job.schema).resolve()))
    return job


def _python_path() -> str:
    """Workers import `module:Model` schemas from where the driver runs, as the driver does."""
    parts = [os.getcwd()] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return os.pathsep.join(parts)
