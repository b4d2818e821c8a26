"""Recompute DVMI's preset choice from the validation accuracies an ablation's runs recorded.

The rule (``vlprompt.methods.dual_view.choose_default``, fixed before the runs): among the candidate readings,
the highest mean over datasets of the mean over seeds of the validation HM (``val_hm`` in each run's
``metrics.json``: the harmonic mean of base and new accuracy on the few-shot val split). Test accuracies are
printed beside it for the record and play no part in the choice.

    python scripts/select_dvmi_default.py /tmp/dvmi/results/dvmi_ablation
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vlprompt.methods import MethodError
from vlprompt.methods.dual_view import CANDIDATES, choose_default


def collect(experiment_dir: Path, methods) -> dict[str, dict[str, dict[str, list[float]]]]:
    """``{metric: {method: {dataset: [value per seed]}}}`` of every run of ``methods`` under ``experiment_dir``."""
    out: dict = {}
    for path in sorted(experiment_dir.glob("runs/*/*/*shot/seed*/metrics.json")):
        m = json.loads(path.read_text())
        if m["method"] not in methods:
            continue
        for key in ("val_hm", "val_base_acc", "val_new_acc", "hm", "base_acc", "new_acc"):
            out.setdefault(key, {}).setdefault(m["method"], {}).setdefault(m["dataset"], []).append(m[key])
        # DVMI's diagnostics: metrics.json's method_info (``diagnostics`` in runs made before the hook existed)
        for key, value in (m.get("method_info") or m.get("diagnostics") or {}).items():
            if isinstance(value, float):
                out.setdefault(key, {}).setdefault(m["method"], {}).setdefault(m["dataset"], []).append(value)
    return out


def mean_over_datasets(cells: dict[str, list[float]]) -> float:
    return sum(sum(v) / len(v) for v in cells.values()) / len(cells)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment_dir", type=Path, help="results/<experiment> of the ablation")
    parser.add_argument(
        "--also",
        nargs="*",
        default=["coop", "kgcoop", "prograd", "dvmi_mixup_only", "dvmi_text_noaug"],
        help="other methods to show (not candidates)",
    )
    args = parser.parse_args(argv)
    values = collect(args.experiment_dir, set(CANDIDATES) | set(args.also))
    if "val_hm" not in values:
        print(f"no runs with validation metrics under {args.experiment_dir}", file=sys.stderr)
        return 1
    try:
        choice, _ = choose_default(values["val_hm"])  # only the candidates count
    except MethodError as err:
        print(f"{args.experiment_dir}: {err}", file=sys.stderr)
        return 1
    columns = [
        "val_base_acc",
        "val_new_acc",
        "val_hm",
        "base_acc",
        "new_acc",
        "hm",
        "mi_estimate",
        "mi_bound",
        "cos_soft_hand",
    ]
    print("| reading | candidate | " + " | ".join(columns) + " |")
    print("|---|---|" + "---|" * len(columns))
    for method in [*CANDIDATES, *args.also]:
        if method not in values["val_hm"]:
            continue
        cells = [f"{mean_over_datasets(values[c][method]):.2f}" if method in values.get(c, {}) else "" for c in columns]
        mark = "**chosen**" if method == choice else ("yes" if method in CANDIDATES else "no")
        print(f"| {method} | {mark} | " + " | ".join(cells) + " |")
    print(f"\nchosen by mean validation HM over {len(values['val_hm'][choice])} datasets: {choice}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
