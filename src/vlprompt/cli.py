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
    """The experiment's config: ``--config``, else the one the running Snakemake resolved ($VLPROMPT_CONFIG)."""
    import os

    from vlprompt.experiment.config import ConfigError, load_config
    from vlprompt.pipeline.workflow import CONFIG_ENV

    path = args.config or os.environ.get(CONFIG_ENV)
    if not path:
        raise ConfigError(
            f"no config: pass --config <file> (a YAML config or an experiment's resolved "
            f"results/<experiment>/config.json), or run through snakemake, which sets ${CONFIG_ENV}"
        )
    cfg = load_config(path, planned=not args.config)  # $VLPROMPT_CONFIG: the plan's, names checked there
    from vlprompt.io import register_folder_keys

    register_folder_keys(  # a full disk's error names the key that moves the folder
        {
            "data_root": cfg["data_root"],
            "results_root": cfg["results_root"],
            "reports_root": cfg["reports_root"],
            "download.downloads_root": cfg["download"].get("downloads_root"),
        }
    )
    key = getattr(args, "key", None)
    if key is not None:
        from vlprompt.experiment.grid import dataset_key

        if dataset_key(cfg, args.dataset) != key:
            raise ConfigError(
                f"this job was planned for {key!r} but {path} gives dataset {args.dataset!r} the "
                f"key {dataset_key(cfg, args.dataset)!r}: the config changed under a running "
                f"pipeline; run snakemake again"
            )
    return cfg


def cmd_methods(args) -> None:
    from vlprompt.methods import get_method, list_methods

    if getattr(args, "format", "text") != "text":
        from vlprompt.analysis import catalogue

        rows = catalogue.catalogue()
        print(catalogue.to_markdown(rows) if args.format == "markdown" else catalogue.to_json(rows), end="")
        return
    for name in list_methods():
        m = get_method(name)
        kind = "cached features" if m.inputs == "features" else "image encoder in the loop"
        kind += "".join(
            f" + {what}"
            for flag, what in (
                (m.reads_unlabelled, "unlabelled images"),
                (m.reads_test_views, "test views"),
                (m.reads_multitask_prompt, "multitask prompt"),
                (m.reads_meta_prompt, "meta-learned prompt"),
                (m.reads_new_classnames, "new-class names under base2new"),
            )
            if flag
        )
        print(f"{name:22s} {m.description}  [{kind}]\n{'':22s} {m.paper}")


def cmd_datasets(args) -> None:
    from vlprompt.data import registry

    if args.config:  # where that experiment puts data and downloads (data_root, download block)
        from vlprompt.experiment.config import load_config

        cfg = load_config(args.config)
        if args.data_root:
            cfg["data_root"] = args.data_root
    else:
        cfg = {"data_root": args.data_root or "data"}
    if args.check:
        check_dataset(cfg, args.check, args.quiet)
        return
    for r in registry.status_table(cfg):
        print(f"{r['name']:22s} {r['status']:11s} {r['path']}  ({r['detail']})")


def check_dataset(cfg: dict, name: str, quiet: bool = False) -> None:
    """``datasets --check NAME``: a user dataset's check (every finding; exit 1 on an error), else its status."""
    from vlprompt.data import registry, user

    if not user.is_user(cfg, name):
        registry.get_dataset(name, cfg)
        rows = [r for r in registry.status_table(cfg) if r["name"] == name]
        print(
            f"{name}: {rows[0]['status']} at {rows[0]['path']} ({rows[0]['detail']}); published datasets are checked "
            "against their checksums by `prepare`"
        )
        return
    try:
        report = user.check(cfg, name, workers=user.check_workers(cfg))
    except user.UserDatasetError as err:
        raise registry.DatasetError(str(err)) from None
    print(user.format_report(report))
    if report["errors"]:
        raise SystemExit(1)


def cmd_prepare(args) -> None:
    """Generate a pocket dataset, or fetch, verify, extract and split a real one as the config's
    ``download`` block says (mirror, downloads_root, split files, retries); print its split file."""
    from vlprompt.data.registry import prepare

    print(prepare(_cfg(args), args.dataset, progress=not args.quiet))


