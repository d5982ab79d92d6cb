"""A batch job: one output type over many JSONL rows, resumable, on one machine or on Ray.

Data path: input JSONL -> rows (line number, fingerprint, id, prompt, or a row error) -> a plan
against the locked output (what is done, what failed, what changed) -> batches ->
``generate_batch_with_details`` -> one record per row -> append-only output JSONL. The same
``process_batch`` runs locally and inside each Ray worker, so both engines write identical records;
``structgen.batch.runner`` drives a whole run.
"""

from __future__ import annotations

import importlib
import json
import string
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structgen
from structgen.batch.io import InputRow, OutputFile
from structgen.errors import BatchInputError, StructgenError
from structgen.schema import DEFAULT_WHITESPACE, WHITESPACE_MODES


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
    whitespace: str = DEFAULT_WHITESPACE
    max_retries: int = 0

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
            except (AttributeError, IndexError, TypeError, ValueError) as error:
                raise BatchInputError(f"the prompt template does not fit this row: {error}",
                                      row.line) from None
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
        """The row's own id: a string or an integer in ``id_field`` (``line-N`` without one)."""
        if self.id_field is None:
            return f"line-{row.line}"
        if self.id_field not in row.data:
            raise BatchInputError(f"no id field {self.id_field!r}", row.line)
        value = row.data[self.id_field]
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise BatchInputError(f"id field {self.id_field!r} is a {type(value).__name__}, "
                                  "not a string or an integer", row.line)
        return str(value)

    def check(self) -> None:
        """Refuse a job that cannot run before any row is read."""
        if self.batch_size < 1:
            raise BatchInputError(f"--batch-size must be at least 1, not {self.batch_size}")
        if self.max_tokens < 1:
            raise BatchInputError(f"--max-tokens must be at least 1, not {self.max_tokens}")
        retries = self.max_retries
        if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
            raise BatchInputError(f"--max-retries must be at least 0, not {self.max_retries}")
        if self.whitespace not in WHITESPACE_MODES:
            raise BatchInputError(f"--whitespace must be one of {', '.join(WHITESPACE_MODES)}, "
                                  f"not {self.whitespace!r}")
        if self.prompt_template is not None:
            try:
                fields = [name for _, name, _, _ in string.Formatter().parse(self.prompt_template) if name]
            except ValueError as error:
                raise BatchInputError(f"--prompt-template is not a format string: {error}") from None
            if not fields:
                raise BatchInputError("--prompt-template has no {field} in it")


