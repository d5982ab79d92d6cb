"""A batch job: one output type over many JSONL rows, resumable, on one machine or on Ray.

Data path: input JSONL -> rows (line number, id, prompt, or a row error) -> batches ->
``generate_batch_with_details`` -> one record per row -> append-only output JSONL. The same
``process_batch`` runs locally and inside each Ray worker, so both engines write identical records.
"""

from __future__ import annotations

import importlib
import json
import string
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from structgen.batch.io import InputRow, OutputFile, read_rows
from structgen.errors import BatchInputError, StructgenError


@dataclass(frozen=True)
class BatchJob:
    """What to run: ``schema`` is "pkg.module:Name" or a path to a JSON-schema file."""

    schema: str
    prompt_field: str | None = "text"
    prompt_template: str | None = None
    id_field: str | None = None
    model: str | None = None
    batch_size: int = 8
    max_tokens: int = 512
    whitespace: str = "compact"

    def output_type(self) -> Any:
        return load_output_type(self.schema)

    def prompt_of(self, row: InputRow) -> str:
        """The row's prompt (the field, or the template filled from the row); row errors typed."""
        if self.prompt_template is not None:
            try:
                prompt = self.prompt_template.format_map(row.data)
            except KeyError as error:
                raise BatchInputError(f"the prompt template needs field {error.args[0]!r}, "
                                      "which this row lacks", row.line) from None
        else:
            if self.prompt_field not in row.data:
                raise BatchInputError(f"no field {self.prompt_field!r}", row.line)
            prompt = row.data[self.prompt_field]
            if not isinstance(prompt, str):
                raise BatchInputError(f"field {self.prompt_field!r} is a "
                                      f"{type(prompt).__name__}, not a string", row.line)
        if not prompt.strip():
            raise BatchInputError("the prompt is empty", row.line)
        return prompt

    def id_of(self, row: InputRow) -> str:
        if self.id_field is None:
            return f"line-{row.line}"
        if row.data is None or self.id_field not in row.data:
            raise BatchInputError(f"no id field {self.id_field!r}", row.line)
        return str(row.data[self.id_field])

    def check(self) -> None:
        """Refuse a job that cannot run before any row is read."""
        if self.batch_size < 1:
            raise BatchInputError(f"--batch-size must be at least 1, not {self.batch_size}")
        if self.max_tokens < 1:
            raise BatchInputError(f"--max-tokens must be at least 1, not {self.max_tokens}")
        if self.prompt_template is not None:
            fields = [name for _, name, _, _ in string.Formatter().parse(self.prompt_template) if name]
            if not fields:
                raise BatchInputError("--prompt-template has no {field} in it")


def load_output_type(reference: str) -> Any:
    """"pkg.module:Name" imports ``Name``; anything else is read as a JSON-schema file."""
    if ":" in reference and not Path(reference).exists():
        module_name, _, attribute = reference.partition(":")
        sys.path.insert(0, str(Path.cwd()))  # let `module:Model` find a module next to the data
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            raise BatchInputError(f"--schema {reference!r}: cannot import {module_name!r}: {error}") from None
        finally:
            sys.path.pop(0)
        try:
            return getattr(module, attribute)
        except AttributeError:
            raise BatchInputError(f"--schema {reference!r}: module {module_name!r} has no "
                                  f"{attribute!r}") from None
    try:
        return json.loads(Path(reference).read_text(encoding="utf-8"))
    except OSError as error:
        raise BatchInputError(f"--schema {reference!r}: cannot read it: {error.strerror}") from None
    except json.JSONDecodeError as error:
        raise BatchInputError(f"--schema {reference!r}: not JSON: {error.msg} at line "
                              f"{error.lineno}") from None


@dataclass
class PendingRow:
    """A row still to run: its id and line, and its prompt or the error that stops it."""

    id: str
    line: int
    prompt: str | None = None
    error: StructgenError | None = None