def cmd_classes(args) -> None:
    """Write the base/new class file of one prepared dataset."""
    import functools

    from vlprompt.data import registry, splits, user
    from vlprompt.experiment import grid

    cfg = _cfg(args)
    split = splits.read_split(registry.split_path(cfg, args.dataset))
    base_new = None
    if user.is_user(cfg, args.dataset):  # the entry's explicit base/new classes, if any
        base_new = functools.partial(user.base_new, cfg, args.dataset)
    splits.write_classes(args.out or grid.classes_path(cfg, args.dataset), split, base_new)


def cmd_fewshot(args) -> None:
    """Sample one few-shot subset (shots, seed) of one dataset, once: an existing subset is never re-drawn."""
    from vlprompt.data import registry, splits
    from vlprompt.experiment import grid
    from vlprompt.experiment.config import ConfigError

    cfg = _cfg(args)
    path = Path(args.out) if args.out else grid.fewshot_path(cfg, args.dataset, args.shots, args.seed)
    allow_fewer = cfg["fewshot"].get("allow_fewer", False)
    if path.exists():
        splits.read_fewshot(path, allow_fewer)  # checks it
        return
    split = splits.read_split(registry.split_path(cfg, args.dataset))
    from vlprompt.experiment.checks import fewshot_problem

    problem = fewshot_problem(cfg, args.dataset, split, args.shots)  # the line `snakemake -n` prints
    if problem:
        raise ConfigError(problem)
    subset = splits.fewshot_sample(split, args.shots, args.seed, strict=not allow_fewer)
    splits.write_fewshot(path, subset, args.shots, args.seed)


def generated_views_stem(cfg: dict, dataset: str, views: int, generator: str) -> Path:
    """The bank path (without suffix) of ``dataset``'s test images in ``views`` views, generated by ``generator``."""
    from vlprompt.experiment import grid

    return Path(
        grid.TEST_GENERATED.format(
            results=cfg["results_root"],
            backbone=grid.backbone_key(cfg),
            dkey=grid.dataset_key(cfg, dataset),
            views=views,
            generator=generator,
        )
    )


