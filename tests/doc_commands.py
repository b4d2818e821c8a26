"""The commands the README and docs/ show, block by block, for the tests that run them.

Every fenced ``bash`` block (also ``sh``, ``shell``) of ``README.md`` and of a page under ``docs/`` has a marker
in the comment lines right above it:

- ``<!-- tested: tests/<file>.py::<name> -->``: the named test file reads the block with ``commands("<name>")``
  and runs it (or checks what it can of it, as its docstring says); or ``<name>`` is a test of that file that
  runs the block through a reader of its own (a page with its own markers, such as docs/your_data.md; the marker
  may sit above that page's own comment). ``commands`` gives the block's command lines without comments, with
  the page's example paths and names replaced by temporary ones where a test passes ``replace``. Names are
  unique across the pages.
- ``<!-- not tested: <reason> -->``: no test runs it, for the reason given (a GPU, the real data or weights).

``unmarked()`` lists the blocks with neither, as ``page:line: first command``; tests/test_docs.py asserts there
are none, and tests/test_dvc.py that docs/dvc_and_slurm.md's blocks are all run by its tests.
"""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "dvc_and_slurm.md"
FENCE = re.compile(r"^\s*```(bash|sh|shell)\s*$")
TESTED = re.compile(r"^\s*<!-- tested: (tests/[\w/]+\.py)::(\w+) -->\s*$")
NOT_TESTED = re.compile(r"^\s*<!-- not tested: (.+?) -->\s*$")


def pages() -> list[Path]:
    """README.md and every Markdown page under docs/."""
    return [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def _blocks(page: Path):
    """(line number of the fence, the marker line before it or "", the block's lines) for each command block."""
    lines = page.read_text().splitlines()
    i = 0
    while i < len(lines):
        if FENCE.match(lines[i]):
            start, body = i, []
            i += 1
            while i < len(lines) and lines[i].strip() != "```":
                body.append(lines[i])
                i += 1
            yield start + 1, _marker(lines, start), body
        i += 1


def _marker(lines: list[str], fence: int) -> str:
    """The marker among the comment lines right above line ``fence`` (another page convention's comment, such as
    ``<!-- example: name -->``, may sit between it and the block), or the line above the block."""
    comments = []
    for j in range(fence - 1, -1, -1):
        line = lines[j].strip()
        if not line:
            continue
        if not (line.startswith("<!--") and line.endswith("-->")):
            break
        comments.append(lines[j])
    marker = next((c for c in comments if TESTED.match(c) or NOT_TESTED.match(c)), None)
    return marker or (comments[0] if comments else "")


def _command_lines(body: list[str]) -> list[str]:
    lines = [re.sub(r"\s+#\s.*$", "", line).strip() for line in body]
    return [line for line in lines if line and not line.startswith("#")]


def blocks(doc: Path | None = DOC) -> dict[str, tuple[str, list[str]]]:
    """name -> (test file, command lines) for every block marked as tested on ``doc`` (docs/dvc_and_slurm.md by
    default), or on every page with ``doc=None``."""
    out = {}
    for page in [doc] if doc else pages():
        for _, before, body in _blocks(page):
            marker = TESTED.match(before)
            if marker:
                out[marker.group(2)] = (marker.group(1), _command_lines(body))
    return out


def markers_of_tested_blocks() -> list[tuple[str, str, str]]:
    """(page, test file, name) of every ``tested`` marker, duplicates included."""
    return [
        (str(page.relative_to(REPO)), m.group(1), m.group(2))
        for page in pages()
        for _, before, _ in _blocks(page)
        if (m := TESTED.match(before))
    ]


def skipped() -> list[tuple[str, str, list[str]]]:
    """(page, reason, command lines) of every block marked ``not tested``."""
    return [
        (str(page.relative_to(REPO)), m.group(1).strip(), _command_lines(body))
        for page in pages()
        for _, before, body in _blocks(page)
        if (m := NOT_TESTED.match(before))
    ]


def unmarked(among: list[Path] | None = None) -> list[str]:
    """``page:line: first command`` of every block without a marker."""
    out = []
    for page in among or pages():
        for line, before, body in _blocks(page):
            if not (TESTED.match(before) or NOT_TESTED.match(before)):
                first = next(iter(_command_lines(body)), "(empty)")
                out.append(f"{page.relative_to(REPO)}:{line}: {first}")
    return out


def unmarked_blocks(doc: Path = DOC) -> list[str]:
    """The unmarked blocks of one page (docs/dvc_and_slurm.md by default)."""
    return unmarked([doc])


def commands(name: str, replace: dict[str, str] | None = None) -> list[str]:
    lines = blocks(None)[name][1]
    for old, new in (replace or {}).items():
        lines = [line.replace(old, new) for line in lines]
    return lines
