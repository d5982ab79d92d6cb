"""A whole run of a batch job: lock the output, plan against it, decode what is left, summarise.

Everything that can stop the job (options, schema, input, output and its lock) is checked before
the model loads, and the model loads only when some row has to be decoded.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import structgen
from structgen.batch.io import OutputFile, read_rows
from structgen.batch.job import BatchJob, PendingRow, Plan, error_record, plan, process_batch
from structgen.batch.ray_engine import run_on_ray
from structgen.errors import BatchInputError


@dataclass
class Summary:
    ok: int = 0
    failed: int = 0
    skipped: int = 0  # rows already done (ok) in the output
    kept_failed: int = 0  # rows whose failure from an earlier run stands
    changed: int = 0
    unchecked: int = 0
    duplicates: int = 0
    stale: int = 0
    tokens: int = 0
    seconds: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, work: Plan) -> Summary:
        return cls(skipped=work.done, kept_failed=work.kept_failed, changed=work.changed,
                   unchecked=work.unchecked, duplicates=work.duplicates, stale=work.stale)

    @property
    def exit_status(self) -> int:
        """0 every input row has an ok record, 1 some row's record is a failure."""
        return 1 if self.failed or self.kept_failed else 0

    def add(self, records: list[dict]) -> None:
        for record in records:
            if record["ok"]:
                self.ok += 1
                self.tokens += record["tokens"]
            else:
                self.failed += 1
                kind = record["error"]["type"]
                self.errors[kind] = self.errors.get(kind, 0) + 1

    def render(self) -> str:
        rows = self.ok + self.failed
        rate = rows / self.seconds if self.seconds else 0.0
        lines = [f"rows ok: {self.ok}, failed: {self.failed}, skipped (already done): {self.skipped}, "
                 f"failed in earlier runs and kept: {self.kept_failed}"
                 + (" (--retry-failed runs them again)" if self.kept_failed else "")]
        if self.changed:
            lines.append(f"rows changed since their result was written: {self.changed} "
                         "(recorded as failed; --retry-failed runs them)")
        if self.unchecked:
            lines.append(f"rows reused on records without a fingerprint (older structgen): "
                         f"{self.unchecked} (--rerun-changed runs them again)")
        if self.duplicates:
            lines.append(f"second records of one row removed from the output: {self.duplicates}")
        if self.stale:
            lines.append(f"records for rows no longer in the input (kept): {self.stale}")
        lines.append(f"time: {self.seconds:.1f} s, {rate:.2f} rows/s, "
                     f"{self.tokens / self.seconds if self.seconds else 0:.1f} tokens/s")
        if self.errors:
            lines.append("errors: " + ", ".join(f"{k} {v}" for k, v in sorted(self.errors.items())))
        return "\n".join(lines)


def run_job(job: BatchJob, input_path: str, output_path: str, *, engine: str = "local",
            address: str | None = None, workers: int = 2, progress: bool = True,
            retry_failed: bool = False, rerun_changed: bool = False) -> Summary:
    """Run (or resume) ``job`` from ``input_path`` into ``output_path``, holding the output's lock
    throughout; returns the summary. Everything that can stop the job is checked before the
    model loads, and the model loads only if some row needs decoding."""
    job.check()
    if engine not in ("local", "ray"):
        raise BatchInputError(f"--engine must be 'local' or 'ray', not {engine!r}")
    if engine == "ray" and not (job.model is None or isinstance(job.model, str)):
        raise BatchInputError("the Ray engine loads the model on each worker: give the job a model "
                              "name or path, not a loaded model")
    output_type = job.output_type()
    rows = list(read_rows(input_path))
    check_distinct(input_path, output_path)
    with OutputFile.open_locked(output_path) as output:
        work = plan(job, rows, output, retry_failed=retry_failed, rerun_changed=rerun_changed)
        output.rewrite(work.drop)
        summary = Summary.of(work)
        bar = _progress(len(work.pending), progress)
        started = time.perf_counter()
        decoding_since = [started]  # rates count from when decoding starts, not from model loading

        def ready() -> None:
            decoding_since[0] = time.perf_counter()
            bar.reset(total=len(work.pending))

        def written(records: list[dict]) -> None:
            output.append(records)
            summary.add(records)
            elapsed = time.perf_counter() - decoding_since[0]
            bar.update(len(records))
            bar.set_postfix_str(f"{summary.tokens / elapsed:.1f} tok/s, {summary.failed} failed")

        if all(row.error is not None for row in work.pending):
            written([error_record(row, row.error) for row in work.pending])
        elif engine == "local":
            _run_local(job, output_type, work.pending, written, ready)
        else:
            run_on_ray(job, work.pending, written, address=address, workers=workers)
        bar.close()
        summary.seconds = time.perf_counter() - started
    return summary


def check_distinct(input_path: str, output_path: str) -> None:
    """Appending records to the input would feed them back in as rows."""
    if os.path.exists(output_path) and os.path.samefile(input_path, output_path):
        raise BatchInputError(f"--output {output_path!r} is the input file")


def _run_local(job: BatchJob, output_type, pending: list[PendingRow], written, ready) -> None:
    model = structgen.load_model(job.model)
    structgen.compile_constraint(output_type, model.tokenizer_info, whitespace=job.whitespace)
    ready()
    for start in range(0, len(pending), job.batch_size):
        written(process_batch(job, model, output_type, pending[start:start + job.batch_size]))


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    # smoothing=0: the rate is rows so far over time so far, shown from the first finished batch
    # (batches finish together, so a moving average of per-update rates swings wildly)
    return tqdm(total=total, unit="row", disable=not enabled, dynamic_ncols=True,
                desc="structgen batch", smoothing=0)