def cmd_extract(args) -> None:
    """Extract the test features of one dataset, or (with --shots and --seed) a few-shot subset's, or (--part) the
    whole training split or the test images in views."""
    import dataclasses

    import torch

    from vlprompt.clip import features
    from vlprompt.clip.backbone import load_backbone_from_config
    from vlprompt.data import registry, splits
    from vlprompt.experiment import grid

    cfg = _cfg(args)
    fcfg = cfg["features"]
    scale_min = fcfg["crop_scale_min"]
    torch.set_num_threads(cfg["train"]["threads"])
    if (args.shots is None) != (args.seed is None):
        raise SystemExit("extract: give both --shots and --seed, or neither (the test features)")
    if args.part != "eval" and args.shots is not None:
        raise SystemExit(f"extract: --part {args.part} is a part of the dataset's bank; it takes no --shots, --seed")
    takes = {
        "test_views": ("views", "crop"),
        "generated_views": ("views", "wrong_class_rate"),
        "generated_folder": ("views",),
    }.get(args.part, ())
    if any((getattr(args, a) is not None) != (a in takes) for a in ("views", "crop", "wrong_class_rate")):
        raise SystemExit(
            "extract: --part test_views takes --views and --crop, generated_views --views and --wrong-class-rate, "
            "generated_folder --views, the other parts none of them"
        )
    if args.part == "train":  # the whole training split, un-augmented (the unlabelled images of `unlabelled: train`)
        split = splits.read_split(registry.split_path(cfg, args.dataset))
        specs = [features.ExtractionSpec("train", split["train"], 1)]
        out = grid.features_dir(cfg, args.dataset)
    elif args.part == "test_views":  # every test image: the original and views - 1 augmented views
        split = splits.read_split(registry.split_path(cfg, args.dataset))
        stem = Path(
            grid.TEST_VIEWS.format(
                results=cfg["results_root"],
                backbone=grid.backbone_key(cfg),
                dkey=grid.dataset_key(cfg, args.dataset),
                views=args.views,
                crop=f"{args.crop:g}",
            )
        )
        specs = [features.ExtractionSpec("test_views", split["test"], args.views, name=stem.name)]
        out, scale_min = stem.parent, args.crop
    elif args.part == "generated_views":  # every test image in --views views drawn by the pocket renderer
        spec_ds = registry.get_dataset(args.dataset, cfg)
        if spec_ds.kind != "pocket" or spec_ds.style is None:
            raise SystemExit(
                f"extract: generated views are drawn by the pocket renderer; {args.dataset} is not a pocket dataset: "
                f"name a folder of its generated views in generated_images.{args.dataset}.by_image"
            )
        split = splits.read_split(registry.split_path(cfg, args.dataset))
        stem = generated_views_stem(cfg, args.dataset, args.views, grid.generator_key(args.wrong_class_rate))
        world = registry.pocket_world(cfg)
        generator = {
            "name": "pocket_variation",
            "world": dataclasses.asdict(world),
            "style": spec_ds.style,
            "wrong_class_rate": args.wrong_class_rate,
        }
        specs = [features.ExtractionSpec("generated_views", split["test"], args.views, stem.name, generator=generator)]
        out = stem.parent
    elif args.part == "generated_folder":  # every test image in --views views read from the config's folder
        from vlprompt.data import generated_images

        root = generated_images.folder(cfg, args.dataset, "by_image")
        if root is None:
            raise SystemExit(
                f"extract: the config names no folder of generated views for {args.dataset}; set "
                f"generated_images.{args.dataset}.by_image"
            )
        split = splits.read_split(registry.split_path(cfg, args.dataset))
        generated_images.view_paths(root, [r[0] for r in split["test"]], args.views)  # every view there: one line
        stem = generated_views_stem(
            cfg, args.dataset, args.views, grid.generated_views_generator(cfg, args.dataset, 0.0)
        )
        generator = {"name": "folder", "folder": str(root), "key": generated_images.folder_key(root)}
        specs = [features.ExtractionSpec("generated_views", split["test"], args.views, stem.name, generator=generator)]
        out = stem.parent
    elif args.shots is None:  # the evaluation splits: every test image, and the whole validation split
        split = splits.read_split(registry.split_path(cfg, args.dataset))
        specs = [features.ExtractionSpec("test", split["test"], 1), features.ExtractionSpec("val", split["val"], 1)]
        out = grid.features_dir(cfg, args.dataset)
    else:  # a few-shot subset: its validation images, its training images in V views and un-augmented
        subset = splits.read_fewshot(
            grid.fewshot_path(cfg, args.dataset, args.shots, args.seed), cfg["fewshot"].get("allow_fewer", False)
        )
        stem = grid.fewshot_features(cfg, args.dataset, args.shots, args.seed)
        out = stem.parent
        specs = [
            features.ExtractionSpec("val", sorted(subset["val"]), 1, name=f"{stem.name}.val"),
            features.ExtractionSpec("plain", sorted(subset["train"]), 1, name=f"{stem.name}.plain"),
            features.ExtractionSpec(
                "train_views", sorted(subset["train"]), fcfg["train_views"], name=f"{stem.name}.train"
            ),
        ]
    device = features.pick_device(fcfg["device"])
    backbone = load_backbone_from_config(cfg, device)
    root = registry.image_root(cfg, args.dataset)
    exif = registry.reads_exif(cfg, args.dataset)
    for spec in specs:
        features.extract_split(
            backbone,
            root,
            dataclasses.replace(spec, exif=exif),
            out,
            batch_size=fcfg["batch_size"],
            workers=fcfg["workers"],
            device=device,
            scale_min=scale_min,
            progress=not args.quiet,
            reuse=True,
        )


