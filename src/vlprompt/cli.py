"""Command line: ``vlprompt <command>`` / ``python -m vlprompt <command>``; every DAG rule calls one.

Heavy imports (torch, open_clip) happen inside the commands that need them, so listing commands
and the data rules start fast.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

log = logging.getLogger("vlprompt")


def _cfg(args):
    from vlprompt.config import load_config

    return load_config(args.config)


def cmd_methods(args) -> None:
    from vlprompt.methods import get_method, list_methods

    for name in list_methods():
        m = get_method(name)
        kind = "cached features" if m.inputs == "features" else "image encoder in the loop"
        print(f"{name:22s} {m.description}  [{kind}]\n{'':22s} {m.paper}")


def cmd_datasets(args) -> None:
    from vlprompt.data import registry

    if args.config:  # where that experiment puts data and downloads (data_root, download block)
        from vlprompt.config import load_config

        cfg = load_config(args.config)
        if args.data_root:
            cfg["data_root"] = args.data_root
    else:
        cfg = {"data_root": args.data_root or "data"}
    for r in registry.status_table(cfg):
        print(f"{r['name']:22s} {r['status']:11s} {r['path']}  ({r['detail']})")


def cmd_prepare(args) -> None:
    """Generate a pocket dataset, or fetch, verify, extract and split a real one as the config's
    ``download`` block says (mirror, downloads_root, split files, retries); print its split file."""
    from vlprompt.data.registry import prepare

    print(prepare(_cfg(args), args.dataset, progress=not args.quiet))


def cmd_split(args) -> None:
    """Write the base/new class file and every few-shot subset (shots × seeds) of one dataset."""
    from vlprompt import grid
    from vlprompt.data import registry, splits

    cfg = _cfg(args)
    split = splits.read_split(registry.split_path(cfg, args.dataset))
    splits.write_classes(grid.classes_path(cfg, args.dataset), split)
    strict = not cfg["fewshot"].get("allow_fewer", False)
    for shots in cfg["shots"]:
        for seed in cfg["seeds"]:
            path = grid.fewshot_path(cfg, args.dataset, shots, seed)
            if path.exists():  # sampled once per (dataset, shots, seed), never re-drawn
                continue
            splits.write_fewshot(path, splits.fewshot_sample(split, shots, seed, strict), shots, seed)


def cmd_extract(args) -> None:
    import torch

    from vlprompt import features, grid
    from vlprompt.backbone import load_backbone_from_config
    from vlprompt.data import registry, splits
    from vlprompt.io import read_json

    cfg = _cfg(args)
    fcfg = cfg["features"]
    torch.set_num_threads(cfg["train"]["threads"])
    device = features.pick_device(fcfg["device"])
    backbone = load_backbone_from_config(cfg, device)
    split = splits.read_split(registry.split_path(cfg, args.dataset))
    subsets = [read_json(p) for p in grid.fewshot_paths(cfg, args.dataset)]
    specs = [features.ExtractionSpec("test", split["test"], 1),
             features.ExtractionSpec("val", features.union_rows([s["val"] for s in subsets]), 1),
             features.ExtractionSpec("train_views", features.union_rows([s["train"] for s in subsets]),
                                     fcfg["train_views"])]
    out = grid.features_dir(cfg, args.dataset)
    for spec in specs:
        features.extract_split(backbone, registry.dataset_dir(cfg, args.dataset), spec, out,
                               batch_size=fcfg["batch_size"], workers=fcfg["workers"], device=device,
                               scale_min=fcfg["crop_scale_min"], progress=not args.quiet)


def cmd_train(args) -> None:
    from vlprompt.train import run

    metrics = run(_cfg(args), args.dataset, args.method, args.shots, args.seed, args.out,
                  progress=not args.quiet, stop_after=args.stop_after)
    keys = [k for k in ("base_acc", "new_acc", "hm", "all_acc") if k in metrics]
    print(" ".join(f"{k}={metrics[k]:.2f}" for k in keys))


def cmd_train_group(args) -> None:
    from vlprompt.train import run_many

    cfg = _cfg(args)
    runs = [(k, s) for k in args.shots for s in args.seeds]
    for m in run_many(cfg, args.dataset, args.method, runs, progress=not args.quiet):
        keys = [k for k in ("base_acc", "new_acc", "hm", "all_acc") if k in m]
        print(f"{m['shots']}shot seed{m['seed']}: " + " ".join(f"{k}={m[k]:.2f}" for k in keys))


def cmd_evaluate_transfer(args) -> None:
    from vlprompt.train import evaluate_transfer

    m = evaluate_transfer(_cfg(args), args.dataset, args.method, args.shots, args.seed, args.target, args.out)
    print(f"{args.dataset} -> {args.target}: all_acc={m['all_acc']:.2f}")


def cmd_aggregate(args) -> None:
    from vlprompt.aggregate import aggregate

    aggregate(_cfg(args), [Path(p) for p in args.metrics], Path(args.summary), Path(args.stats),
              Path(args.metrics_json) if args.metrics_json else None)


def cmd_report(args) -> None:
    from vlprompt import report

    cfg = _cfg(args)
    report.render(Path(args.summary), Path(args.stats), Path(args.out), cfg)


def cmd_pretrain(args) -> None:
    import dataclasses

    import torch

    from vlprompt.pretrain import PretrainConfig, pretrain

    torch.set_num_threads(args.threads)
    overrides = {k: v for k, v in (("steps", args.steps), ("seed", args.seed)) if v is not None}
    pretrain(Path(args.out), dataclasses.replace(PretrainConfig(), **overrides))


def cmd_fetch_weights(args) -> None:
    """Download open_clip weights into the local cache (run where there is network)."""
    from vlprompt.backbone import load_backbone

    bb = load_backbone(args.model, args.pretrained)
    print(f"cached {bb.id} ({bb.pretrained})")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vlprompt", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    def add(name, fn, help, config=True):
        s = sub.add_parser(name, help=help, description=help)
        s.set_defaults(fn=fn)
        if config:
            s.add_argument("--config", required=True, help="experiment config (YAML or the DAG's resolved JSON)")
        s.add_argument("--quiet", action="store_true", help="no progress bars")
        return s

    add("methods", cmd_methods, "list the methods with a one-line description and paper", config=False)
    s = add("datasets", cmd_datasets, "list every dataset and its status on this machine", config=False)
    s.add_argument("--config", help="read data_root and the download block (downloads_root) from this config")
    s.add_argument("--data-root", help="where prepared datasets go (default: the config's, else data)")
    s = add("prepare", cmd_prepare, "download/generate, verify and prepare one dataset")
    s.add_argument("--dataset", required=True)
    s = add("split", cmd_split, "write the base/new classes and the few-shot subsets of one dataset")
    s.add_argument("--dataset", required=True)
    s = add("extract", cmd_extract, "extract the frozen image features of one dataset")
    s.add_argument("--dataset", required=True)
    s = add("train", cmd_train, "train and evaluate one method × dataset × shots × seed")
    for a in ("--dataset", "--method", "--out"):
        s.add_argument(a, required=True)
    s.add_argument("--shots", type=int, required=True)
    s.add_argument("--seed", type=int, required=True)
    s.add_argument("--stop-after", type=int, default=None, help=argparse.SUPPRESS)  # tests: simulate a kill
    s = add("train-group", cmd_train_group, "train every shots × seed run of one method on one dataset")
    for a in ("--dataset", "--method"):
        s.add_argument(a, required=True)
    s.add_argument("--shots", type=int, nargs="+", required=True)
    s.add_argument("--seeds", type=int, nargs="+", required=True)
    s = add("evaluate-transfer", cmd_evaluate_transfer, "evaluate a trained run on another dataset")
    for a in ("--dataset", "--method", "--target", "--out"):
        s.add_argument(a, required=True)
    s.add_argument("--shots", type=int, required=True)
    s.add_argument("--seed", type=int, required=True)
    s = add("aggregate", cmd_aggregate, "collect run metrics into summary.csv and run the statistics")
    s.add_argument("--summary", required=True)
    s.add_argument("--stats", required=True)
    s.add_argument("--metrics-json", help="also write each metric's mean per method and shots (DVC's metrics)")
    s.add_argument("metrics", nargs="+")
    s = add("report", cmd_report, "render reports/<experiment>/ (report.md, index.html, figures)")
    for a in ("--summary", "--stats", "--out"):
        s.add_argument(a, required=True)
    s = add("pretrain-pocket", cmd_pretrain, "pretrain the tiny pocket CLIP", config=False)
    s.add_argument("--out", required=True)
    s.add_argument("--steps", type=int)
    s.add_argument("--seed", type=int)
    s.add_argument("--threads", type=int, default=1)
    s = add("fetch-weights", cmd_fetch_weights, "download open_clip weights into the cache", config=False)
    s.add_argument("--model", required=True)
    s.add_argument("--pretrained", required=True)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from vlprompt.backbone import BackboneError
    from vlprompt.config import ConfigError
    from vlprompt.data.download import DownloadError
    from vlprompt.data.registry import DatasetError
    from vlprompt.data.splits import SplitError
    from vlprompt.methods.base import MethodError

    # expected failures (bad config, missing or corrupt data, dead link, unsafe archive) get their message,
    # which names the file and the fix, and no traceback; ChecksumError and UnsafeArchiveError are DownloadErrors
    expected = (ConfigError, DatasetError, SplitError, MethodError, BackboneError, DownloadError, FileNotFoundError)
    try:
        args.fn(args)
    except expected as err:
        print(f"vlprompt {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
