"""Touching user files safely: what kind of file a path is, before anything opens it.

Contract: nothing here ever opens a path that is not a regular file. A FIFO would block the reader
forever, a character device such as ``/dev/zero`` never ends, a directory or a symlink loop cannot be
read; each is reported by :func:`file_kind` from ``os.stat`` alone. Readers raise :class:`UnreadableFile`
with a reason short enough to quote in a one-line error or a quarantine row.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path, PurePosixPath

REGULAR = "regular file"
MISSING = "missing"


class UnreadableFile(Exception):
    """A label or image file that cannot be read as asked; ``str(exc)`` is the reason (no path)."""


def file_kind(path: str | Path) -> str:
    """What ``path`` is, following symlinks: :data:`REGULAR`, :data:`MISSING` (also a dangling symlink),
    "directory", "FIFO (named pipe)", "socket", "character device", "block device", "symlink loop",
    or "unreadable (<reason>)". Never opens the path."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return MISSING
    except NotADirectoryError:
        return MISSING  # a parent of the path is a file
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symlink loop"
        return f"unreadable ({exc.strerror or exc})"
    if stat.S_ISREG(mode):
        return REGULAR
    for test, name in ((stat.S_ISDIR, "directory"), (stat.S_ISFIFO, "FIFO (named pipe)"), (stat.S_ISSOCK, "socket"),
                       (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device")):
        if test(mode):
            return name
    return "special file"


def read_regular_bytes(path: str | Path) -> bytes:
    """The bytes of ``path``; :class:`UnreadableFile` when it is missing or not a regular file (checked
    with ``stat`` first, so a FIFO or device is never opened) or reading fails."""
    kind = file_kind(path)
    if kind == MISSING:
        raise UnreadableFile("file not found")
    if kind != REGULAR:
        raise UnreadableFile(f"is a {kind}, not a regular file")
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise UnreadableFile(f"cannot be read: {exc.strerror or exc}") from None


def read_text(path: str | Path) -> str:
    """``path`` decoded as UTF-8 (a BOM is dropped); :class:`UnreadableFile` names the first bad byte."""
    return decode_text(read_regular_bytes(path))


def decode_text(data: bytes) -> str:
    """``data`` decoded as UTF-8 (a BOM is dropped); :class:`UnreadableFile` names the first bad byte."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UnreadableFile(f"not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
                             "save it as UTF-8") from None


def printable_name(name: str) -> tuple[str, str | None]:
    """``(name, None)``, or for a name the OS gave with bytes that are not UTF-8 (a zip from another
    system): the name with those bytes written ``\\xe9`` and why it cannot be used, so tables and reports
    can hold it and rule "file name is UTF-8" names it."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        shown = os.fsencode(name).decode("utf-8", "backslashreplace")
        return shown, f"file name is not UTF-8 ({shown}); rename the file"
    return name, None


def _target(file_name: str, image_root: Path) -> str:
    """The absolute, normalised path ``file_name`` names (relative names are taken from ``image_root``)."""
    return os.path.normpath(os.path.join(os.path.abspath(image_root), str(file_name).replace("\\", "/")))


def _inside(path: str, folder: str | Path) -> bool:
    root = os.path.normpath(os.path.abspath(folder))
    return os.path.commonpath([path, root]) == root


def escapes_root(file_name: str, image_root: Path, data_root: Path) -> str | None:
    """Why ``file_name`` (relative to ``image_root``) leaves ``data_root``, or None when it stays inside.

    Purely lexical (no symlink is resolved, no file touched): an absolute name, or one whose ``..`` parts
    climb above ``data_root``."""
    name = str(file_name).replace("\\", "/")
    if PurePosixPath(name).is_absolute() or Path(name).is_absolute() or (len(name) > 1 and name[1] == ":"):
        return "absolute path"
    if not _inside(_target(name, image_root), data_root):
        return "'..' leaves data.path"
    return None


def inside_any(file_name: str, image_root: Path, folders: list[str] | tuple[str, ...]) -> bool:
    """Whether ``file_name`` (relative to ``image_root``, or absolute) lies inside one of ``folders``
    (relative folders are taken from the working directory, the repository root under DVC). Lexical, as
    :func:`escapes_root`: ``folders/../elsewhere`` is outside."""
    target = _target(file_name, image_root)
    return any(_inside(target, folder) for folder in folders)