def cmd_layer_statistics(args) -> None:
    """The layer-statistics bank of one dataset's part: its test images, its training split (``--part train``), or
    (``--part fewshot`` with --shots and --seed) a few-shot subset's training views and validation images."""
    import dataclasses

    import torch

    from vlprompt.clip import features
    from vlprompt.clip.backbone import load_backbone_from_config
    from vlprompt.clip.layer_statistics import extract_statistics
    from vlprompt.data import registry, splits
    from vlprompt.experiment import grid

    cfg = _cfg(args)
    fcfg = cfg["features"]
    torch.set_num_threads(cfg["train"]["threads"])
    if (args.part == "fewshot") != (args.shots is not None and args.seed is not None):
        raise SystemExit("layer-statistics: --part fewshot needs --shots and --seed (and only it takes them)")
    out = grid.layer_statistics_dir(cfg, args.dataset)
    if args.part == "fewshot":  # the feature bank's training views (same transform, same seeds) and val images
        subset = splits.read_fewshot(
            grid.fewshot_path(cfg, args.dataset, args.shots, args.seed), cfg["fewshot"].get("allow_fewer", False)
        )
        stem = grid.fewshot_layer_statistics(cfg, args.dataset, args.shots, args.seed)
        out = stem.parent
        specs = [
            features.ExtractionSpec("val", sorted(subset["val"]), 1, name=f"{stem.name}.val"),
            features.ExtractionSpec(
                "train_views", sorted(subset["train"]), fcfg["train_views"], name=f"{stem.name}.train"
            ),
        ]
    else:  # every image of the split, in the split file's order (as the feature bank's test and train parts)
        split = splits.read_split(registry.split_path(cfg, args.dataset))
        specs = [features.ExtractionSpec(args.part, split[args.part], 1)]
    device = features.pick_device(fcfg["device"])
    backbone = load_backbone_from_config(cfg, device)
    exif = registry.reads_exif(cfg, args.dataset)
    for spec in specs:
        extract_statistics(
            backbone,
            registry.image_root(cfg, args.dataset),
            dataclasses.replace(spec, exif=exif),
            out,
            batch_size=fcfg["batch_size"],
            workers=fcfg["workers"],
            device=device,
            scale_min=fcfg["crop_scale_min"],
            progress=not args.quiet,
        )


def cmd_unlock_stale(args) -> None:
    """Remove a stale Snakemake lock (left by a run that was killed) if no snakemake works here any more."""
    from vlprompt.pipeline.run_registry import describe, running, unlock_stale

    done = unlock_stale(args.directory)
    if done:
        print(f"vlprompt: {done}")
    for rec in running(args.directory):
        print(f"vlprompt: still running in this folder: {describe(rec)}")


def cmd_check_config(args) -> int:
    """Check an experiment config file: YAML syntax (line and column), the schema, names, what the plan knows;
    one line per problem, then exit 2; ``ok`` and exit 0 when there is none."""
    from vlprompt.experiment.checks import file_problems

    problems = file_problems(args.file)
    for line in problems:
        print(f"vlprompt check-config: {line}", file=sys.stderr)
    if problems:
        return 2
    print(f"vlprompt check-config: {args.file}: ok")
    return 0


def cmd_cluster_check(args) -> None:
    """Check a SLURM profile against the cluster; print what does not fit and the flags that fix it."""
    from vlprompt.pipeline.cluster import ClusterError, main

    extra = args.snakemake_args[1:] if args.snakemake_args[:1] == ["--"] else args.snakemake_args
    try:
        code = main(args.profile, extra, flags_only=args.flags)
    except ClusterError as err:
        print(f"vlprompt cluster-check: error: {err}", file=sys.stderr)
        code = 2
    if code:
        raise SystemExit(code)


def cmd_train(args) -> None:
    from vlprompt.training.runs import run

    metrics = run(
        _cfg(args),
        args.dataset,
        args.method,
        args.shots,
        args.seed,
        args.out,
        progress=not args.quiet,
        stop_after=args.stop_after,
    )
    keys = [k for k in ("base_acc", "new_acc", "hm", "all_acc") if k in metrics]
    print(" ".join(f"{k}={metrics[k]:.2f}" for k in keys))


def cmd_train_group(args) -> None:
    from vlprompt.training.runs import run_many

    cfg = _cfg(args)
    runs = [(k, s) for k in args.shots for s in args.seeds]
    for m in run_many(cfg, args.dataset, args.method, runs, progress=not args.quiet):
        keys = [k for k in ("base_acc", "new_acc", "hm", "all_acc") if k in m]
        print(f"{m['shots']}shot seed{m['seed']}: " + " ".join(f"{k}={m[k]:.2f}" for k in keys))


