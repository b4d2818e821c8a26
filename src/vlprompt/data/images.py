"""Reading one image file as the backbone's transform expects it (8-bit RGB), and saying what was done to it.

The published benchmarks are read as the references read them (Dassl's ``read_image``:
``Image.open(path).convert("RGB")``), so their features stay those of the references. A user's own images come
from cameras, scanners and microscopes, so they are read with two more steps, counted by the dataset check
(:func:`inspect`): the EXIF orientation is applied (``PIL.ImageOps.exif_transpose``: a phone photo taken upright
is seen upright), and 16-bit grey images are scaled to 8 bits (``convert("RGB")`` would clip them to white).
Grey, palette, RGBA (alpha dropped) and CMYK images are converted by PIL's ``convert("RGB")`` as for every dataset.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")
ORIENTATION = 0x0112  # the EXIF tag: 1 is upright, 2..8 a mirror and/or rotation
WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
#: what a mode is called in the check's counts (anything not here and not RGB is counted under its mode)
MODE_NAMES = {
    "1": "grayscale",
    "L": "grayscale",
    "LA": "grayscale",
    "P": "palette",
    "PA": "palette",
    "RGBA": "RGBA",
    "CMYK": "CMYK",
    **dict.fromkeys(WIDE_MODES, "16-bit"),
}


def is_image_name(path: str | Path) -> bool:
    return Path(path).suffix.lower() in EXTENSIONS


def to_rgb(img, exif: bool = True):
    """``img`` as 8-bit RGB: EXIF orientation applied (``exif``), 16-bit grey scaled to 8 bits, ``convert("RGB")``."""
    from PIL import Image, ImageOps

    if exif:
        img = ImageOps.exif_transpose(img)
    if img.mode in WIDE_MODES:
        import numpy as np

        img = Image.fromarray((np.asarray(img, dtype=np.int64).clip(0, 65535) >> 8).astype(np.uint8))
    return img.convert("RGB")


def open_rgb(path: str | Path, exif: bool = False):
    """The image at ``path`` as 8-bit RGB (``exif``: a user's image, see the module docstring)."""
    from PIL import Image

    with Image.open(path) as img:
        return to_rgb(img, exif=exif) if exif else img.convert("RGB")


def inspect(path: str | Path) -> dict:
    """What the dataset check needs of one file: ``sha256`` of its bytes, and either ``error`` (unreadable or
    truncated: the whole image is decoded) or its ``mode``, ``conversion`` (what reading it as RGB does, or None)
    and ``rotated`` (an EXIF orientation other than upright)."""
    from PIL import Image

    data = Path(path).read_bytes()
    out: dict = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()  # decodes every pixel: a truncated file fails here, not in a training job
            out["mode"] = img.mode
            out["conversion"] = MODE_NAMES.get(img.mode, None if img.mode == "RGB" else img.mode)
            out["rotated"] = img.getexif().get(ORIENTATION, 1) not in (1, None)
            to_rgb(img)
    except Exception as err:  # PIL raises OSError, ValueError, SyntaxError, DecompressionBombError...
        out["error"] = f"{type(err).__name__}: {err}"
    return out
