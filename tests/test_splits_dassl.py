"""The split reader, base/new split and few-shot sampler on CoOp's real split files, against a Dassl oracle.

How the oracle was checked: it re-implements, independently of ``vlprompt.data.splits``, what these
reference files do, read in KaiyangZhou/Dassl.pytorch (commit c61a1b5) and KaiyangZhou/CoOp (commit 0f24bd6):

- ``dassl/data/datasets/base_dataset.py``: ``DatasetBase.generate_fewshot_dataset`` groups items by label
  with ``split_dataset_by_label`` (a ``defaultdict(list)``, so labels in order of first appearance, items
  in file order) and, per label, takes ``random.sample(items, num_shots)`` from the *global* ``random``
  module, or all items when a label has fewer (``repeat=False``);
- ``dassl/utils/tools.py``: ``set_random_seed`` calls ``random.seed(seed)`` (with numpy/torch), which
  CoOp's ``train.py`` runs before the trainer builds the dataset;
- ``CoOp/datasets/*.py`` (e.g. ``caltech101.py``, ``dtd.py``): ``OxfordPets.read_split`` turns rows into
  items with ``int(label)``; the constructor calls ``generate_fewshot_dataset(train, num_shots=K)`` and
  then ``generate_fewshot_dataset(val, num_shots=min(K, 4))`` — the same random stream, train first —
  and afterwards ``OxfordPets.subsample_classes`` (labels sorted, ``m = ceil(n / 2)``, base = first m,
  new = the rest, each relabelled from 0 in sorted order, applied to train, val and test alike).
Nothing between ``set_random_seed`` and the sampling draws from ``random`` for datasets read from a
split file, so seeding right before sampling reproduces the reference subset.
"""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest

from vlprompt.data import splits

DATA = Path(__file__).parent / "data"
FILES = {"Caltech101": "split_zhou_Caltech101.json", "DTD": "split_zhou_DescribableTextures.json"}


# ---- the oracle: Dassl/CoOp's algorithm as read in their code -----------------------------------------


@dataclass(frozen=True)
class Datum:  # Dassl's Datum, reduced to what the split holds
    impath: str
    label: int
    classname: str


def dassl_read_split(path: Path) -> tuple[list[Datum], list[Datum], list[Datum]]:
    data = json.loads(path.read_text())
    return tuple([Datum(p, int(y), c) for p, y, c in data[k]] for k in ("train", "val", "test"))


def dassl_generate_fewshot_dataset(data_source: list[Datum], num_shots: int) -> list[Datum]:
    tracker = defaultdict(list)
    for item in data_source:
        tracker[item.label].append(item)
    dataset = []
    for _, items in tracker.items():
        dataset.extend(random.sample(items, num_shots) if len(items) >= num_shots else items)
    return dataset


def dassl_subsample_classes(*datasets: list[Datum], subsample: str) -> list[list[Datum]]:
    labels = sorted({item.label for item in datasets[0]})
    m = math.ceil(len(labels) / 2)
    selected = labels[:m] if subsample == "base" else labels[m:]
    relabel = {y: i for i, y in enumerate(selected)}
    return [[Datum(d.impath, relabel[d.label], d.classname) for d in ds if d.label in relabel] for ds in datasets]


def dassl_fewshot(path: Path, shots: int, seed: int) -> tuple[list[Datum], list[Datum]]:
    train, val, _ = dassl_read_split(path)
    state = random.getstate()
    try:
        random.seed(seed)  # set_random_seed(cfg.SEED)
        return (dassl_generate_fewshot_dataset(train, shots), dassl_generate_fewshot_dataset(val, min(shots, 4)))
    finally:
        random.setstate(state)  # leave the test process's global stream as it was


def as_rows(items: list[Datum]) -> list[list]:
    return [[d.impath, d.label, d.classname] for d in items]


# ---- reading ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,sizes,n_classes",
    [
        ("Caltech101", (4128, 1649, 2465), 100),
        ("DTD", (2820, 1128, 1692), 47),
    ],
)
def test_read_real_split_files(name, sizes, n_classes):
    split = splits.read_split(DATA / FILES[name])
    assert tuple(len(split[k]) for k in splits.SPLITS) == sizes
    names = splits.classnames(split["train"] + split["val"] + split["test"])
    assert len(names) == n_classes
    if name == "Caltech101":  # CoOp's renames, underscores kept in the file
        assert names[:3] == ["face", "leopard", "motorbike"] and "airplane" in names and "yin_yang" in names
        assert "BACKGROUND_Google" not in names and "Faces_easy" not in names
    else:
        assert names[0] == "banded" and names[-1] == "zigzagged"


