"""JSONL in, JSONL out: input rows with their line numbers and fingerprints, and the locked,
append-only output that is the job's only state.

A run holds an exclusive ``flock`` on the output file for its whole life, so two runs can never
append the same rows; a second run gets ``BatchLockedError`` naming the holder, which writes who
it is (pid, host, start time) to ``<output>.lock`` beside it. Records are appended, flushed and
fsynced per batch; a ``kill -9`` can leave at most one half-written last line, which the next
locked open cuts off (its row is then simply done again). Dropping records (retries, changed rows)
rewrites the file to a temporary one that is locked *before* it is renamed over the output, so the
lock never lapses; a run that locked the old file notices the rename and locks the new one.
"""

from __future__ import annotations

import codecs
import datetime
import fcntl
import hashlib
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from structgen.errors import BatchInputError, BatchLockedError


@dataclass(frozen=True)
class InputRow:
    """One line of the input: its 1-based number, its fingerprint, and its JSON object or what is
    wrong with it."""

    line: int
    sha256: str
    data: dict | None
    error: str | None = None


def read_rows(path: str | Path) -> Iterator[InputRow]:
    """Every non-blank line of ``path``; a line that is not a UTF-8 JSON object comes with its error.

    The fingerprint is the sha256 of the object's canonical JSON (sorted keys, no spaces), so
    reformatting a line is not a change; a line that is no object is fingerprinted by its bytes.
    """
    try:
        handle = open(path, "rb")
    except OSError as error:
        raise BatchInputError(f"cannot read input file {str(path)!r}: {error.strerror}") from None
    with handle:
        try:
            for number, raw in enumerate(handle, 1):
                raw = raw.strip()
                if number == 1:
                    raw = raw.removeprefix(codecs.BOM_UTF8)
                if raw:
                    yield _parse_row(number, raw)
        except OSError as error:
            raise BatchInputError(f"cannot read input file {str(path)!r}: {error.strerror}") from None


