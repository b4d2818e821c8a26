"""The method catalogue (vlprompt.analysis.catalogue): every registered method, its data file kept honest.

- ``python -m vlprompt methods --format markdown`` and ``--format json`` list every registered method, and agree.
- ``src/vlprompt/methods/catalogue.json`` (reference repository and commit, fixtures, tests) has an entry for
  every method or its parent and none for a method that does not exist; the files it names exist; every fixture
  of the official code under tests/reference/fixtures/ is claimed by a method; a fixture's recorded repository
  and commit are the entry's; the repository is named in the method's docstring.
"""

import contextlib
import io
import json
import re

import pytest
import torch

from doc_commands import REPO
from vlprompt import cli
from vlprompt.analysis import catalogue
from vlprompt.methods import get_method, list_methods


def _run(fmt: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.chdir(REPO):
        cli.main(["methods", "--format", fmt])
    return out.getvalue()


@pytest.fixture(scope="module")
def rows():
    return catalogue.catalogue(REPO / "config" / "published")


def test_markdown_and_json_list_every_registered_method_and_agree():
    as_json = json.loads(_run("json"))
    table = [line for line in _run("markdown").splitlines() if line.startswith("| `")]
    assert [r["method"] for r in as_json] == list_methods()
    assert [re.match(r"\| `(\w+)`", line).group(1) for line in table] == list_methods()
    for r, line in zip(as_json, table, strict=True):
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        assert cells[1] == r["paper"] and cells[6] == r["checked"] and cells[7] == r["cost"], r["method"]
        assert cells[3] == ", ".join(r["reads"]) and cells[4] == ", ".join(r["protocols"]), r["method"]


def test_every_method_has_an_entry_and_every_entry_a_method():
    names = set(list_methods())
    assert set(catalogue.entries()) <= names, f"entries for no method: {set(catalogue.entries()) - names}"
    for name in names:
        item = catalogue.entry(name)  # raises, naming the method, without an entry of its own or a parent's
        assert set(item) == set(catalogue.KEYS), name


def test_the_files_an_entry_names_exist(rows):
    for r in rows:
        assert r["tests"], f"{r['method']}: no test named"
        for path in r["fixtures"] + r["tests"]:
            file, _, key = path.partition("#")
            assert (REPO / file).is_file(), f"{r['method']}: {file} does not exist"
            if key:
                assert key in json.loads((REPO / file).read_text()), f"{r['method']}: {file} has no {key!r}"


def test_every_fixture_of_the_official_code_is_claimed_and_records_the_entrys_commit(rows):
    claimed = {f for r in rows for f in r["fixtures"]}
    on_disk = {f"tests/reference/fixtures/{p.name}" for p in (REPO / "tests/reference/fixtures").glob("*.pt")}
    on_disk.discard("tests/reference/fixtures/tiny_clip.pt")  # the model every fixture runs, not a method's
    # the parts of a method not registered yet, each claimed by its own test file
    parts: dict[str, str] = {}
    for fixture, test in parts.items():
        assert fixture.rsplit("/", 1)[1] in (REPO / test).read_text(), (fixture, test)
        on_disk.discard(fixture)
    assert on_disk <= claimed, f"fixtures no method claims: {sorted(on_disk - claimed)}"
    for r in rows:
        for path in r["fixtures"]:
            if path.endswith(".pt"):
                recorded = torch.load(REPO / path, weights_only=False).get("references", [])
                assert {"repo": r["reference"], "commit": r["commit"]} in recorded, (r["method"], path, recorded)
            else:
                file, _, key = path.partition("#")
                source = json.loads((REPO / file).read_text())["_source"][key]
                assert r["reference"] in source and f"commit {r['commit'][:7]}" in source, (r["method"], source)


def test_the_reference_is_the_one_the_docstring_names(rows):
    for r in rows:
        doc = __import__(r["module"], fromlist=["_"]).__doc__ or ""
        docs = doc + "".join(
            (c.__doc__ or "") + (__import__(c.__module__, fromlist=["_"]).__doc__ or "")
            for c in catalogue.lineage(get_method(r["method"]))
        )
        docs = re.sub(r"-\n\s*", "-", docs)  # a repository name broken across lines
        if r["reference"] is None:
            assert r["note"] and r["checked"] == "reading", r["method"]
            assert re.search(r"\b[Nn]o (official |public )?code", docs), f"{r['method']}: the docstring does not say so"
        else:
            assert r["reference"] in docs, f"{r['method']}: {r['reference']} is not named in its docstring"
            short = r["commit"] and r["commit"][:7]
            if short and "at commit" in doc:
                assert f"at commit {short}" in doc, r["method"]


def test_derived_columns_follow_the_class(rows):
    by_name = {r["method"]: r for r in rows}
    assert by_name["coop"]["checked"] == "fixture" and by_name["kapt"]["checked"] == "reading"
    assert "base2new (base only)" in by_name["linear_probe"]["protocols"]
    assert "crossdataset" not in by_name["coop_csc"]["protocols"]
    assert "unlabelled images" in by_name["tfup"]["reads"] and "needs `unlabelled`" in by_name["tfup"]["protocols"]
    assert "test views" in by_name["tpt"]["reads"] and by_name["tpt"]["cost"].startswith("test-time")
    assert by_name["maple"]["cost"].startswith("heavy") and "images (encoder in the loop)" in by_name["maple"]["reads"]
    assert "class descriptions" in by_name["msgcoop"]["reads"]
    assert by_name["zeroshot"]["cost"].startswith("none")
    assert by_name["coop"]["published"]["base2new"]["hm"] == pytest.approx(71.66)
    assert by_name["kgcoop_in_loop"]["reference"] == "htyao89/KgCoOp"  # the wrapped method's entry
