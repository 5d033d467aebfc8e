"""``.npy`` files written in pieces and hashed on the way: byte-identical to ``np.save`` of the whole array
(same header, C order), so readers use ``np.load(..., mmap_mode="r")`` as before, but the array never has to
exist in memory, and its SHA-256 comes with the writing instead of a second pass over a file of gigabytes.

:class:`NpyRowFile` is the file: its rows are written in place by pool workers (:class:`RowTarget`, ``pwrite``
at the row's offset) and hashed here in row order as the ordered pool confirms them.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np


class _Hashing:
    """A file object that hashes what passes through ``write`` (for numpy's header writer)."""

    def __init__(self, fh: BinaryIO, digest: "hashlib._Hash") -> None:
        self.fh, self.digest = fh, digest

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return self.fh.write(data)


@dataclass(frozen=True)
class RowTarget:
    """Where rows of a :class:`NpyRowFile` go: a picklable address a pool worker writes to with
    :func:`write_rows`, so the pixels never travel back through the pool's pipe."""

    path: str
    offset: int  # bytes of the .npy header
    row_bytes: int

    def write(self, first_row: int, rows: np.ndarray) -> None:
        data = np.ascontiguousarray(rows).tobytes()
        if len(data) % self.row_bytes:
            raise ValueError(f"{self.path}: {len(data)} bytes are not whole rows of {self.row_bytes}")
        fd = os.open(self.path, os.O_WRONLY)
        try:
            written = os.pwrite(fd, data, self.offset + first_row * self.row_bytes)
        finally:
            os.close(fd)
        if written != len(data):
            raise OSError(f"{self.path}: short write ({written} of {len(data)} bytes)")


class NpyRowFile:
    """An ``.npy`` file of known ``shape`` whose rows are written by any process in any order
    (:meth:`target`), then hashed here in row order as each is confirmed (:meth:`confirm`): the same bytes
    as ``np.save`` of the whole array, and its SHA-256, without the rows passing through this process's memory
    more than one read at a time."""

    def __init__(self, path: str | Path, dtype: np.dtype | type, shape: tuple[int, ...]) -> None:
        self.path, self.dtype, self.shape = Path(path), np.dtype(dtype), tuple(int(s) for s in shape)
        self.digest = hashlib.sha256()
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": self.shape}
        with self.path.open("wb") as fh:
            np.lib.format.write_array_header_1_0(_Hashing(fh, self.digest), header)
            self.offset = fh.tell()
            fh.truncate(self.offset + self.row_bytes * self.shape[0])
        self.rows = 0  # rows hashed so far
        self._fd: int | None = os.open(self.path, os.O_RDONLY)

    def target(self) -> RowTarget:
        return RowTarget(str(self.path), self.offset, self.row_bytes)

    def confirm(self, count: int) -> None:
        """The next ``count`` rows are written: hash them (read back in order, from the page cache; unbuffered,
        as a read-ahead buffer would hold rows read before their worker wrote them)."""
        assert self._fd is not None
        for _ in range(count):
            data = os.pread(self._fd, self.row_bytes, self.offset + self.rows * self.row_bytes)
            if len(data) != self.row_bytes:
                raise OSError(f"{self.path}: row {self.rows} is short")
            self.digest.update(data)
            self.rows += 1

    def close(self) -> str:
        self.abort()
        if self.rows != self.shape[0]:
            raise ValueError(f"{self.path}: {self.rows} rows written, {self.shape[0]} declared")
        return self.digest.hexdigest()

    def abort(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