def _parse_row(number: int, raw: bytes) -> InputRow:
    def bad(reason: str) -> InputRow:
        return InputRow(number, _sha256(raw), None, reason)

    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        return bad(f"not UTF-8: byte 0x{raw[error.start]:02x} at byte {error.start + 1} of the line")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        return bad(f"not valid JSON: {error.msg} (column {error.colno})")
    except (ValueError, RecursionError) as error:  # a 5000-digit number, nesting too deep
        return bad(f"not usable JSON: {error}")
    if not isinstance(data, dict):
        return bad(f"a JSON {type(data).__name__}, not an object")
    canonical = json.dumps(data, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return InputRow(number, _sha256(canonical.encode("utf-8", "surrogatepass")), data)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def record_key(record: dict) -> tuple:
    """Which row a record is for: its id, or its line when the row has no usable id."""
    return ("id", record["id"]) if record["id"] is not None else ("line", record["line"])


class OutputFile:
    """The results file, locked for the run: its records in file order and where each key is."""

    def __init__(self, path: str | Path, fd: int | None, records: list[dict]):
        self.path = Path(path)
        self._fd = fd
        self._load(records)

    def _load(self, records: list[dict]) -> None:
        self.records = records
        self.index: dict[tuple, int] = {}  # key -> position of its first record
        self.duplicates: list[int] = []  # later records of a key (left by an older structgen)
        for position, record in enumerate(records):
            if record_key(record) in self.index:
                self.duplicates.append(position)
            else:
                self.index[record_key(record)] = position

    @classmethod
    def open_locked(cls, path: str | Path) -> OutputFile:
        """Lock ``path`` (created if absent) for this run, repair a cut last line, read it."""
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = _lock(path)
        except OSError as error:
            raise BatchInputError(f"cannot write output file {str(path)!r}: {error.strerror}") from None
        try:
            _write_holder(path)
            content = _read_all(fd)
            complete = content.rfind(b"\n") + 1
            if complete < len(content):  # a line cut by a crash: its row runs again
                os.ftruncate(fd, complete)
            return cls(path, fd, _parse_records(path, content[:complete]))
        except BaseException:
            _release(path, fd)
            raise

    @classmethod
    def read_unlocked(cls, path: str | Path) -> OutputFile:
        """The records as they stand, for ``--dry-run``: no lock kept, no repair, nothing created;
        refused like a run would be while another run holds the file."""
        path = Path(path)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return cls(path, None, [])
        except OSError as error:
            raise BatchInputError(f"cannot read output file {str(path)!r}: {error.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            content = _read_all(fd)
        except BlockingIOError:
            raise BatchLockedError(str(path), _read_holder(path)) from None
        except OSError as error:
            raise BatchInputError(f"cannot read output file {str(path)!r}: {error.strerror}") from None
        finally:
            os.close(fd)
        return cls(path, None, _parse_records(path, content[:content.rfind(b"\n") + 1]))

    def append(self, records: list[dict[str, Any]]) -> None:
        """Write a batch of records as lines, then fsync before returning."""
        if records:
            _write_all(self._fd, "".join(_line(record) for record in records).encode("utf-8"))
            os.fsync(self._fd)

    def rewrite(self, drop: set[int]) -> None:
        """Replace the file by its records less the positions in ``drop``, atomically and without
        letting go of the lock: a crash leaves either the old file or the new one."""
        if not drop:
            return
        kept = [record for position, record in enumerate(self.records) if position not in drop]
        temporary = self.path.with_name(self.path.name + ".tmp")
        try:
            fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
        except OSError as error:
            raise BatchInputError(f"cannot rewrite output file {str(self.path)!r}: "
                                  f"{error.strerror} (it needs a writable folder)") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # only a lock holder writes this name
            _write_all(fd, "".join(_line(record) for record in kept).encode("utf-8"))
            os.fsync(fd)
            os.replace(temporary, self.path)
            _fsync_folder(self.path)
        except BaseException:
            os.close(fd)
            raise
        os.close(self._fd)
        self._fd = fd
        self._load(kept)

    def close(self) -> None:
        if self._fd is not None:
            _release(self.path, self._fd)
            self._fd = None

    def __enter__(self) -> OutputFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _line(record: dict) -> str:
    return json.dumps(record, ensure_ascii=False) + "\n"


def _lock(path: Path) -> int:
    """An fd of ``path`` holding its exclusive lock, or ``BatchLockedError``."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise BatchLockedError(str(path), _read_holder(path)) from None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the holder renamed a rewritten file over the one we locked: lock that one


def _holder_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


def _write_holder(path: Path) -> None:
    """Say who holds the lock, for the message a second run prints (the lock itself is the flock)."""
    holder = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
    try:
        _holder_path(path).write_text(json.dumps(holder) + "\n", encoding="utf-8")
    except OSError as error:
        raise BatchInputError(f"cannot write {str(_holder_path(path))!r} beside the output: "
                              f"{error.strerror}") from None


def _read_holder(path: Path) -> dict:
    try:
        holder = json.loads(_holder_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _release(path: Path, fd: int) -> None:
    """Remove the holder note while still holding the lock, then let the lock go."""
    try:
        _holder_path(path).unlink()
    except OSError:
        pass
    os.close(fd)


def _read_all(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _fsync_folder(path: Path) -> None:
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _parse_records(path: Path, content: bytes) -> list[dict]:
    records = []
    for number, line in enumerate(content.split(b"\n")[:-1], 1):
        try:
            record = json.loads(line)
            if not isinstance(record["line"], int) or not isinstance(record["ok"], bool):
                raise TypeError
            if record["id"] is not None and not isinstance(record["id"], str):
                raise TypeError
        except (ValueError, KeyError, TypeError, RecursionError):
            raise BatchInputError(
                f"output file {str(path)!r} line {number} is not a structgen record; "
                "refusing to append to a file this job did not write") from None
        records.append(record)
    return records
