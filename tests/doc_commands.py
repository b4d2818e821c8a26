"""The commands docs/dvc_and_slurm.md shows, block by block, for the tests that run them.

Every ```bash block of the page follows a marker ``<!-- tested: tests/<file>.py::<name> -->``; ``commands(name)``
gives that block's command lines, without comments, with the page's example paths and names replaced by
temporary ones where a test passes ``replace``. tests/test_dvc.py checks that every block has a marker and that
the test file it names runs it.
"""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "dvc_and_slurm.md"
MARKER = re.compile(r"<!-- tested: (tests/[\w/]+\.py)::(\w+) -->\s*\n```bash\n(.*?)```", re.S)


def blocks(doc: Path = DOC) -> dict[str, tuple[str, list[str]]]:
    """name -> (test file, command lines) for every marked block."""
    out = {}
    for path, name, body in MARKER.findall(doc.read_text()):
        lines = [re.sub(r"\s+#\s.*$", "", line).strip() for line in body.splitlines()]
        out[name] = (path, [line for line in lines if line])
    return out


def unmarked_blocks(doc: Path = DOC) -> list[str]:
    """The ```bash blocks no marker names (there must be none)."""
    text = MARKER.sub("", doc.read_text())
    return re.findall(r"```bash\n(.*?)```", text, re.S)


def commands(name: str, replace: dict[str, str] | None = None) -> list[str]:
    lines = blocks()[name][1]
    for old, new in (replace or {}).items():
        lines = [line.replace(old, new) for line in lines]
    return lines
