"""Seaborn figures of the report (Agg backend; each returns False when it has nothing to draw)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

NAMES = {"base_acc": "base accuracy (%)", "new_acc": "new accuracy (%)", "hm": "HM (%)", "all_acc": "accuracy (%)"}


def palette(methods) -> dict:
    """One colour per method, the same in every figure."""
    methods = sorted(set(methods))
    return dict(zip(methods, sns.color_palette("tab10" if len(methods) <= 10 else "tab20", len(methods)), strict=True))


def _save(fig, path: Path) -> bool:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def fewshot_curve(summary: pd.DataFrame, cells: pd.DataFrame, path: Path, metric: str) -> bool:
    """Mean over datasets per seed, then line = mean over seeds with a 95% bootstrap band, points = seeds."""
    trained = summary[summary.trained.astype(bool)]
    if trained.shots.nunique() < 1 or trained[metric].isna().all():
        return False
    per_seed = summary.groupby(["method", "shots", "seed"])[metric].mean().reset_index().dropna()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours = palette(summary.method)
    sns.lineplot(per_seed, x="shots", y=metric, hue="method", errorbar=("ci", 95), marker="o", ax=ax,
                 estimator="mean", n_boot=1000, seed=0, palette=colours, hue_order=sorted(per_seed.method.unique()))
    sns.stripplot(per_seed, x="shots", y=metric, hue="method", native_scale=True, dodge=False, alpha=0.4,
                  size=3, legend=False, ax=ax, palette=colours, hue_order=sorted(per_seed.method.unique()))
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(per_seed.shots.unique()), labels=[str(k) for k in sorted(per_seed.shots.unique())])
    ax.set_ylabel(NAMES[metric])
    ax.set_xlabel("shots per class")
    return _save(fig, path)


def base_vs_new(summary: pd.DataFrame, cells: pd.DataFrame, path: Path, metric: str) -> bool:
    top = cells[cells.shots == cells.shots.max()].dropna(subset=["base_acc_mean", "new_acc_mean"])
    if top.empty:
        return False
    fig, ax = plt.subplots(figsize=(6.5, 5))
    sns.scatterplot(top, x="base_acc_mean", y="new_acc_mean", hue="method", style="dataset", s=70, ax=ax,
                    palette=palette(summary.method), hue_order=sorted(top.method.unique()))
    lo = min(top.base_acc_mean.min(), top.new_acc_mean.min()) - 5
    ax.plot([lo, 100], [lo, 100], color="grey", lw=0.8, ls="--")
    ax.set_xlabel("base accuracy (%)")
    ax.set_ylabel("new accuracy (%)")
    ax.legend(fontsize=7, bbox_to_anchor=(1.02, 1), loc="upper left")
    return _save(fig, path)


def per_dataset(summary: pd.DataFrame, cells: pd.DataFrame, path: Path, metric: str) -> bool:
    top = summary[summary.shots == summary.shots.max()].dropna(subset=[metric])
    if top.empty:
        return False
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * top.dataset.nunique()), 4.5))
    sns.barplot(top, x="dataset", y=metric, hue="method", errorbar=("ci", 95), n_boot=1000, seed=0, ax=ax,
                palette=palette(summary.method), hue_order=sorted(top.method.unique()))
    ax.set_ylabel(NAMES[metric])
    ax.tick_params(axis="x", rotation=30)
    ax.legend(fontsize=7, bbox_to_anchor=(1.02, 1), loc="upper left")
    return _save(fig, path)


def cd_diagram(scores: pd.DataFrame, pvalues: pd.DataFrame, path: Path) -> bool:
    import scikit_posthocs as sp

    ranks = scores.rank(axis=1, ascending=False).mean()
    fig, ax = plt.subplots(figsize=(7, 2.5))
    sp.critical_difference_diagram(ranks, pvalues, ax=ax, color_palette=palette(ranks.index))
    ax.set_title("mean rank over datasets (1 = best)", fontsize=9)
    return _save(fig, path)