def cmd_train_multitask(args) -> None:
    from vlprompt.training.multitask import train_multitask

    m = train_multitask(_cfg(args), args.method, args.shots, args.seed, args.out, progress=not args.quiet)
    losses = m["train"]["loss_history"]
    print(
        f"{args.method}: multitask prompt on {', '.join(m['sources'])} ({m['classes']} classes, {m['images']} images)"
        + (f", last epoch's loss {losses[-1]:.4f}" if losses else "")
    )


def cmd_train_meta_prompt(args) -> None:
    from vlprompt.training.meta_prompt import train_meta_prompt

    m = train_meta_prompt(_cfg(args), args.stage, args.out, progress=not args.quiet)
    losses = m["train"]["query_loss_history"]
    print(
        f"{m['method']}: meta stage {args.stage} on {m['pool']['pairs']} image-text pairs in {len(m['clusters'])} "
        "clusters" + (f", last query loss {losses[-1]:.4f}" if losses else "")
    )


def cmd_train_teacher(args) -> None:
    from vlprompt.experiment.teacher import teacher_config
    from vlprompt.training.image_runs import run
    from vlprompt.training.teacher import headline, teacher_method

    cfg = _cfg(args)
    name = teacher_method(cfg)
    m = run(teacher_config(cfg), args.dataset, name, args.shots, args.seed, args.out, progress=not args.quiet)
    print(f"teacher ({name}) on {args.dataset}, {args.shots} shots, seed {args.seed}: {headline(m):.2f}")


def cmd_teacher_logits(args) -> None:
    from vlprompt.training.teacher_logits import build_teacher_logits

    out = build_teacher_logits(_cfg(args), args.dataset, args.shots, args.seed, Path(args.out), not args.quiet)
    print(f"teacher logits of {args.dataset}, {args.shots} shots, seed {args.seed}: {out}")


def cmd_check_teacher(args) -> None:
    from vlprompt.io import atomic_write_json
    from vlprompt.training.teacher import check_teacher_beats_student

    margins = check_teacher_beats_student([Path(p) for p in args.teacher], [Path(p) for p in args.zeroshot])
    atomic_write_json(Path(args.out), margins)
    for dataset, m in margins.items():
        print(
            f"{dataset}: teacher {m['teacher']:.2f} vs student zero-shot {m['student_zero_shot']:.2f} "
            f"(+{m['margin']:.2f})"
        )


def cmd_evaluate_transfer(args) -> None:
    from vlprompt.training.runs import evaluate_transfer

    m = evaluate_transfer(_cfg(args), args.dataset, args.method, args.shots, args.seed, args.target, args.out)
    print(f"{args.dataset} -> {args.target}: all_acc={m['all_acc']:.2f}")


def cmd_evaluate_ood(args) -> None:
    from vlprompt.training.ood_runs import evaluate_ood

    m = evaluate_ood(_cfg(args), args.dataset, args.method, args.shots, args.seed, args.oodset, args.out)
    print(f"{args.dataset} vs {args.oodset}: FPR@95={m['fpr95']:.2f} AUROC={m['auroc']:.2f} ID acc={m['all_acc']:.2f}")


def cmd_train_adaptation(args) -> None:
    from vlprompt.training.adaptation import run_adaptation

    m = run_adaptation(
        _cfg(args), args.source, args.target, args.method, args.shots, args.seed, args.out, progress=not args.quiet
    )
    print(f"{args.source} -> {args.target}: all_acc={m['all_acc']:.2f}")


def cmd_aggregate(args) -> None:
    from vlprompt.analysis.aggregate import aggregate

    aggregate(
        _cfg(args),
        [Path(p) for p in args.metrics],
        Path(args.summary),
        Path(args.stats),
        Path(args.metrics_json) if args.metrics_json else None,
        Path(args.curves) if args.curves else None,
    )


def cmd_report(args) -> None:
    from vlprompt.analysis import report

    cfg = _cfg(args)
    report.render(Path(args.summary), Path(args.stats), Path(args.out), cfg, Path(args.curves) if args.curves else None)