def load_output_type(reference: str) -> Any:
    """"pkg.module:Name" imports ``Name``; anything else is read as a JSON-schema file."""
    if ":" in reference and not Path(reference).exists():
        module_name, _, attribute = reference.partition(":")
        sys.path.insert(0, str(Path.cwd()))  # let `module:Model` find a module next to the data
        try:
            module = importlib.import_module(module_name)
        except Exception as error:  # the user's module: a SyntaxError in it is as much its problem
            raise BatchInputError(f"--schema {reference!r}: cannot import {module_name!r}: "
                                  f"{type(error).__name__}: {error}") from None
        finally:
            sys.path.pop(0)
        try:
            return getattr(module, attribute)
        except AttributeError:
            raise BatchInputError(f"--schema {reference!r}: module {module_name!r} has no "
                                  f"{attribute!r}") from None
    try:
        return json.loads(Path(reference).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BatchInputError(f"--schema {reference!r}: no such file{_colon_hint(reference)}") from None
    except OSError as error:
        raise BatchInputError(f"--schema {reference!r}: cannot read it: {error.strerror}") from None
    except json.JSONDecodeError as error:
        raise BatchInputError(f"--schema {reference!r}: not JSON: {error.msg} at line "
                              f"{error.lineno}") from None
    except UnicodeDecodeError:
        raise BatchInputError(f"--schema {reference!r}: not UTF-8 text") from None


def _colon_hint(reference: str) -> str:
    """For ``pkg.module.Model`` (a dot where the colon belongs): the spelling that imports it."""
    module, _, name = reference.rpartition(".")
    if module and all(part.isidentifier() for part in reference.split(".")) and name[:1].isupper():
        return f"; to import class {name} from module {module}, write {module}:{name}"
    return ""


@dataclass
class PendingRow:
    """A row still to run: its id (None when it has none, then its line is its key), line and
    fingerprint, and its prompt or the error that stops it."""

    id: str | None
    line: int
    sha256: str
    prompt: str | None = None
    error: StructgenError | None = None


@dataclass
class Plan:
    """What a run does to the output: rows to run or record as errors, records it drops, and
    how the rest of the input stands."""

    rows: int = 0
    pending: list[PendingRow] = field(default_factory=list)
    drop: set[int] = field(default_factory=set)  # positions of output records this run replaces
    done: int = 0  # rows whose ok record stands
    kept_failed: int = 0  # rows whose failed record from an earlier run stands
    changed: int = 0  # rows whose ok record was for other content: now error records
    unchecked: int = 0  # rows reused on records without a fingerprint (older structgen)
    duplicates: int = 0  # second records of one row (older structgen), removed
    stale: int = 0  # ok records of rows that are no longer in the input, kept


def plan(job: BatchJob, rows: list[InputRow], output: OutputFile, *, retry_failed: bool = False,
         rerun_changed: bool = False) -> Plan:
    """Match every input line to its record: by id, or by line for rows without one.

    A record stands only for the content it was written for (same sha256): a failed record is
    kept unless ``retry_failed``; an ok record for other content is dropped and the row becomes
    an error record, or runs again with ``rerun_changed``. A record without a fingerprint is
    trusted by id unless ``rerun_changed``. Of the records no input line claims any more, the
    results are kept and the failures dropped (they say nothing about the input as it is).
    """
    work = Plan(rows=len(rows), drop=set(output.duplicates), duplicates=len(output.duplicates))
    owners: dict[str, int] = {}
    claimed: set[int] = set()
    for row in rows:
        pending = _pending_row(job, row, owners)
        position = output.index.get(("id", pending.id) if pending.id is not None else ("line", row.line))
        if position is not None:
            claimed.add(position)
            record = output.records[position]
            unchecked = "sha256" not in record and not rerun_changed
            if unchecked or record.get("sha256") == row.sha256:
                if record["ok"] or not retry_failed:
                    work.done += record["ok"]
                    work.kept_failed += not record["ok"]
                    work.unchecked += unchecked
                    continue
            elif record["ok"] and not rerun_changed and pending.error is None:
                pending.prompt, pending.error = None, BatchInputError(
                    "the row changed since its result was written (its sha256 differs), so that "
                    "result was dropped; --retry-failed runs the row again (--rerun-changed runs "
                    "changed rows straight away)", row.line)
                work.changed += 1
            work.drop.add(position)
        work.pending.append(pending)
    for position, record in enumerate(output.records):
        if position not in claimed and position not in work.drop:
            if record["ok"]:
                work.stale += 1
            else:
                work.drop.add(position)
    return work


def _pending_row(job: BatchJob, row: InputRow, owners: dict[str, int]) -> PendingRow:
    """The row's id and prompt, or its error; ``owners`` maps ids to the line that took them first."""
    default_id = f"line-{row.line}" if job.id_field is None else None
    if row.error is not None:
        return PendingRow(default_id, row.line, row.sha256, error=BatchInputError(row.error, row.line))
    try:
        row_id = job.id_of(row)
    except BatchInputError as error:
        return PendingRow(None, row.line, row.sha256, error=error)
    if row_id in owners:
        return PendingRow(None, row.line, row.sha256, error=BatchInputError(
            f"duplicate id {row_id!r}: line {owners[row_id]} has it too", row.line))
    owners[row_id] = row.line
    try:
        return PendingRow(row_id, row.line, row.sha256, prompt=job.prompt_of(row))
    except BatchInputError as error:
        return PendingRow(row_id, row.line, row.sha256, error=error)


_BRIEF = 300  # characters of each refused attempt's text and error kept in a failed record


def error_record(row: PendingRow, error: BaseException) -> dict:
    """A failed row's record; a row whose retries ran out (or no longer fit) keeps each refused
    attempt's error and text, cut to a few hundred characters."""
    described = {"type": type(error).__name__, "message": str(error)}
    attempts = getattr(error, "attempts", None)
    if attempts:
        described["attempts"] = [{"error": _brief(str(a.error)), "text": _brief(a.text)}
                                 for a in attempts]
    return {"id": row.id, "line": row.line, "sha256": row.sha256, "ok": False, "error": described}


def _brief(text: str) -> str:
    return text if len(text) <= _BRIEF else text[:_BRIEF] + "..."


def process_batch(job: BatchJob, model, output_type, rows: list[PendingRow]) -> list[dict]:
    """Decode the runnable rows of one batch; one record per row, in the rows' order."""
    from pydantic_core import to_jsonable_python

    runnable = [row for row in rows if row.error is None]
    started = time.perf_counter()
    results = structgen.generate_batch_with_details(
        output_type, [row.prompt for row in runnable], model=model, batch_size=job.batch_size,
        max_tokens=job.max_tokens, whitespace=job.whitespace,
        max_retries=job.max_retries) if runnable else []
    seconds = time.perf_counter() - started
    by_line = dict(zip((row.line for row in runnable), results))
    records = []
    for row in rows:
        result = by_line.get(row.line, row.error)
        if isinstance(result, BaseException):
            records.append(error_record(row, result))
        else:
            records.append({"id": row.id, "line": row.line, "sha256": row.sha256, "ok": True,
                            "result": to_jsonable_python(result.value),
                            "tokens": result.completion_tokens, "stop": result.stop_reason,
                            "attempts": len(result.attempts), "batch_seconds": round(seconds, 3)})
    return records
