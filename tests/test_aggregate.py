"""metrics.json, DVC's metrics file: each metric's mean per method and shots, checked against sums done by hand."""

import json
import math
from pathlib import Path

import pandas as pd

from vlprompt.analysis.aggregate import mean_metrics, write_metrics
from vlprompt.cli import main

REPO = Path(__file__).resolve().parents[1]
NAN = math.nan


def tiny_summary() -> pd.DataFrame:
    """Two methods, two datasets, two seeds; a linear probe has no new-class accuracy, nothing has all_acc."""
    rows = [
        # method, dataset, shots, seed, base_acc, new_acc, hm
        ("coop", "a", 2, 1, 60.0, 40.0, 48.0),
        ("coop", "a", 2, 2, 70.0, 50.0, 58.0),
        ("coop", "b", 2, 1, 50.0, 30.0, 37.5),
        ("coop", "b", 2, 2, 81.0, 61.0, 69.0),
        ("coop", "a", 16, 1, 70.0, 35.0, 46.0),
        ("coop", "a", 16, 2, 71.0, 36.0, 47.0),
        ("coop", "b", 16, 1, 71.0, 36.0, 48.0),
        ("linear_probe", "a", 2, 1, 55.0, NAN, NAN),
        ("linear_probe", "b", 2, 1, 59.0, NAN, NAN),
    ]
    df = pd.DataFrame(rows, columns=["method", "dataset", "shots", "seed", "base_acc", "new_acc", "hm"])
    df["all_acc"] = NAN
    return df.sample(frac=1, random_state=0)  # the order of the rows does not matter


def test_means_per_method_and_shots_by_hand():
    assert mean_metrics(tiny_summary()) == {
        "coop": {
            "2shot": {
                "base_acc": 65.25,  # (60 + 70 + 50 + 81) / 4 = 261 / 4
                "new_acc": 45.25,  # (40 + 50 + 30 + 61) / 4 = 181 / 4
                "hm": 53.125,
            },  # (48 + 58 + 37.5 + 69) / 4 = 212.5 / 4
            "16shot": {
                "base_acc": 70.6667,  # 212 / 3 = 70.666..., rounded to 4 decimals
                "new_acc": 35.6667,  # 107 / 3
                "hm": 47.0,
            },  # 141 / 3
        },
        # no new-class accuracy and no H: left out, not NaN (JSON has no NaN)
        "linear_probe": {"2shot": {"base_acc": 57.0}},
    }


def test_metrics_file_has_a_stable_readable_order(tmp_path):
    path = tmp_path / "metrics.json"
    write_metrics(tiny_summary(), path)
    text = path.read_text()
    write_metrics(tiny_summary().sample(frac=1, random_state=1), tmp_path / "again.json")
    assert (tmp_path / "again.json").read_text() == text  # same table, same bytes
    data = json.loads(text)
    assert list(data) == ["coop", "linear_probe"]
    assert list(data["coop"]) == ["2shot", "16shot"]  # by shots, not as strings ("16" < "2")
    assert list(data["coop"]["2shot"]) == ["base_acc", "new_acc", "hm"]
    assert text.endswith("}\n")


def test_aggregate_command_writes_metrics_next_to_the_summary(tmp_path):
    runs = []
    for seed, (base, new) in enumerate([(60.0, 40.0), (70.0, 50.0)], start=1):
        path = tmp_path / "runs" / f"seed{seed}" / "metrics.json"
        path.parent.mkdir(parents=True)
        path.write_text(
            json.dumps(
                {
                    "method": "coop",
                    "protocol": "base2new",
                    "dataset": "pocket_dark",
                    "shots": 2,
                    "seed": seed,
                    "base_acc": base,
                    "new_acc": new,
                    "hm": 2 * base * new / (base + new),
                }
            )
        )
        runs.append(str(path))
    out = tmp_path / "tiny"
    code = main(
        [
            "aggregate",
            "--config",
            str(REPO / "tests" / "configs" / "pocket_tiny.yaml"),
            "--summary",
            str(out / "summary.csv"),
            "--stats",
            str(out / "stats.csv"),
            "--metrics-json",
            str(out / "metrics.json"),
            *runs,
        ]
    )
    assert code == 0
    # H: 2*60*40/100 = 48, 2*70*50/120 = 58.333...; mean 53.1667
    assert json.loads((out / "metrics.json").read_text()) == {
        "coop": {"2shot": {"base_acc": 65.0, "new_acc": 45.0, "hm": 53.1667}}
    }
    assert (out / "summary.csv").exists() and (out / "stats.csv").exists()