def cmd_pretrain(args) -> None:
    import dataclasses

    import torch

    from vlprompt.training.pretrain import PRESETS, pretrain

    torch.set_num_threads(args.threads)
    cfg, world = PRESETS[args.world]
    overrides = {k: v for k, v in (("steps", args.steps), ("seed", args.seed)) if v is not None}
    pretrain(Path(args.out), dataclasses.replace(cfg, **overrides), world)


def cmd_env(args) -> None:
    """The environment's summary and whether it is its lock (docs/environments.md)."""
    import platform

    from vlprompt.io import environment, package_versions

    env = environment()
    print(f"python          {env['python']} ({sys.executable})")
    print(f"platform        {env['platform']} ({platform.platform()})")
    for name, version in package_versions().items():
        if name != "python":
            print(f"{name:15s} {version}")
    print(f"lock            {env['lock']}")
    if env["lock_sha256"] is None:
        print("matches         unknown: no lock to compare with (set VLPROMPT_LOCK to a requirements/py3.X.txt)")
        return
    print(f"sha256          {env['lock_sha256']}")
    if env["matches_lock"]:
        print("matches         yes: every locked package is installed at its locked version")
        return
    print(f"matches         NO: {len(env['differences'])} package(s) differ from the lock (make install reinstalls it)")
    for line in env["differences"]:
        print(f"                {line}")
    if args.check:
        raise SystemExit(1)


