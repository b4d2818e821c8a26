"""Choose a method's epochs for the pocket world on validation images: train it at several epoch counts and print
the few-shot validation accuracy (base, new, HM) of each, beside the seconds it took.

The choice rule, fixed before any number is seen: the fewest epochs whose validation HM is within 1 point of the
best validation HM of the list. Test accuracy is printed for the record only and never enters the choice.

Runs are written to a temporary folder; the dataset, its classes and the few-shot subset are prepared where the
DAG puts them (keyed, shared by every experiment with the same settings).

Usage: .venv/bin/python scripts/epoch_cut_study.py --config config/pocket_inside_encoders.yaml --method clip_lora
    --dataset pocket_dark --seed 1 --epochs 5 10 20 40
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def choose(rows: list[dict], tolerance: float = 1.0) -> int:
    """The fewest epochs whose validation HM is within ``tolerance`` points of the best."""
    best = max(r["val_hm"] for r in rows)
    return min(r["epochs"] for r in rows if r["val_hm"] >= best - tolerance)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True)
    p.add_argument("--method", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--epochs", type=int, nargs="+", required=True)
    args = p.parse_args()

    import torch

    from vlprompt.cli import main as cli
    from vlprompt.data import registry, splits
    from vlprompt.experiment import grid
    from vlprompt.experiment.config import load_config
    from vlprompt.io import read_artefact_json
    from vlprompt.methods import get_method
    from vlprompt.training.context import method_context, training_classes
    from vlprompt.training.image_runs import evaluate_images
    from vlprompt.training.records import load_model_state
    from vlprompt.training.runs import run

    cfg = load_config(args.config)
    shots = cfg["shots"][0]
    for cmd in (["prepare"], ["classes"], ["fewshot", "--shots", str(shots), "--seed", str(args.seed)]):
        assert cli([*cmd, "--config", args.config, "--dataset", args.dataset, "--quiet"]) == 0, cmd
    classes = read_artefact_json(grid.classes_path(cfg, args.dataset))
    train_names = [classes["classnames"][i] for i in training_classes(cfg, classes)]
    val_rows = splits.read_fewshot(grid.fewshot_path(cfg, args.dataset, shots, args.seed))["val"]
    device = torch.device("cpu")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for epochs in args.epochs:
            settings = {**cfg.get("method_overrides", {}).get(args.method, {}), "epochs": epochs}
            run_cfg = {**cfg, "method_overrides": {**cfg.get("method_overrides", {}), args.method: settings}}
            t = time.perf_counter()
            out = Path(tmp) / f"e{epochs}"
            metrics = run(run_cfg, args.dataset, args.method, shots, args.seed, out, progress=False)
            seconds = time.perf_counter() - t
            cls = get_method(args.method)
            method = cls(cls.make_config(settings), method_context(run_cfg, args.dataset, train_names, device, 0))
            method.load_trainable_state(load_model_state(out, device)["state"])
            method.eval()
            backbone = method_context(run_cfg, args.dataset, train_names, device, 0).backbone
            val = evaluate_images(
                method,
                val_rows,
                registry.dataset_dir(cfg, args.dataset),
                backbone.preprocess,
                classes,
                cfg["protocol"],
                train_names,
                device,
            )
            rows.append(
                {
                    "epochs": epochs,
                    "seconds": seconds,
                    **{f"val_{k}": val[k] for k in ("base_acc", "new_acc", "hm")},
                    **{f"test_{k}": metrics[k] for k in ("base_acc", "new_acc", "hm")},
                }
            )
    print(f"{args.method} on {args.dataset}, {shots} shots, seed {args.seed} (validation chooses; test for the record)")
    columns = ("val_base_acc", "val_new_acc", "val_hm", "test_base_acc", "test_new_acc", "test_hm")
    print(f"{'epochs':>6} {'seconds':>8} " + " ".join(f"{c:>13}" for c in columns))
    for r in rows:
        print(f"{r['epochs']:>6} {r['seconds']:8.1f} " + " ".join(f"{r[c]:13.2f}" for c in columns))
    print(f"chosen: {choose(rows)} epochs (the fewest within 1 point of the best validation HM)")


if __name__ == "__main__":
    main()
