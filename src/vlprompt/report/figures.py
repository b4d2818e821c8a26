"""Seaborn figures of the report (Agg backend).

Each function writes one PNG and returns a caption note ("" when everything was drawn), or None when it
had nothing to draw; the caller shows the note so that a skipped part is visible, never silent.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from vlprompt import stats  # noqa: E402

LABELS = {"base_acc": "Base (%)", "new_acc": "New (%)", "hm": "HM (%)", "all_acc": "Accuracy (%)"}
DPI = 110


def palette(methods) -> dict:
    """One colour per method, the same in every figure."""
    methods = sorted(set(methods))
    colours = sns.color_palette("tab10" if len(methods) <= 10 else "tab20", len(methods))
    return dict(zip(methods, colours, strict=True))


def _save(fig, path: Path) -> None:
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)


def _harmonic(b: float, n: float) -> float:
    return 2 * b * n / (b + n) if b + n > 0 else math.nan


def seed_averages(summary: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One value per method × shots × seed: the mean over datasets (for HM, as the papers do, the
    harmonic mean of the dataset-averaged base and new accuracies). Methods without the metric drop out."""
    g = summary.groupby(["method", "shots", "seed"])
    if metric == "hm":
        avg = g[["base_acc", "new_acc"]].mean()
        avg["hm"] = [_harmonic(b, n) for b, n in zip(avg.base_acc, avg.new_acc, strict=True)]
        out = avg[["hm"]]
    else:
        out = g[[metric]].mean()
    return out.reset_index().dropna(subset=[metric])


def fewshot_curve(summary: pd.DataFrame, metrics: list[str], path: Path, resamples: int = 2000, seed: int = 0,
                  level: float = 0.95) -> str | None:
    """Score against shots, one panel per metric: line = mean over seeds of the dataset average, band =
    bootstrap CI over seeds, points = the seeds. Untrained methods (zero-shot) are dashed."""
    colours = palette(summary.method)
    untrained = set(summary[~summary.trained.astype(bool)].method) if "trained" in summary else set()
    shots = sorted(summary.shots.unique())
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.6 * len(metrics) + 1.6, 3.8), squeeze=False)
    missing = {}
    rng = np.random.default_rng(seed)
    for ax, metric in zip(axes[0], metrics, strict=True):
        per_seed = seed_averages(summary, metric)
        missing[metric] = sorted(set(summary.method) - set(per_seed.method))
        for method, g in per_seed.groupby("method"):
            line = g.groupby("shots")[metric].agg(list)
            mean = [np.mean(v) for v in line]
            ci = [stats.bootstrap_ci(v, resamples, seed, level) for v in line]
            ls = "--" if method in untrained else "-"
            ax.plot(line.index, mean, ls, marker="o", ms=4, color=colours[method], label=method)
            ax.fill_between(line.index, [c[0] for c in ci], [c[1] for c in ci], color=colours[method], alpha=0.2,
                            lw=0)
            jitter = np.exp2(rng.uniform(-0.08, 0.08, len(g)))  # spread the seeds a little on the log axis
            ax.scatter(g.shots * jitter, g[metric], s=9, color=colours[method], alpha=0.55, lw=0)
        ax.set_xscale("log", base=2)
        ax.set_xticks(shots, labels=[str(k) for k in shots])
        ax.minorticks_off()
        ax.set_xlabel("shots per class")
        ax.set_ylabel(LABELS[metric])
        ax.set_title(LABELS[metric].replace(" (%)", ""), fontsize=10)
    handles, labels = [], []
    for ax in axes[0]:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if not labels:
        plt.close(fig)
        return None
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    notes = [missing_note(missing)] if any(missing.values()) else []
    if len(shots) == 1:
        notes.append("only one shots setting, so no curve")
    return "; ".join(notes)


