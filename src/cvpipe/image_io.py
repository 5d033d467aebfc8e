"""Reading the images a user hands to a trained model (``cvpipe predict``, the REST pyfunc): any size, any
format PIL decodes, EXIF orientation applied, any mode turned into 8-bit RGB the way prepare does it.

No torch here: the ONNX prediction path stays light. Faults come back as ``ValueError`` with the reason, so a
caller can name the file (or the request row) and go on with the rest.
"""

from __future__ import annotations

import glob
import io
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})


def decode_image(data: bytes) -> np.ndarray:
    """An encoded image file's bytes → upright uint8 [H, W, 3] RGB. Decompression bombs are refused before any
    pixel is decoded."""
    from PIL import ImageOps

    from cvpipe.data.file_checks import UnreadableFile
    from cvpipe.data.image_files import decode_problem, open_checked, to_rgb

    try:
        with open_checked(io.BytesIO(data)) as image:
            image.load()
            upright = ImageOps.exif_transpose(image)
        return np.asarray(to_rgb(upright), dtype=np.uint8)
    except UnreadableFile as exc:
        raise ValueError(str(exc)) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ValueError(f"not a decodable image ({decode_problem(exc)})") from None


def read_image(path: str | Path) -> np.ndarray:
    """The image file at ``path`` as :func:`decode_image` gives it; a FIFO or device is never opened."""
    from cvpipe.data.file_checks import UnreadableFile, read_regular_bytes

    try:
        data = read_regular_bytes(path)
    except UnreadableFile as exc:
        raise ValueError(str(exc)) from None
    return decode_image(data)


def find_images(source: str | Path) -> list[Path]:
    """The image files ``source`` names, sorted: a file (whatever its suffix), a folder (recursively, files with an
    image suffix), or a glob pattern (``**`` recurses). An empty list when nothing matches."""
    path = Path(source)
    if path.is_dir():
        found = [p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and not p.is_dir()]
    elif path.exists() or path.is_symlink():
        found = [path]
    else:
        found = [Path(p) for p in glob.glob(str(source), recursive=True)
                 if Path(p).suffix.lower() in IMAGE_SUFFIXES and not Path(p).is_dir()]
    return sorted(found)
