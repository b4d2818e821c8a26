"""The pocket-world design study (docs/pocket_world.md): validation accuracies and the pre-registered criterion.

    python scripts/pocket_world_study.py val --config results/<experiment>/config.json
        evaluate every finished base-to-new run of the experiment on each dataset's whole validation split
        and write results/<experiment>/val_summary.csv (method, dataset, shots, seed, base_acc, new_acc, hm)
    python scripts/pocket_world_study.py criterion results/<experiment>/val_summary.csv [more.csv ...]
        print, per file, the per-dataset table and whether the design passes the criterion

Run from the repository root with the project's environment (PYTHONPATH=src when not installed).
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
from pathlib import Path

log = logging.getLogger("pocket_world_study")

MIN_DATASETS = 4  # of 6: C1 and C2 must each hold on at least this many datasets


def val_summary(cfg: dict) -> list[dict]:
    """Every run of the experiment evaluated on its dataset's whole validation split."""
    import torch

    from vlprompt.experiment import grid
    from vlprompt.experiment.overrides import method_settings
    from vlprompt.methods import get_method
    from vlprompt.training.context import build_context
    from vlprompt.training.evaluate import evaluate
    from vlprompt.training.records import load_model_state

    if cfg["protocol"] != "base2new":
        raise SystemExit(f"the study is about base-to-new generalisation; this experiment is {cfg['protocol']!r}")
    torch.set_num_threads(cfg["train"]["threads"])
    rows = []
    for run in grid.runs(cfg):
        cls = get_method(run.method)
        if cls.inputs == "images":
            log.warning("skipping %s: image-in-the-loop methods are not evaluated here", run.method)
            continue
        shots = run.shots or cfg["shots"][0]  # zero-shot runs have no shots; their context needs none
        mcfg = cls.make_config(method_settings(cfg, run.method, run.dataset, shots))
        ctx, bank, classes = build_context(cfg, run.dataset, cls, shots, run.seed or 1, torch.device("cpu"))
        method = cls(mcfg, ctx)
        method.load_trainable_state(load_model_state(run.dir(cfg), torch.device("cpu"))["state"])
        val_rows = bank.rows("val")
        m = evaluate(
            method,
            val_rows,
            bank.take("val", [r[0] for r in val_rows]),
            classes,
            "base2new",
            ctx.classnames,
            torch.device("cpu"),
        )
        rows.append(
            {
                "method": run.method,
                "dataset": run.dataset,
                "shots": run.shots,
                "seed": run.seed,
                "base_acc": round(m["base_acc"], 4),
                "new_acc": round(m["new_acc"], 4),
                "hm": round(m["hm"], 4),
            }
        )
        log.info("%s %s seed %s: base %.1f new %.1f", run.dataset, run.method, run.seed, m["base_acc"], m["new_acc"])
    return rows


def criterion(rows: list[dict], coop: str = "coop", zeroshot: str = "zeroshot", kgcoop: str = "kgcoop") -> dict:
    """Per-dataset numbers and the verdict of the pre-registered criterion (docs/pocket_world.md)."""
    by = {}
    for r in rows:
        by.setdefault((r["dataset"], r["method"]), []).append((float(r["base_acc"]), float(r["new_acc"])))
    datasets = sorted({r["dataset"] for r in rows})
    table = []
    for d in datasets:
        missing = [m for m in (zeroshot, coop, kgcoop) if (d, m) not in by]
        if missing:
            raise ValueError(f"{d}: no runs of {missing}")
        zs_base, zs_new = by[(d, zeroshot)][0]
        coop_base = [b for b, _ in by[(d, coop)]]
        coop_new = [n for _, n in by[(d, coop)]]
        kg = by[(d, kgcoop)]
        row = {
            "dataset": d,
            "zs_base": zs_base,
            "zs_new": zs_new,
            "coop_base": sum(coop_base) / len(coop_base),
            "coop_new": sum(coop_new) / len(coop_new),
            "coop_spread": max(coop_new) - min(coop_new),
            "kg_base": sum(b for b, _ in kg) / len(kg),
            "kg_new": sum(n for _, n in kg) / len(kg),
        }
        row["c1"] = row["coop_new"] < row["zs_new"] - row["coop_spread"] and row["coop_base"] > row["zs_base"]
        row["c2"] = row["kg_new"] > row["coop_new"]
        table.append(row)
    n = len(table)
    mean = {
        k: sum(r[k] for r in table) / n for k in ("zs_base", "zs_new", "coop_base", "coop_new", "kg_base", "kg_new")
    }
    c1, c2 = sum(r["c1"] for r in table), sum(r["c2"] for r in table)
    passes = c1 >= MIN_DATASETS and c2 >= MIN_DATASETS and mean["kg_new"] > mean["coop_new"]
    return {"table": table, "mean": mean, "c1": c1, "c2": c2, "datasets": n, "passes": passes}


def markdown(result: dict, title: str) -> str:
    lines = [
        f"**{title}**: C1 on {result['c1']}/{result['datasets']}, C2 on {result['c2']}/{result['datasets']}, "
        f"KgCoOp − CoOp new (mean) {result['mean']['kg_new'] - result['mean']['coop_new']:+.1f}: "
        + ("passes" if result["passes"] else "does not pass"),
        "",
        "| dataset | zero-shot base / new | CoOp base / new (spread) | KgCoOp base / new | C1 | C2 |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["table"]:
        lines.append(
            f"| {r['dataset']} | {r['zs_base']:.1f} / {r['zs_new']:.1f} | {r['coop_base']:.1f} / "
            f"{r['coop_new']:.1f} ({r['coop_spread']:.1f}) | {r['kg_base']:.1f} / {r['kg_new']:.1f} | "
            f"{'yes' if r['c1'] else 'no'} | {'yes' if r['c2'] else 'no'} |"
        )
    m = result["mean"]
    lines.append(
        f"| mean | {m['zs_base']:.1f} / {m['zs_new']:.1f} | {m['coop_base']:.1f} / {m['coop_new']:.1f} | "
        f"{m['kg_base']:.1f} / {m['kg_new']:.1f} | | |"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("val", help="evaluate an experiment's runs on the validation split")
    s.add_argument("--config", required=True, help="results/<experiment>/config.json (or a YAML config)")
    s.add_argument("--out", help="default: results/<experiment>/val_summary.csv")
    s = sub.add_parser("criterion", help="the criterion on summary CSVs (val_summary.csv or summary.csv)")
    s.add_argument("summaries", nargs="+")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command == "val":
        from vlprompt.experiment.config import load_config

        cfg = load_config(args.config)
        out = Path(args.out or Path(cfg["results_root"]) / cfg["experiment"] / "val_summary.csv")
        rows = val_summary(cfg)
        with open(out, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        print(f"wrote {out} ({len(rows)} runs)")
        return 0
    for path in args.summaries:
        with open(path) as f:
            rows = [r for r in csv.DictReader(f) if r.get("protocol", "base2new") == "base2new"]
        print(markdown(criterion(rows), path), end="\n\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
