"""JSONL in, JSONL out: input rows with their line numbers, and an append-only, resumable output.

The output file is the job's only state. Every input row ends as exactly one line carrying its
id, so a rerun reads the ids already written and skips them. Lines are appended, flushed and
fsynced per batch; a ``kill -9`` can leave at most one half-written last line, which the next
open cuts off (its row is then simply done again) — no row is lost, none is written twice, and
every line that stays is valid JSON.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from structgen.errors import BatchInputError


@dataclass(frozen=True)
class InputRow:
    """One line of the input: its 1-based number and either its JSON object or what is wrong."""

    line: int
    data: dict | None
    error: str | None = None


def read_rows(path: str | Path) -> Iterator[InputRow]:
    """Every non-blank line of ``path``; a line that is not a JSON object comes with its error."""
    try:
        handle = open(path, encoding="utf-8")
    except OSError as error:
        raise BatchInputError(f"cannot read input file {str(path)!r}: {error.strerror}") from None
    with handle:
        for number, text in enumerate(handle, 1):
            if not text.strip():
                continue
            try:
                data = json.loads(text)
            except json.JSONDecodeError as error:
                yield InputRow(number, None, f"not valid JSON: {error.msg} (column {error.colno})")
                continue
            if not isinstance(data, dict):
                yield InputRow(number, None, f"a JSON {type(data).__name__}, not an object")
                continue
            yield InputRow(number, data)


class OutputFile:
    """The append-only results file: knows which row ids are done and appends batches durably."""

    def __init__(self, path: str | Path, *, read_only: bool = False):
        self.path = Path(path)
        self.done: set[str] = set()
        self.failed = 0
        self._read(repair=not read_only)

    def _read(self, repair: bool) -> None:
        if not self.path.exists():
            if repair:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            return
        with open(self.path, "rb+" if repair else "rb") as handle:
            content = handle.read()
            complete = content.rfind(b"\n") + 1
            if repair and complete < len(content):  # a line cut by a crash: its row runs again
                handle.truncate(complete)
        for number, line in enumerate(content[:complete].splitlines(), 1):
            try:
                record = json.loads(line)
                self.done.add(record["id"])
            except (json.JSONDecodeError, KeyError, TypeError):
                raise BatchInputError(
                    f"output file {str(self.path)!r} line {number} is not a structgen record; "
                    "refusing to append to a file this job did not write") from None
            self.failed += not record.get("ok", False)

    def append(self, records: list[dict[str, Any]]) -> None:
        """Write a batch of records as lines, then flush and fsync before returning."""
        if not records:
            return
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        for record in records:
            self.done.add(record["id"])
            self.failed += not record["ok"]
