"""Image files as every stage sees them: decoded in full, EXIF orientation applied, 8-bit RGB.

One reader (:func:`open_rgb`) serves validation and prepare, so the pixels a box was checked
against are the pixels the model trains on. Its contract:

- EXIF orientation (tag 274, values 2..8) is applied, so width/height are those of the *upright* image;
- any mode becomes RGB uint8: grayscale is replicated, 16-bit and 32-bit integer images are scaled
  by 255/65535 (``I;16``, ``I``) to keep their full range, palette and alpha images are composited on
  black (transparent pixels become black, never a palette index's arbitrary colour).

:func:`orient_boxes` maps COCO boxes drawn on the stored pixels into the upright frame with the same
transpose PIL applies to the pixels.
"""

from __future__ import annotations

import hashlib
import io
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from cvpipe.data.file_checks import MISSING, REGULAR, UnreadableFile, file_kind, read_regular_bytes

ORIENTATION_TAG = 274  # EXIF Orientation
# EXIF orientation → the PIL transpose that makes the image upright (as ImageOps.exif_transpose does).
TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
             5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
             8: Image.Transpose.ROTATE_90}
SWAPS_SIDES = {5, 6, 7, 8}  # orientations whose upright image is the stored one turned by 90°
IN_MEMORY_FILE = re.compile(r" ?<_io\.BytesIO object at 0x[0-9a-fA-F]+>")  # PIL quotes the buffer it was given


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation of an open image: 2..8, or 1 when absent or not a valid orientation."""
    try:
        orientation = int(image.getexif().get(ORIENTATION_TAG, 1) or 1)
    except (TypeError, ValueError):
        return 1
    return orientation if orientation in TRANSPOSE else 1


@dataclass(frozen=True)
class FileFacts:
    """What validation learns from one file: stored size, EXIF orientation, mode, content hash."""

    exists: bool
    decodes: bool | None  # None: not a regular file, so never opened (rule "image is a regular file")
    width: int | None = None  # stored pixels, before EXIF orientation
    height: int | None = None
    orientation: int = 1
    mode: str | None = None
    sha1: str | None = None
    error: str | None = None
    kind: str = REGULAR  # cvpipe.data.file_checks.file_kind

    @property
    def upright_size(self) -> tuple[int | None, int | None]:
        if self.orientation in SWAPS_SIDES:
            return self.height, self.width
        return self.width, self.height


def check_pixel_count(width: int, height: int) -> None:
    """Raise :class:`UnreadableFile` when ``width × height`` exceeds ``PIL.Image.MAX_IMAGE_PIXELS`` (a
    decompression bomb: a small file that would decode to gigabytes)."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and width * height > limit:
        raise UnreadableFile(f"decompression bomb: {width}x{height} = {width * height} pixels exceed the limit of "
                             f"{int(limit)} (PIL.Image.MAX_IMAGE_PIXELS)")


