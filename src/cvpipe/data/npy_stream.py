"""An ``.npy`` file written front to back in chunks, hashed as it is written.

The file is byte-identical to ``np.save`` of the whole array (same header, C order), so readers use
``np.load(..., mmap_mode="r")`` as before; but the array never has to exist in memory, and its SHA-256 comes
from the bytes on their way to disk instead of a second read of a file that may be gigabytes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import BinaryIO

import numpy as np


class NpyStreamWriter:
    """Append rows of a ``dtype`` array whose full ``shape`` is known up front; ``close()`` checks that exactly
    ``shape[0]`` rows came and returns the file's SHA-256 (hex)."""

    def __init__(self, path: str | Path, dtype: np.dtype | type, shape: tuple[int, ...]) -> None:
        self.path, self.dtype, self.shape = Path(path), np.dtype(dtype), tuple(int(s) for s in shape)
        self.rows = 0
        self.digest = hashlib.sha256()
        self._fh: BinaryIO | None = self.path.open("wb")
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": self.shape}
        np.lib.format.write_array_header_1_0(_Hashing(self._fh, self.digest), header)

    def append(self, rows: np.ndarray) -> None:
        """Write ``rows`` (shape ``[k, *shape[1:]]``, or one row of shape ``shape[1:]``)."""
        rows = np.asarray(rows, self.dtype)
        if rows.shape == self.shape[1:]:
            rows = rows[None]
        if rows.shape[1:] != self.shape[1:]:
            raise ValueError(f"{self.path}: rows of shape {rows.shape[1:]} appended to an array of rows {self.shape[1:]}")
        if self.rows + len(rows) > self.shape[0]:
            raise ValueError(f"{self.path}: more than the declared {self.shape[0]} rows")
        data = np.ascontiguousarray(rows).tobytes()
        assert self._fh is not None
        self._fh.write(data)
        self.digest.update(data)
        self.rows += len(rows)

    def close(self) -> str:
        if self._fh is None:
            return self.digest.hexdigest()
        self._fh.close()
        self._fh = None
        if self.rows != self.shape[0]:
            raise ValueError(f"{self.path}: {self.rows} rows written, {self.shape[0]} declared")
        return self.digest.hexdigest()

    def abort(self) -> None:
        """Close without the row check (the stage failed; the partial file is not an output)."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None


class _Hashing:
    """A file object that hashes what passes through ``write`` (for numpy's header writer)."""

    def __init__(self, fh: BinaryIO, digest: "hashlib._Hash") -> None:
        self.fh, self.digest = fh, digest

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return self.fh.write(data)