def cmd_fetch_weights(args) -> None:
    """Download open_clip weights into the local cache (run where there is network)."""
    from vlprompt.clip.backbone import load_backbone

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
            s.add_argument(
                "--config",
                help="experiment config (YAML, or an experiment's resolved "
                "results/<experiment>/config.json); default: $VLPROMPT_CONFIG, which "
                "snakemake sets for its jobs",
            )
        s.add_argument("--quiet", action="store_true", help="no progress bars")
        return s

    s = add("methods", cmd_methods, "list the methods with a one-line description and paper", config=False)
    s.add_argument(
        "--format",
        choices=["text", "markdown", "json"],
        default="text",
        help="text: one line each; markdown, json: the method catalogue (reads, protocols, reference, checks, cost)",
    )
    s = add("datasets", cmd_datasets, "list every dataset and its status on this machine", config=False)
    s.add_argument("--config", help="read data_root and the download block (downloads_root) from this config")
    s.add_argument("--data-root", help="where prepared datasets go (default: the config's, else data)")
    s.add_argument(
        "--check",
        metavar="NAME",
        help="check one dataset before anything trains (a user dataset: classes, images per split and class, "
        "unreadable, converted and non-image files, duplicates across splits, similar labels); exit 1 on an error",
    )
    s = add("prepare", cmd_prepare, "download/generate, verify and prepare one dataset")
    s.add_argument("--dataset", required=True)
    s.add_argument("--key", help=argparse.SUPPRESS)  # the DAG's dataset key: checked against the config
    s = add("classes", cmd_classes, "write the base/new classes of one prepared dataset")
    s.add_argument("--dataset", required=True)
    s.add_argument("--out", help="default: the experiment's results/splits/<dataset key>/classes.json")
    s.add_argument("--key", help=argparse.SUPPRESS)
    s = add("fewshot", cmd_fewshot, "sample one few-shot subset (shots, seed) of one dataset")
    s.add_argument("--dataset", required=True)
    s.add_argument("--shots", type=int, required=True)
    s.add_argument("--seed", type=int, required=True)
    s.add_argument("--out", help="default: results/splits/<dataset key>/shot<K>_seed<S>.json")
    s.add_argument("--key", help=argparse.SUPPRESS)
    s = add(
        "extract",
        cmd_extract,
        "extract frozen image features: a dataset's test images, or with --shots "
        "and --seed a few-shot subset's validation images and training views",
    )
    s.add_argument("--dataset", required=True)
    s.add_argument("--shots", type=int)
    s.add_argument("--seed", type=int)
    s.add_argument("--key", help=argparse.SUPPRESS)
    s.add_argument(
        "--part",
        choices=["eval", "train", "test_views", "generated_views", "generated_folder"],
        default="eval",
        help="eval: the test images and the validation split (default); train: the whole training split; "
        "test_views: every test image in --views views (the original first) cropped with scale "
        "(--crop, 1); generated_views: every test image in --views views drawn by the pocket renderer as an "
        "image-variation model (--wrong-class-rate of them of a close class); generated_folder: every test image "
        "in --views views read from the folder the config's generated_images.<dataset>.by_image names",
    )
    s.add_argument("--views", type=int)
    s.add_argument("--crop", type=float)
    s.add_argument("--wrong-class-rate", type=float)
    s = add(
        "layer-statistics",
        cmd_layer_statistics,
        "per image, the mean and std of every image-tower block's tokens (AD-CLIP's layer-statistics bank)",
    )
    s.add_argument("--dataset", required=True)
    s.add_argument("--part", choices=["test", "train", "fewshot"], required=True)
    s.add_argument("--shots", type=int)
    s.add_argument("--seed", type=int)
    s.add_argument("--key", help=argparse.SUPPRESS)
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
    s = add(
        "train-multitask",
        cmd_train_multitask,
        "train a multitask method's prompt on the config's sources (one shots × seed)",
    )
    for a in ("--method", "--out"):
        s.add_argument(a, required=True)
    s.add_argument("--shots", type=int, required=True)
    s.add_argument("--seed", type=int, required=True)
    s = add(
        "train-meta-prompt",
        cmd_train_meta_prompt,
        "meta-learn a method's initial prompt (and gradient regulator) on the backbone's image-text pool",
    )
    for a in ("--stage", "--out"):
        s.add_argument(a, required=True)
    for name, command, text in (
        ("train-teacher", cmd_train_teacher, "prompt-tune the config's teacher CLIP (one dataset × shots × seed)"),
        (
            "teacher-logits",
            cmd_teacher_logits,
            "the teacher's logits over V fixed views of a run's training images (the teacher-logits bank)",
        ),
    ):
        s = add(name, command, text)
        for a in ("--dataset", "--out"):
            s.add_argument(a, required=True)
        s.add_argument("--shots", type=int, required=True)
        s.add_argument("--seed", type=int, required=True)
    s = add(
        "check-teacher",
        cmd_check_teacher,
        "refuse a teacher that does not beat the student's zero-shot accuracy; write the margins",
        config=False,
    )
    s.add_argument("--teacher", nargs="+", required=True, help="the teachers' metrics.json")
    s.add_argument("--zeroshot", nargs="+", required=True, help="the student's zero-shot metrics.json")
    s.add_argument("--out", required=True)
    s = add("evaluate-transfer", cmd_evaluate_transfer, "evaluate a trained run on another dataset")
    for a in ("--dataset", "--method", "--target", "--out"):
        s.add_argument(a, required=True)
    s.add_argument("--shots", type=int, required=True)
    s.add_argument("--seed", type=int, required=True)
    s = add("evaluate-ood", cmd_evaluate_ood, "score a run on an OOD set against its ID test images (protocol ood)")
    for a in ("--dataset", "--method", "--oodset", "--out"):
        s.add_argument(a, required=True)
    s.add_argument("--shots", type=int, required=True)
    s.add_argument("--seed", type=int, required=True)
    s = add(
        "train-adaptation",
        cmd_train_adaptation,
        "domain_adaptation: train on a labelled source and an unlabelled target, test on the target",
    )
    for a in ("--source", "--target", "--method", "--out"):
        s.add_argument(a, required=True)
    s.add_argument("--shots", type=int, required=True)
    s.add_argument("--seed", type=int, required=True)
    s = add("aggregate", cmd_aggregate, "collect run metrics into summary.csv and run the statistics")
    s.add_argument("--summary", required=True)
    s.add_argument("--stats", required=True)
    s.add_argument("--metrics-json", help="also write each metric's mean per method and shots (DVC's metrics)")
    s.add_argument("--curves", help="also write each trained run's training curves as CSV files into this folder")
    s.add_argument("metrics", nargs="+")
    s = add("report", cmd_report, "render reports/<experiment>/ (report.md, index.html, figures)")
    for a in ("--summary", "--stats", "--out"):
        s.add_argument(a, required=True)
    s.add_argument("--curves", help="the folder of training curves `aggregate --curves` wrote (a figure of them)")
    s = add("pretrain-pocket", cmd_pretrain, "pretrain the tiny pocket CLIP", config=False)
    s.add_argument("--out", required=True)
    s.add_argument(
        "--world",
        choices=["v1", "v2", "v2_teacher"],
        default="v1",
        help="the pocket world and recipe of a shipped checkpoint (vlprompt.training.pretrain.PRESETS)",
    )
    s.add_argument("--steps", type=int, help="override the preset's number of steps")
    s.add_argument("--seed", type=int)
    s.add_argument("--threads", type=int, default=1)
    s = add(
        "check-config",
        cmd_check_config,
        "check an experiment config file (YAML syntax, keys, values, names, shots against the datasets): "
        "one line per problem with its fix",
        config=False,
    )
    s.add_argument("file", help="the experiment config, e.g. config/fewshot.yaml")
    s = add("unlock-stale", cmd_unlock_stale, "remove a stale Snakemake lock left by a killed run", config=False)
    s.add_argument("--directory", default=".", help="the workflow's working directory")
    s = add(
        "cluster-check",
        cmd_cluster_check,
        "check a SLURM profile against the cluster: what each job asks for, what will not fit, the flags that fix it",
        config=False,
    )
    s.add_argument(
        "--profile",
        action="append",
        required=True,
        help="the profile snakemake will use (workflow/profiles/slurm); repeat for profiles given one after another",
    )
    s.add_argument(
        "--flags",
        action="store_true",
        help="print only the flags to append to `snakemake --profile ...` (the report goes to stderr)",
    )
    s.add_argument(
        "snakemake_args",
        nargs=argparse.REMAINDER,
        help="after --: the other arguments you give "
        "snakemake (--configfile, --set-resources, ...), checked with the profile",
    )
    s = add("env", cmd_env, "the environment: Python, key packages, its lock and whether it matches", config=False)
    s.add_argument("--check", action="store_true", help="exit 1 when the environment differs from its lock")
    s = add("fetch-weights", cmd_fetch_weights, "download open_clip weights into the cache", config=False)
    s.add_argument("--model", required=True)
    s.add_argument("--pretrained", required=True)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from vlprompt.pipeline.watchdog import start_from_environment

    start_from_environment()  # a job stops when the snakemake that runs it is gone
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        rc = args.fn(args)
    except Exception as err:  # a ConfigError holds one line per problem, each printed as its own error
        if not isinstance(err, expected_errors()):
            raise
        config = sys.modules.get("vlprompt.experiment.config")
        lines = str(err).split("\n") if config and isinstance(err, config.ConfigError) else [str(err)]
        for line in lines:
            print(f"vlprompt {args.command}: error: {line}", file=sys.stderr)
        return 2
    return rc or 0