# ---- base / new -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,n_base,n_new", [("Caltech101", 50, 50), ("DTD", 24, 23)])
def test_base_new_split_matches_dassl(name, n_base, n_new):
    path = DATA / FILES[name]
    split = splits.read_split(path)
    base, new = splits.base_new_labels(r[1] for r in split["train"])
    assert (len(base), len(new)) == (n_base, n_new)
    assert base == list(range(n_base)) and new == list(range(n_base, n_base + n_new))
    reference = dassl_read_split(path)
    for which, keep in (("base", base), ("new", new)):
        expected = dassl_subsample_classes(*reference, subsample=which)
        for part, exp in zip(splits.SPLITS, expected, strict=True):
            ours = splits.subsample_classes(split[part], keep)
            assert ours == as_rows(exp)
            assert {r[1] for r in ours} == set(range(len(keep)))


# ---- few-shot sampling --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FILES)
@pytest.mark.parametrize("shots", [1, 2, 4, 8, 16])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_fewshot_sample_is_dassls_subset(name, shots, seed):
    path = DATA / FILES[name]
    ours = splits.fewshot_sample(splits.read_split(path), shots, seed)
    train, val = dassl_fewshot(path, shots, seed)
    assert ours["train"] == as_rows(train)  # same items, same order
    assert ours["val"] == as_rows(val)
    n_classes = 100 if name == "Caltech101" else 47
    assert len(ours["train"]) == shots * n_classes
    assert len(ours["val"]) <= min(shots, 4) * n_classes


def test_fewshot_then_base_new_matches_dassl_order_of_operations():
    """Sample over all classes first, cut base/new afterwards (as CoOp's dataset constructors do)."""
    path = DATA / FILES["DTD"]
    split = splits.read_split(path)
    ours = splits.fewshot_sample(split, 16, 1)
    base, new = splits.base_new_labels(range(47))
    train, val = dassl_fewshot(path, 16, 1)
    ref_train, ref_val = dassl_subsample_classes(train, val, subsample="new")
    assert splits.subsample_classes(ours["train"], new) == as_rows(ref_train)
    assert splits.subsample_classes(ours["val"], new) == as_rows(ref_val)


def test_fewshot_seeds_differ_and_the_global_random_stream_is_untouched():
    split = splits.read_split(DATA / FILES["Caltech101"])
    random.seed(12345)
    before = random.random()
    random.seed(12345)
    a = splits.fewshot_sample(split, 4, 1)
    assert random.random() == before
    assert a != splits.fewshot_sample(split, 4, 2)
    assert a == splits.fewshot_sample(split, 4, 1)


def test_too_few_images_names_the_class_unless_allowed():
    split = splits.read_split(DATA / FILES["Caltech101"])
    counts = defaultdict(int)
    for _, label, _ in split["val"]:
        counts[label] += 1
    smallest = min(counts.values())  # Caltech101's val has classes with only a few images
    with pytest.raises(splits.SplitError, match=r"class '.+' \(label \d+\) has only \d+ train images"):
        splits.fewshot_sample(split, 1000, 1)
    lenient = splits.fewshot_sample(split, smallest + 1, 3, strict=False)
    train, val = dassl_fewshot(DATA / FILES["Caltech101"], smallest + 1, 3)
    assert lenient["train"] == as_rows(train) and lenient["val"] == as_rows(val)


def test_fewshot_is_deterministic_across_processes(tmp_path):
    """A fresh interpreter (other hash seed) draws the same subset; nothing depends on set/dict hashing."""
    path = DATA / FILES["DTD"]
    code = (
        "import json, sys; from vlprompt.data import splits; "
        "s = splits.read_split(sys.argv[1]); "
        "print(json.dumps(splits.fewshot_sample(s, int(sys.argv[2]), int(sys.argv[3]))))"
    )
    here = splits.fewshot_sample(splits.read_split(path), 8, 2)
    for hashseed in ("0", "4242"):
        env = {**os.environ, "PYTHONHASHSEED": hashseed}
        out = subprocess.run(
            [sys.executable, "-c", code, str(path), "8", "2"],
            capture_output=True,
            text=True,
            env=env,
            check=True,
            timeout=60,
        )
        assert json.loads(out.stdout) == here


def test_write_fewshot_round_trip(tmp_path):
    split = splits.read_split(DATA / FILES["DTD"])
    subset = splits.fewshot_sample(split, 2, 1)
    splits.write_fewshot(tmp_path / "fewshot.json", subset, 2, 1)
    stored = json.loads((tmp_path / "fewshot.json").read_text())
    assert stored["train"] == subset["train"] and stored["shots"] == 2 and stored["seed"] == 1
