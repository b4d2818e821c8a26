"""The layers of docs/architecture.md hold: imports only go down (import-linter's contract in pyproject.toml), and
no module reaches itself through the modules it imports."""

from __future__ import annotations

import graphlib
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = [
    sys.executable,
    "-c",
    "import sys; from importlinter.cli import lint_imports_command as c; "
    "sys.argv[1:] = ['--no-cache', '--no-logo']; c()",
]


def import_graph() -> dict[str, set[str]]:
    graph = grimp.build_graph("vlprompt", cache_dir=None)
    return {m: graph.find_modules_directly_imported_by(m) for m in graph.modules}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``edges`` (module -> modules it imports), or None."""
    try:
        tuple(graphlib.TopologicalSorter(edges).static_order())
    except graphlib.CycleError as err:
        return list(err.args[1])
    return None


def test_find_cycle_finds_a_cycle_and_accepts_a_chain():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert set(find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}})) == {"a", "b", "c"}


def test_no_module_imports_itself_through_others():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_imports_only_go_down_the_layers():
    out = subprocess.run(LINT_IMPORTS, cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    import tomllib

    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    assert f"{len(contracts)} kept, 0 broken" in out.stdout


def test_the_architecture_page_names_every_package_of_the_contract():
    import tomllib

    contract = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"][0]
    packages = {p.strip() for layer in contract["layers"] for p in layer.split("|")}
    page = (ROOT / "docs" / "architecture.md").read_text()
    missing = sorted(p for p in packages if f"`{p}`" not in page)
    assert not missing, f"docs/architecture.md does not describe {missing}"
    on_disk = {
        f"vlprompt.{p.stem}"
        for p in (ROOT / "src" / "vlprompt").iterdir()
        if (p / "__init__.py").exists() or (p.suffix == ".py" and p.stem not in ("__init__", "__main__"))
    }
    assert on_disk <= packages, f"modules outside every layer: {sorted(on_disk - packages)}"


@pytest.mark.parametrize("upward", ["from vlprompt.training import runs\n", "import vlprompt.analysis.stats\n"])
def test_an_upward_import_breaks_the_contract(tmp_path, upward):
    """The contract fails on a copy of the package whose lowest layer imports a higher one."""
    import shutil

    copy = tmp_path / "src"
    shutil.copytree(ROOT / "src" / "vlprompt", copy / "vlprompt", ignore=shutil.ignore_patterns("assets", "*.json"))
    io = copy / "vlprompt" / "io.py"
    io.write_text(io.read_text() + "\n" + upward)
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    out = subprocess.run(
        LINT_IMPORTS,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(copy), "PATH": "/usr/bin:/bin", "PYTHONSAFEPATH": "1"},
    )
    assert out.returncode != 0 and "BROKEN" in out.stdout, out.stdout[-2000:]
