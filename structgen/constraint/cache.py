"""The cache folder, and the one file format of its arrays.

structgen keeps converted models and compiled constraints under ``$STRUCTGEN_CACHE`` (default
``~/.cache/structgen``). The folder is private to the user (0700) and ignored, with an
``UnsafeCacheWarning``, where another user can write it: an entry planted there could make a
constraint lie. Every file proves what it belongs to and that it is whole (its key, its regex,
CRC-32s of its header and of every array); one that does not is removed and computed afresh.
Files are written to a private temporary name and renamed, so readers see all of one or none.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import tempfile
import warnings
import zlib
from pathlib import Path

import numpy as np

from structgen.errors import UnsafeCacheWarning


def cache_dir() -> Path:
    """Where structgen keeps converted models and compiled constraints (``$STRUCTGEN_CACHE``)."""
    root = os.environ.get("STRUCTGEN_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "structgen"
    )
    return Path(root)


_WARNED: set[str] = set()


def constraints_dir(create: bool = False) -> Path | None:
    """The constraint cache folder (``private_cache_folder``)."""
    return private_cache_folder("constraints", create)


def private_cache_folder(name: str, create: bool = False) -> Path | None:
    """The cache folder ``name`` (compiled constraints, converted models), or None where it must
    not be used: a folder (or the cache folder above it) that another user can write may hold
    planted entries, so it is ignored with a warning. structgen makes it 0700, and tightens one an
    older structgen left readable."""
    root = cache_dir()
    folder = root / name
    try:
        for path in (root, folder):
            try:
                status = path.stat()
            except FileNotFoundError:  # made only where asked (a mkdir that finds it costs more)
                if not create:
                    return None
                path.mkdir(mode=0o700, parents=True, exist_ok=True)
                status = path.stat()
            if status.st_uid not in (os.getuid(), 0) or status.st_mode & 0o022:
                if str(path) not in _WARNED:
                    _WARNED.add(str(path))
                    warnings.warn(
                        f"structgen ignores its {name} cache at {path}: other users can write "
                        f"there (mode {status.st_mode & 0o777:o}, owner uid {status.st_uid}), so an "
                        f"entry could be planted; make it private (chmod 700 {path}) or set "
                        "STRUCTGEN_CACHE to a private folder", UnsafeCacheWarning, stacklevel=3)
                return None
        if status.st_mode & 0o077 and status.st_uid == os.getuid():  # ``status`` is the folder's
            folder.chmod(0o700)
    except OSError:  # absent (and not to be made), or unreadable
        return None
    return folder


def discard(path: Path) -> None:
    """Remove a cache file found damaged (it is then computed afresh); in a read-only cache it
    stays, ignored, and that is no error."""
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


def write_private(path: Path, write) -> None:
    """``write(partial_path)``, then rename it to ``path``: readers see the whole file or none,
    and it is private to this user (mkstemp makes it 0600). A read-only cache is no error."""
    try:
        handle, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError:
        return
    os.close(handle)
    try:
        write(Path(partial))
        os.replace(partial, path)
    except OSError:
        discard(Path(partial))


_TABLES_MAGIC = b"SGTABLES"
_PREFIX = len(_TABLES_MAGIC) + 12  # magic, header length (8 bytes), header CRC-32 (4 bytes)
_ALIGN = 64
_MAP_ABOVE_BYTES = 1 << 20


def _aligned(size: int) -> int:
    """``size`` rounded up to the tables file's alignment."""
    return -(-size // _ALIGN) * _ALIGN


def _tables_data_start(header_length: int) -> int:
    """Where a tables file's arrays begin: after magic, header length, CRC and header, aligned."""
    return _aligned(_PREFIX + header_length)


def write_tables(path: Path, tables: dict, *, key: str, regex: str) -> None:
    """All of a constraint's arrays in one file: magic, header length, the header's CRC-32, a
    JSON header (the cache key and regex the file belongs to; each array's dtype, shape, offset
    and CRC-32), then the arrays, each 64-byte aligned."""
    # Smallest first: a cold hit's first page read brings the header and the per-state tables.
    arrays = {name: np.asarray(value, order="C") for name, value in
              sorted(tables.items(), key=lambda item: np.asarray(item[1]).nbytes)}
    layout, data, offset = {}, {}, 0
    for name, array in arrays.items():
        # the array's own bytes, C order, not a copy: the CRC and the write release the GIL
        data[name] = memoryview(array.reshape(-1)).cast("B")
        layout[name] = [array.dtype.str, list(array.shape), offset, zlib.crc32(data[name])]
        offset += _aligned(array.nbytes)
    encoded = json.dumps({"key": key, "regex": regex, "arrays": layout}).encode()
    start = _tables_data_start(len(encoded))
    with open(path, "wb") as out:
        out.write(_TABLES_MAGIC + len(encoded).to_bytes(8, "little")
                  + zlib.crc32(encoded).to_bytes(4, "little") + encoded)
        for name in arrays:
            out.seek(start + layout[name][2])
            out.write(data[name])
        out.truncate(start + offset)


def read_tables(path: Path, *, key: str, regex: str) -> dict:
    """``write_tables``' arrays, read-only, once the file proves to be ``key``'s and ``regex``'s
    and whole (any other file is a ``ValueError``). Every array's CRC is checked here. One open:
    a file over 1 MiB is memory-mapped (no copy of the arrays); a smaller one is read whole,
    which costs less than setting up the mapping."""
    with open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        if size > _MAP_ABOVE_BYTES:
            data = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
        else:
            data = file.read()
    if size < _PREFIX or data[:len(_TABLES_MAGIC)] != _TABLES_MAGIC:
        raise ValueError(f"{path} is not a structgen tables file")
    length = int.from_bytes(data[len(_TABLES_MAGIC):_PREFIX - 4], "little")
    encoded = bytes(data[_PREFIX:_PREFIX + length])
    if len(encoded) < length:
        raise ValueError(f"{path} is truncated")
    if zlib.crc32(encoded) != int.from_bytes(data[_PREFIX - 4:_PREFIX], "little"):
        raise ValueError(f"{path} has a damaged header")
    try:
        header = json.loads(encoded)
    except RecursionError:
        raise ValueError(f"{path} has a header nested too deep") from None
    if not isinstance(header, dict) or not isinstance(header.get("arrays"), dict):
        raise ValueError(f"{path} has no header of arrays")
    if header.get("key") != key or header.get("regex") != regex:
        raise ValueError(f"{path} belongs to another constraint than key {key}")
    start = _tables_data_start(length)
    tables = {}
    for name, entry in header["arrays"].items():
        array, checksum = _array_at(data, start, size, entry, f"{path} array {name!r}")
        if zlib.crc32(array) != checksum:
            raise ValueError(f"{path} array {name!r} is damaged")
        tables[name] = array
    return tables


def _array_at(data, start: int, size: int, entry, where: str) -> tuple[np.ndarray, int]:
    """The array a header ``entry`` ([dtype, shape, offset, CRC-32]) describes, and its CRC."""
    if not (isinstance(entry, list) and len(entry) == 4):
        raise ValueError(f"{where} has no [dtype, shape, offset, crc] entry")
    name, shape, offset, checksum = entry
    try:
        dtype = np.dtype(name) if isinstance(name, str) else None
    except TypeError:
        dtype = None
    if dtype is None or dtype.kind not in "biuf" or dtype.str != name:
        raise ValueError(f"{where} has an unknown dtype {name!r}")
    if not (isinstance(shape, list) and all(type(n) is int and n >= 0 for n in shape)
            and type(offset) is int and offset >= 0 and type(checksum) is int):
        raise ValueError(f"{where} has a malformed shape, offset or crc")
    count = math.prod(shape)
    if start + offset + count * dtype.itemsize > size:
        raise ValueError(f"{where} is truncated")
    return np.frombuffer(data, dtype=dtype, count=count, offset=start + offset).reshape(shape), checksum