def pending_rows(job: BatchJob, rows: Iterator[InputRow], done: set[str]) -> Iterator[PendingRow]:
    """Rows whose id is not in the output yet; malformed rows come through as errors to record."""
    seen: set[str] = set()
    for row in rows:
        try:
            if row.error is not None:
                raise BatchInputError(row.error, row.line)
            row_id = job.id_of(row)
        except BatchInputError as error:
            row_id = f"line-{row.line}"
            if row_id not in done and row_id not in seen:
                seen.add(row_id)
                yield PendingRow(row_id, row.line, error=error)
            continue
        if row_id in done:
            continue
        if row_id in seen:
            yield PendingRow(f"line-{row.line}", row.line,
                             error=BatchInputError(f"duplicate id {row_id!r}", row.line))
            continue
        seen.add(row_id)
        try:
            yield PendingRow(row_id, row.line, prompt=job.prompt_of(row))
        except BatchInputError as error:
            yield PendingRow(row_id, row.line, error=error)


def error_record(row: PendingRow, error: BaseException) -> dict:
    return {"id": row.id, "line": row.line, "ok": False,
            "error": {"type": type(error).__name__, "message": str(error)}}


def process_batch(job: BatchJob, model, output_type, rows: list[PendingRow]) -> list[dict]:
    """Decode the runnable rows of one batch; one record per row, in the rows' order."""
    from pydantic_core import to_jsonable_python

    import structgen

    runnable = [row for row in rows if row.error is None]
    started = time.perf_counter()
    results = structgen.generate_batch_with_details(
        output_type, [row.prompt for row in runnable], model=model, batch_size=job.batch_size,
        max_tokens=job.max_tokens, whitespace=job.whitespace) if runnable else []
    seconds = time.perf_counter() - started
    by_id = dict(zip((row.id for row in runnable), results))
    records = []
    for row in rows:
        result = by_id.get(row.id, row.error)
        if isinstance(result, BaseException):
            records.append(error_record(row, result))
        else:
            records.append({"id": row.id, "line": row.line, "ok": True,
                            "result": to_jsonable_python(result.value),
                            "tokens": result.completion_tokens, "stop": result.stop_reason,
                            "batch_seconds": round(seconds, 3)})
    return records


@dataclass
class Summary:
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    tokens: int = 0
    seconds: float = 0.0
    failed_in_output: int = 0  # failures in the whole output file, earlier runs included
    errors: dict[str, int] = field(default_factory=dict)

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
        lines = [f"rows ok: {self.ok}, failed: {self.failed}, skipped (already done): {self.skipped}",
                 f"time: {self.seconds:.1f} s, {rate:.2f} rows/s, "
                 f"{self.tokens / self.seconds if self.seconds else 0:.1f} tokens/s"]
        if self.errors:
            lines.append("errors: " + ", ".join(f"{k} {v}" for k, v in sorted(self.errors.items())))
        return "\n".join(lines)


def run_job(job: BatchJob, input_path: str, output_path: str, *, engine: str = "local",
            address: str | None = None, workers: int = 2, progress: bool = True) -> Summary:
    """Run (or resume) ``job`` from ``input_path`` into ``output_path``; returns the summary."""
    job.check()
    output_type = job.output_type()
    output = OutputFile(output_path)
    rows = list(read_rows(input_path))
    pending = list(pending_rows(job, iter(rows), output.done))
    summary = Summary(skipped=len(rows) - len(pending))
    bar = _progress(len(pending), progress)
    started = time.perf_counter()

    def written(records: list[dict]) -> None:
        output.append(records)
        summary.add(records)
        elapsed = time.perf_counter() - started
        bar.update(len(records))
        bar.set_postfix_str(f"{summary.tokens / elapsed:.1f} tok/s, {summary.failed} failed")

    if engine == "local":
        _run_local(job, output_type, pending, written)
    elif engine == "ray":
        from structgen.batch.ray_engine import run_on_ray

        run_on_ray(job, pending, written, address=address, workers=workers)
    else:
        raise BatchInputError(f"--engine must be 'local' or 'ray', not {engine!r}")
    bar.close()
    summary.seconds = time.perf_counter() - started
    summary.failed_in_output = output.failed
    return summary


def _run_local(job: BatchJob, output_type, pending: list[PendingRow], written) -> None:
    import structgen

    model = structgen.load_model(job.model)
    structgen.compile_constraint(output_type, model.tokenizer_info, whitespace=job.whitespace)
    for start in range(0, len(pending), job.batch_size):
        written(process_batch(job, model, output_type, pending[start:start + job.batch_size]))


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="row", disable=not enabled, dynamic_ncols=True,
                desc="structgen batch")