#: The expected failures (bad config, missing or corrupt data, dead link, unsafe archive, full disk), by module:
#: their message names the file and the fix and is printed without a traceback (ChecksumError and
#: UnsafeArchiveError are DownloadErrors).
EXPECTED_ERRORS = {
    "vlprompt.experiment.config": ("ConfigError",),
    "vlprompt.data.registry": ("DatasetError",),
    "vlprompt.data.splits": ("SplitError",),
    "vlprompt.methods.base": ("MethodError",),
    "vlprompt.clip.backbone": ("BackboneError",),
    "vlprompt.clip.prompting": ("PromptFitError",),
    "vlprompt.data.download": ("DownloadError",),
    "vlprompt.io": ("CorruptArtefactError", "NoSpaceError"),
    "vlprompt.data.generated_images": ("GeneratedImagesError",),
}


def expected_errors() -> tuple[type[BaseException], ...]:
    """The expected error classes of the modules imported so far (an error's module is imported before it can be
    raised), so that naming ``MethodError`` or ``BackboneError`` does not import torch into a command that has not
    (``env``, ``unlock-stale``: about two seconds of start-up)."""
    found: list[type[BaseException]] = [FileNotFoundError]
    for module, names in EXPECTED_ERRORS.items():
        if module in sys.modules:
            found += [getattr(sys.modules[module], n) for n in names]
    return tuple(found)


if __name__ == "__main__":
    sys.exit(main())
