"""A small folder of a user's own images, drawn from the pocket world, with hostile class names and broken files.

Used by tests/test_user_datasets.py and tests/test_user_datasets_dag.py. Every image is a pocket image of one
colour and shape per class (so the tiny pocket CLIP has something to see), 32 px.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np

# folder name -> (colour, shape); names in several scripts, with spaces, parentheses, apostrophes, and two that
# differ only in case; "AC_DC" gets the class name "AC/DC" from a classnames file (a `/` cannot be a folder name)
CLASSES = {
    "猫_ねこ": ("red", "circle"),
    "قطة": ("blue", "square"),
    "crème brûlée (dessert)": ("green", "triangle"),
    "o'brien's star": ("yellow", "star"),
    "Cross": ("purple", "cross"),
    "cross": ("orange", "diamond"),
    "AC_DC": ("cyan", "hexagon"),
    "plain_ring": ("pink", "ring"),
}
CLASSNAMES_TSV = "AC_DC\tAC/DC\n"
PER_CLASS = 10
BROKEN = {  # file (relative to the root) -> what the check must say about it
    "猫_ねこ/truncated.jpg": "unreadable",
    "قطة/cmyk.jpg": "CMYK",
    "plain_ring/deep.png": "16-bit",
    "Cross/notes.txt": "not an image",
    "cross/rotated.jpg": "EXIF-rotated",
}


def draw(colour: str, shape: str, index: int):
    from vlprompt.data import pocket

    rng = np.random.default_rng([abs(hash((colour, shape))) % 2**31, index])
    return pocket.render(colour, shape, "photo", rng, size=32)


def write_folder(root: Path, broken: bool = True) -> Path:
    """``root/<class>/<i>.png``, plus (``broken``) the files of :data:`BROKEN` and one duplicate of an image
    (``o'brien's star/copy.png`` = ``o'brien's star/000.png``) that the seeded split puts in another split."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    for folder, (colour, shape) in CLASSES.items():
        (root / folder).mkdir(exist_ok=True)
        for i in range(PER_CLASS):
            draw(colour, shape, i).save(root / folder / f"{i:03d}.png")
    (root.parent / "classnames.tsv").write_text(CLASSNAMES_TSV)
    if not broken:
        return root
    good = draw("red", "circle", 99)
    buf = io.BytesIO()
    good.save(buf, format="JPEG")
    (root / "猫_ねこ" / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    draw("blue", "square", 99).convert("CMYK").save(root / "قطة" / "cmyk.jpg")
    grey = np.asarray(draw("pink", "ring", 99).convert("L"), dtype=np.uint16) * 257
    Image.fromarray(grey).save(root / "plain_ring" / "deep.png")
    (root / "Cross" / "notes.txt").write_text("not an image\n")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees
    draw("orange", "diamond", 99).save(root / "cross" / "rotated.jpg", exif=exif)
    shutil.copyfile(root / "o'brien's star" / "000.png", root / "o'brien's star" / "copy.png")
    return root


def write_csv(root: Path, out: Path, skip: tuple = ()) -> Path:
    """The same images as ``path,label`` rows (labels: the folder names), for the csv layout."""
    import csv

    with open(out, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        for folder in sorted(CLASSES):
            for img in sorted((root / folder).iterdir()):
                rel = img.relative_to(root).as_posix()
                if rel not in skip:
                    w.writerow([rel, folder])
    return out