def open_checked(source: str | Path | io.BytesIO) -> Image.Image:
    """``Image.open`` that refuses decompression bombs (above :func:`check_pixel_count`'s limit) before
    any pixel is decoded, as :class:`UnreadableFile`; other decode faults raise as PIL raises them."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(source)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise UnreadableFile(f"decompression bomb: {exc}") from None
    try:
        check_pixel_count(*image.size)
    except UnreadableFile:
        image.close()
        raise
    return image


def header_size(path: Path) -> tuple[float, float]:
    """Width and height of the upright image (EXIF orientation applied) from the header only; NaN when the
    path is not a regular file (never opened), not an image, or a decompression bomb (validation says why)."""
    if file_kind(path) != REGULAR:
        return float("nan"), float("nan")
    try:
        with open_checked(path) as im:
            width, height = im.size
            if exif_orientation(im) in SWAPS_SIDES:
                width, height = height, width
            return float(width), float(height)
    except (OSError, SyntaxError, ValueError, UnreadableFile):
        return float("nan"), float("nan")


def decode_problem(exc: BaseException) -> str:
    """``"<error type>: <message>"`` of a decode fault, without the address of the in-memory buffer PIL quotes
    (``cannot identify image file <_io.BytesIO object at 0x7f...>``), so reports are the same on every run."""
    return IN_MEMORY_FILE.sub("", f"{type(exc).__name__}: {exc}")


def inspect_file(path: Path) -> FileFacts:
    """Check what ``path`` is (a FIFO, device or directory is never opened), then read and fully decode it:
    a truncated or corrupt file, or a decompression bomb, fails here, not later in training."""
    kind = file_kind(path)
    if kind == MISSING:
        return FileFacts(exists=False, decodes=False, error="file not found", kind=kind)
    if kind != REGULAR:
        return FileFacts(exists=True, decodes=None, error=f"is a {kind}, not a regular file", kind=kind)
    try:
        data = read_regular_bytes(path)
    except UnreadableFile as exc:  # vanished or unreadable between the stat and the read
        return FileFacts(exists=True, decodes=False, error=str(exc))
    sha1 = hashlib.sha1(data).hexdigest()
    try:
        with open_checked(io.BytesIO(data)) as im:
            im.load()
            return FileFacts(True, True, im.width, im.height, exif_orientation(im), im.mode, sha1)
    except UnreadableFile as exc:
        return FileFacts(exists=True, decodes=False, sha1=sha1, error=str(exc))
    except (OSError, SyntaxError, ValueError) as exc:
        return FileFacts(exists=True, decodes=False, sha1=sha1, error=decode_problem(exc))


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode → 8-bit RGB (see the module docstring for the rules)."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "I;16N"):
        arr = np.asarray(image, dtype=np.float64)
        # 16-bit sources use 0..65535; a 32-bit 'I' image holding 8-bit values stays as it is.
        scale = 255.0 / 65535.0 if image.mode.startswith("I;16") or arr.max(initial=0) > 255 else 1.0
        return Image.fromarray(np.clip(arr * scale + 0.5, 0, 255).astype(np.uint8)).convert("RGB")
    if image.mode == "F":
        arr = np.asarray(image, dtype=np.float64)
        return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).convert("RGB")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("RGB")
    return image.convert("RGB")


def open_rgb(path: str | Path) -> Image.Image:
    """The upright, 8-bit RGB image of ``path`` (decoded in memory; the file is closed on return)."""
    with Image.open(path) as im:  # leaving the block closes the file only: the loaded pixels stay
        im.load()
        orientation = exif_orientation(im)
        # the transpose exif_transpose would apply, without its copy of an image that is upright already
        upright = im if orientation == 1 else im.transpose(TRANSPOSE[orientation])
    return to_rgb(upright)


def orient_boxes(boxes: np.ndarray, orientation: int, width: float, height: float) -> np.ndarray:
    """COCO boxes [N, 4] (x, y, w, h) on stored pixels of size width × height → the upright frame."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    if orientation not in TRANSPOSE:
        return boxes.copy()
    x0, y0 = boxes[:, 0], boxes[:, 1]
    x1, y1 = x0 + boxes[:, 2], y0 + boxes[:, 3]
    W, H = width, height
    # Where the corner (x, y) of the stored image lands in the upright one.
    corners = {
        2: (W - x1, y0, W - x0, y1),
        3: (W - x1, H - y1, W - x0, H - y0),
        4: (x0, H - y1, x1, H - y0),
        5: (y0, x0, y1, x1),
        6: (H - y1, x0, H - y0, x1),
        7: (H - y1, W - x1, H - y0, W - x0),
        8: (y0, W - x1, y1, W - x0),
    }[orientation]
    nx0, ny0, nx1, ny1 = corners
    return np.stack([nx0, ny0, nx1 - nx0, ny1 - ny0], axis=1)


def orient_mask(mask: np.ndarray, orientation: int) -> np.ndarray:
    """A bool mask [H, W] on stored pixels → the upright frame (same transpose as the pixels)."""
    if orientation not in TRANSPOSE:
        return mask
    return np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).transpose(TRANSPOSE[orientation])) > 127
