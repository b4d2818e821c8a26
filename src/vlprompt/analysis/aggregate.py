"""Collect run metrics into the experiment's tidy results table (``summary.csv``) and its statistics.

One row per method × dataset × shots × seed (for transfer protocols, per evaluated dataset, with the
training dataset in ``train_dataset``). Methods that need no training data (zero-shot) run once
per dataset; their row is repeated for every shots × seed of the grid (marked ``trained=False``) so
that every comparison at every shots setting has its reference.

``metrics.json`` beside it is the experiment in a few numbers, DVC's metrics file (``dvc metrics show``,
``dvc metrics diff``): each metric's mean per method and shots over datasets and seeds.

``curves/`` beside it holds the training curves, one CSV per trained run
(``curves/<dataset>/<method>/<K>shot/seed<S>.csv``: per epoch the mean loss, each loss term the method reports,
the learning rate), taken from the ``train.curves`` each run's metrics.json records; DVC's plots
(``dvc plots show``) and the report's training-curve figure read them.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pandas as pd

from vlprompt.io import atomic_path, atomic_write_text, read_artefact_json, verify_file

METRICS = ["base_acc", "new_acc", "hm", "all_acc"]  # in the order metrics.json lists them
COLUMNS = [
    "method",
    "protocol",
    "dataset",
    "train_dataset",
    "shots",
    "seed",
    "base_acc",
    "new_acc",
    "all_acc",
    "hm",
    "backbone",
    "weights_sha256",
    "config_hash",
    "trained",
    "python",
    "lock_sha256",
    "env_matches_lock",
]
# A run whose method reports a generalisation bound (``method_info.bound``: PAC-Bayes prompt search) adds these
# columns to the table (absent otherwise): the training accuracy, the bound's lower bounds on test accuracy, its prior.
BOUND_COLUMNS = {
    "train_acc": "train_accuracy",
    "acc_bound": "accuracy_bound",
    "acc_bound_kl": "accuracy_bound_kl",
    "bound_prior": "prior",
}
# A run whose method has a proposer in its loop (``method_info.proposer``: a language model live or replayed from a
# trace, the rule-based stand-in, a fixed pool) adds the column ``proposer`` ("<kind>: <what it is>").

# A run whose method gives class attention maps scored on the pocket world (``trait_localisation``: Prompt-CAM;
# vlprompt.training.trait_localisation) adds these columns: on the test images, the share of the own class prompt's
# attention on the object and its chance level (the object's area), the pointing game and its chance; and the mass on
# the few-shot training images (where a v2 world's spurious cue lives).
TRAIT_COLUMNS = {
    "trait_mass": ("test", "mass"),
    "trait_area": ("test", "area"),
    "trait_pointing": ("test", "pointing"),
    "trait_pointing_chance": ("test", "pointing_chance"),
    "trait_mass_train": ("train", "mass"),
    "trait_area_train": ("train", "area"),
}

# Protocol ood: a run scored on an OOD set (``<run>/ood/<set>.json``) adds these columns (absent otherwise): the
# OOD metrics (vlprompt.training.ood_metrics) and whether the set is near or far; ``all_acc`` is the ID accuracy.
OOD_COLUMNS = ("fpr95", "auroc", "aupr_in", "aupr_out", "fpr95_id", "ood_group")


def summary_table(cfg: dict, metrics_files: list[Path]) -> pd.DataFrame:
    """The tidy table of ``metrics_files``; each run's model is checked against the checksum its metrics
    recorded, so a damaged run stops the table with the command that rebuilds it."""
    rows = []
    for path in metrics_files:
        m = read_artefact_json(path)
        for name, record in m.get("artefacts", {}).items():
            verify_file(Path(path).with_name(name), record)
        prov = m.get("provenance", {})
        env = prov.get("environment") or {}  # absent in runs recorded before environments were
        base = {
            "method": m["method"],
            "protocol": m["protocol"],
            "dataset": m["dataset"],
            "train_dataset": m.get("train_dataset", m["dataset"]),
            "base_acc": m.get("base_acc", math.nan),
            "new_acc": m.get("new_acc", math.nan),
            "all_acc": m.get("all_acc", math.nan),
            "hm": m.get("hm", math.nan),
            "backbone": prov.get("backbone"),
            "weights_sha256": prov.get("weights_sha256"),
            "config_hash": m.get("config_hash"),
            "trained": bool(m.get("trained", True)),
            "python": env.get("python", (prov.get("versions") or {}).get("python")),
            "lock_sha256": env.get("lock_sha256"),
            "env_matches_lock": env.get("matches_lock"),
        }
        bound = (m.get("method_info") or {}).get("bound") or {}
        base.update({col: bound[key] for col, key in BOUND_COLUMNS.items() if key in bound})
        proposer = (m.get("method_info") or {}).get("proposer") or {}
        if proposer:
            base["proposer"] = f"{proposer.get('kind')}: {proposer.get('about', '')}".rstrip(": ")
        base.update({col: m[col] for col in OOD_COLUMNS if col in m})
        traits = m.get("trait_localisation") or {}
        base.update({col: traits[sp][k] for col, (sp, k) in TRAIT_COLUMNS.items() if k in (traits.get(sp) or {})})
        if m.get("trained", True):
            rows.append({**base, "shots": m["shots"], "seed": m["seed"]})
        else:
            rows.extend({**base, "shots": k, "seed": s} for k in cfg["shots"] for s in cfg["seeds"])
    extra = [c for c in (*BOUND_COLUMNS, "proposer", *OOD_COLUMNS, *TRAIT_COLUMNS) if any(c in r for r in rows)]
    df = pd.DataFrame(rows, columns=COLUMNS + extra)
    return df.sort_values(["method", "dataset", "shots", "seed"]).reset_index(drop=True)


def mean_metrics(summary: pd.DataFrame, decimals: int = 4) -> dict:
    """``{method: {"<shots>shot": {metric: mean}}}``: each metric's mean over datasets and seeds.

    Methods in the table's order (sorted), shots in increasing order, metrics in ``METRICS`` order, so
    the file is the same for the same table; a metric with no value for a method and shots (new-class
    accuracy of a linear probe, base/new accuracy under the all-classes protocols) is left out.
    """
    out: dict[str, dict[str, dict[str, float]]] = {}
    means = summary.groupby(["method", "shots"], sort=True)[METRICS].mean()
    for (method, shots), row in means.iterrows():
        values = {k: round(float(row[k]), decimals) for k in METRICS if not math.isnan(row[k])}
        out.setdefault(method, {})[f"{int(shots)}shot"] = values
    return out


def write_metrics(summary: pd.DataFrame, path: Path) -> dict:
    metrics = mean_metrics(summary)
    atomic_write_text(path, json.dumps(metrics, indent=2) + "\n")
    return metrics


CURVE_KEYS = ["dataset", "method", "shots", "seed", "epoch", "loss", "lr"]  # then the method's loss terms


def training_curves(metrics_files: list[Path]) -> pd.DataFrame:
    """One row per trained run × epoch: the run's identity and what the training loop recorded per epoch
    (``train.curves`` of its metrics.json); runs without curves (no gradient training, transfer evaluations,
    runs recorded before curves were) add nothing."""
    frames = []
    for path in metrics_files:
        m = read_artefact_json(path)
        train = m.get("train")
        curves = train.get("curves") if isinstance(train, dict) else None
        if curves:
            ident = {"dataset": m["dataset"], "method": m["method"], "shots": m["shots"], "seed": m["seed"]}
            frames.append(pd.DataFrame([{**ident, **row} for row in curves]))
    if not frames:
        return pd.DataFrame(columns=CURVE_KEYS)
    df = pd.concat(frames, ignore_index=True)
    terms = sorted(c for c in df.columns if c not in CURVE_KEYS)
    return df[CURVE_KEYS + terms].sort_values(["dataset", "method", "shots", "seed", "epoch"])


def curve_path(directory: Path, dataset: str, method: str, shots: int, seed: int) -> Path:
    return Path(directory) / str(dataset) / str(method) / f"{int(shots)}shot" / f"seed{int(seed)}.csv"


def write_curves(curves: pd.DataFrame, directory: Path) -> None:
    """One CSV per run under ``directory``, the run's own terms only; written into a temporary folder beside it,
    which then replaces it, so a killed job leaves no partly written folder at the declared path."""
    directory = Path(directory)
    tmp = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for (dataset, method, shots, seed), run in curves.groupby(["dataset", "method", "shots", "seed"]):
        path = curve_path(tmp, dataset, method, shots, seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        run.dropna(axis=1, how="all").to_csv(path, index=False, float_format="%.6g")
    if directory.exists():
        shutil.rmtree(directory)
    os.replace(tmp, directory)


def read_curves(directory: Path) -> pd.DataFrame:
    """Every run's curves under ``directory`` in one table (empty when there are none)."""
    files = sorted(Path(directory).rglob("*.csv")) if Path(directory).is_dir() else []
    if not files:
        return pd.DataFrame(columns=CURVE_KEYS)
    return pd.concat([pd.read_csv(f) for f in files], ignore_index=True)


def aggregate(
    cfg: dict,
    metrics_files: list[Path],
    summary_csv: Path,
    stats_csv: Path,
    metrics_json: Path | None = None,
    curves_dir: Path | None = None,
) -> pd.DataFrame:
    from vlprompt.analysis.stats import compute_stats

    df = summary_table(cfg, metrics_files)
    if curves_dir is not None:
        write_curves(training_curves(metrics_files), curves_dir)
    with atomic_path(summary_csv) as tmp:
        df.to_csv(tmp, index=False, float_format="%.4f")
    if metrics_json is not None:
        write_metrics(df, metrics_json)
    stats = compute_stats(df, cfg.get("stats", {}))
    with atomic_path(stats_csv) as tmp:
        stats.to_csv(tmp, index=False)
    return df