def base_vs_new(cells: pd.DataFrame, path: Path) -> str | None:
    """Per method and dataset, base against new accuracy with the CIs over seeds; stars = method averages."""
    top = cells[cells.shots == cells.shots.max()]
    both = top.dropna(subset=["base_acc_mean", "new_acc_mean"])
    if both.empty:
        return None
    colours = palette(cells.method)
    fig, ax = plt.subplots(figsize=(7.2, 5.2))
    sns.scatterplot(both, x="base_acc_mean", y="new_acc_mean", hue="method", style="dataset", s=60, ax=ax,
                    palette=colours, hue_order=sorted(both.method.unique()), zorder=3)
    ax.errorbar(both.base_acc_mean, both.new_acc_mean,
                xerr=[both.base_acc_mean - both.base_acc_ci_low, both.base_acc_ci_high - both.base_acc_mean],
                yerr=[both.new_acc_mean - both.new_acc_ci_low, both.new_acc_ci_high - both.new_acc_mean],
                fmt="none", ecolor="grey", elinewidth=0.7, zorder=2)
    avg = both.groupby("method")[["base_acc_mean", "new_acc_mean"]].mean()
    for method, row in avg.iterrows():
        ax.scatter(row.base_acc_mean, row.new_acc_mean, marker="*", s=260, color=colours[method],
                   edgecolor="black", lw=0.8, zorder=4)
    values = np.concatenate([both.base_acc_ci_low, both.base_acc_ci_high, both.new_acc_ci_low,
                             both.new_acc_ci_high])
    lo, hi = max(0.0, np.nanmin(values) - 3), min(100.0, np.nanmax(values) + 3)
    ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8, ls="--", zorder=1)
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_aspect("equal")
    ax.set_xlabel("base accuracy (%)")
    ax.set_ylabel("new accuracy (%)")
    ax.legend(fontsize=7, bbox_to_anchor=(1.02, 1), loc="upper left", frameon=False)
    _save(fig, path)
    missing = sorted(set(top.method) - set(both.method))
    return f"{', '.join(missing)}: no new accuracy, not shown" if missing else ""


def per_dataset(summary: pd.DataFrame, metrics: list[str], path: Path, level: float = 0.95,
                seed: int = 0) -> str | None:
    """Bars per dataset (top shots), one row per metric: seed mean with its bootstrap CI, dots = seeds."""
    top = summary[summary.shots == summary.shots.max()]
    order = sorted(top.method.unique())
    missing = {m: [meth for meth in order if top.loc[top.method == meth, m].isna().all()] for m in metrics}
    metrics = [m for m in metrics if top[m].notna().any()]
    if not metrics:
        return None
    colours = palette(summary.method)
    n_ds = top.dataset.nunique()
    fig, axes = plt.subplots(len(metrics), 1, figsize=(max(7.0, 0.5 * n_ds * len(order) + 2), 3.1 * len(metrics)),
                             squeeze=False, sharex=True)
    for ax, metric in zip(axes[:, 0], metrics, strict=True):
        data = top.dropna(subset=[metric])
        sns.barplot(data, x="dataset", y=metric, hue="method", hue_order=order, palette=colours,
                    order=sorted(top.dataset.unique()), errorbar=("ci", level * 100), n_boot=1000, seed=seed,
                    ax=ax, err_kws={"linewidth": 1}, capsize=0.1)
        sns.stripplot(data, x="dataset", y=metric, hue="method", hue_order=order, palette=colours,
                      order=sorted(top.dataset.unique()), dodge=True, size=2.5, color="black", legend=False,
                      ax=ax, edgecolor="black", linewidth=0.4, alpha=0.8)
        ax.set_ylabel(LABELS[metric])
        ax.set_xlabel("")
        legend = ax.get_legend()
        if legend is not None:
            legend.remove()
    axes[0, 0].legend(*axes[0, 0].get_legend_handles_labels(), fontsize=8, bbox_to_anchor=(1.01, 1),
                      loc="upper left", frameon=False)
    axes[-1, 0].tick_params(axis="x", rotation=25)
    fig.tight_layout()
    _save(fig, path)
    return missing_note(missing)


def missing_note(missing: dict) -> str:
    """'m1: no New, HM; m2: no Base' from {metric: [methods without it]}."""
    by_method: dict[str, list[str]] = {}
    for metric, methods in missing.items():
        for m in methods:
            by_method.setdefault(m, []).append(LABELS[metric].replace(" (%)", ""))
    return "; ".join(f"{m}: no {', '.join(v)}" for m, v in sorted(by_method.items()))


def cd_diagram(scores: pd.DataFrame, path: Path, alpha: float = 0.05, title: str = "") -> None:
    """Critical-difference diagram: mean ranks over datasets (1 = best); bars join methods that the Nemenyi
    test does not separate at ``alpha``; the title gives Demšar's critical difference."""
    import scikit_posthocs as sp

    ranks = stats.mean_ranks(scores)
    cd = stats.critical_difference(len(ranks), len(scores), alpha)
    fig, ax = plt.subplots(figsize=(7.5, 0.9 + 0.35 * len(ranks)))
    sp.critical_difference_diagram(ranks, stats.nemenyi(scores), ax=ax, alpha=alpha,
                                   color_palette=palette(ranks.index))
    ax.set_title(f"{title}   (CD = {cd:.2f})", fontsize=9, pad=22)
    _save(fig, path)
