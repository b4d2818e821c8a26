"""The pre-registered criterion of the pocket-world study (docs/pocket_world.md, scripts/pocket_world_study.py)."""

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "pocket_world_study.py"
spec = importlib.util.spec_from_file_location("pocket_world_study", SCRIPT)
study = importlib.util.module_from_spec(spec)
spec.loader.exec_module(study)


def rows(coop_new_by_dataset, kg_new=50.0, zs=(40.0, 50.0), coop_base=60.0):
    out = []
    for d, news in coop_new_by_dataset.items():
        out.append({"dataset": d, "method": "zeroshot", "base_acc": zs[0], "new_acc": zs[1]})
        for seed, new in enumerate(news, 1):
            out.append({"dataset": d, "method": "coop", "seed": seed, "base_acc": coop_base, "new_acc": new})
            out.append({"dataset": d, "method": "kgcoop", "seed": seed, "base_acc": 50.0, "new_acc": kg_new})
    return out


def test_coop_must_fall_by_more_than_its_seed_spread_on_four_datasets():
    falls = {f"d{i}": [40.0, 41.0, 42.0] for i in range(4)}  # mean 41 < 50 - spread 2
    near = {f"e{i}": [47.0, 49.0, 51.0] for i in range(2)}  # mean 49 > 50 - 4
    result = study.criterion(rows({**falls, **near}))
    assert (result["c1"], result["c2"], result["passes"]) == (4, 6, True)
    result = study.criterion(rows({**falls, **near, "d3": [36.0, 42.0, 45.0]}))  # spread 9 swallows the fall
    assert (result["c1"], result["passes"]) == (3, False)


def test_base_must_rise_and_kgcoop_must_keep_more():
    falls = {f"d{i}": [40.0, 41.0, 42.0] for i in range(6)}
    assert not study.criterion(rows(falls, coop_base=39.0))["passes"]  # CoOp's base accuracy below zero-shot's
    result = study.criterion(rows(falls, kg_new=40.0))  # KgCoOp keeps less than CoOp
    assert (result["c1"], result["c2"], result["passes"]) == (6, 0, False)
    assert "does not pass" in study.markdown(result, "x")
