"""Seaborn figures of the report (Agg backend), drawn to be read at the page's width.

Each figure is about 1100 px wide (``WIDTH`` inches at ``DPI``), the width of the HTML page, with 11-point
labels, so that it is shown at its own size. A method has the same colour in every figure of every report
(:func:`palette`). Each function writes one PNG and returns a caption note ("" when everything was drawn),
or None when it had nothing to draw; the caller shows the note so that a skipped part is visible.
Intervals are Student-t intervals over seeds (:func:`vlprompt.analysis.stats.t_interval`); a method that does not
depend on the seed is one run and has none.
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

from vlprompt.analysis import stats  # noqa: E402

LABELS = {"base_acc": "Base (%)", "new_acc": "New (%)", "hm": "HM (%)", "all_acc": "Accuracy (%)"}
LABELS.update({"auroc": "AUROC (%)", "aupr_in": "AUPR-in (%)", "aupr_out": "AUPR-out (%)"})  # protocol ood
DPI = 100
WIDTH = 11.0  # inches: 1100 px at DPI, the report page's width
RC = {
    "font.size": 11,
    "axes.titlesize": 11,
    "axes.labelsize": 11,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
    "legend.fontsize": 10,
}


def method_order(methods) -> list[str]:
    """The report's method order (zero-shot first, then by family; see ``vlprompt.methods.method_order``)."""
    from vlprompt.methods import method_order as order

    return order(methods)


def palette(methods) -> dict:
    """One colour per method, the same in every figure of every report: colours follow the order of every
    registered method (then any other name), not just the methods of this experiment."""
    from vlprompt.methods import list_methods

    everyone = method_order(set(list_methods()) | set(methods))
    colours = sns.color_palette("tab10") + sns.color_palette("tab20")[1::2]
    if len(everyone) > len(colours):
        colours += sns.color_palette("husl", len(everyone) - len(colours))
    return {m: colours[i] for i, m in enumerate(everyone) if m in set(methods)}


def _theme() -> None:
    sns.set_theme(style="whitegrid", rc=RC)


def _save(fig, path: Path) -> None:
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)


def _mean_interval(values, level: float, single: bool) -> tuple[float, float, float]:
    values = np.asarray(values, dtype=float)
    if single:
        values = values[:1]
    lo, hi = stats.t_interval(values, level)
    return float(values.mean()), lo, hi


def _legend(fig, methods: list[str], colours: dict, untrained: set, marker: str = "o") -> None:
    """One legend for the figure, above the panels, methods in the report's order."""
    handles = [
        plt.Line2D([], [], color=colours[m], marker=marker, ls="--" if m in untrained else "-", lw=1.5) for m in methods
    ]
    fig.legend(
        handles, methods, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=min(len(methods), 6), frameon=False
    )


def fewshot_curve(summary: pd.DataFrame, metrics: list[str], path: Path, level: float = 0.95) -> str | None:
    """Score against shots, one panel per metric: line = mean over seeds of the average over datasets (for HM,
    of the averaged Base and New), band = t-interval over seeds, points = the seeds. Methods that use no
    training images are dashed. None with fewer than two shots settings: there is no curve to draw."""
    shots = sorted(summary.shots.unique())
    if len(shots) < 2:
        return None
    _theme()
    colours = palette(summary.method)
    single = stats.single_run_methods(summary)
    fig, axes = plt.subplots(1, len(metrics), figsize=(WIDTH, 4.0), squeeze=False)
    missing, drawn = {}, []
    for ax, metric in zip(axes[0], metrics, strict=True):
        per_seed = stats.seed_averages(summary, metric)
        missing[metric] = sorted(set(summary.method) - set(per_seed.method))
        for method in method_order(per_seed.method):
            g = per_seed[per_seed.method == method]
            line = g.groupby("shots")[metric].agg(list)
            summ = [_mean_interval(v, level, method in single) for v in line]
            ax.plot(
                line.index,
                [s[0] for s in summ],
                "--" if method in single else "-",
                marker="o",
                ms=4,
                color=colours[method],
            )
            if method not in single:
                ax.fill_between(
                    line.index, [s[1] for s in summ], [s[2] for s in summ], color=colours[method], alpha=0.15, lw=0
                )
                ax.scatter(g.shots, g[metric], s=8, color=colours[method], alpha=0.5, lw=0)
            drawn.append(method)
        ax.set_xscale("log", base=2)
        ax.set_xticks(shots, labels=[str(k) for k in shots])
        ax.minorticks_off()
        ax.set_xlabel("shots per class")
        ax.set_ylabel(LABELS[metric])
    if not drawn:
        plt.close(fig)
        return None
    fig.tight_layout()
    _legend(fig, method_order(set(drawn)), colours, single)
    _save(fig, path)
    return missing_note(missing)


def _panel_grid(n: int, height: float):
    """Up to 5 panels in a row, rows filled evenly (5 panels: one row; 12: three rows of 4)."""
    rows = math.ceil(n / 5)
    cols = math.ceil(n / rows)
    fig, axes = plt.subplots(rows, cols, figsize=(WIDTH, height * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n]), cols


def base_vs_new(summary: pd.DataFrame, cells: pd.DataFrame, path: Path, level: float = 0.95) -> str | None:
    """Base against new accuracy at the largest shots setting, one panel for the Average over datasets and
    one per dataset: a marker per method with its t-intervals over seeds; dashed line = equal accuracy."""
    top_shots = summary.shots.max()
    top = cells[cells.shots == top_shots].dropna(subset=["base_acc_mean", "new_acc_mean"])
    if top.empty:
        return None
    _theme()
    colours = palette(summary.method)
    single = stats.single_run_methods(summary)
    sub = summary[summary.shots == top_shots]
    base, new = stats.seed_averages(sub, "base_acc"), stats.seed_averages(sub, "new_acc")
    avg_rows = []
    for method in sorted(set(base.method) & set(new.method)):
        b = _mean_interval(base[base.method == method].base_acc, level, method in single)
        n = _mean_interval(new[new.method == method].new_acc, level, method in single)
        avg_rows.append(
            {
                "method": method,
                "dataset": "Average",
                "base_acc_mean": b[0],
                "base_acc_ci_low": b[1],
                "base_acc_ci_high": b[2],
                "new_acc_mean": n[0],
                "new_acc_ci_low": n[1],
                "new_acc_ci_high": n[2],
            }
        )
    panels = pd.concat([pd.DataFrame(avg_rows), top], ignore_index=True)
    names = ["Average"] * bool(avg_rows) + sorted(top.dataset.unique())
    fig, axes, _ = _panel_grid(len(names), 3.1)
    for ax, name in zip(axes, names, strict=True):
        p = panels[panels.dataset == name]
        for _, r in p.iterrows():
            xerr = [[r.base_acc_mean - r.base_acc_ci_low], [r.base_acc_ci_high - r.base_acc_mean]]
            yerr = [[r.new_acc_mean - r.new_acc_ci_low], [r.new_acc_ci_high - r.new_acc_mean]]
            ax.errorbar(
                r.base_acc_mean,
                r.new_acc_mean,
                xerr=None if np.isnan(xerr[0][0]) else xerr,
                yerr=None if np.isnan(yerr[0][0]) else yerr,
                fmt="s" if r.method in single else "o",
                ms=6,
                color=colours[r.method],
                elinewidth=1,
                capsize=2,
            )
        values = pd.concat([p.base_acc_mean, p.new_acc_mean]).to_numpy()
        lo, hi = max(0.0, np.nanmin(values) - 4), min(100.0, np.nanmax(values) + 4)
        ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8, ls="--", zorder=0)
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_aspect("equal")
        ax.set_title(name, fontweight="bold" if name == "Average" else "normal")
        ax.set_xlabel("base (%)")
        ax.set_ylabel("new (%)")
    fig.tight_layout()
    _legend(fig, method_order(top.method), colours, set())
    _save(fig, path)
    missing = sorted(set(cells.method) - set(top.method))
    return f"{', '.join(missing)}: no new accuracy, not shown" if missing else ""


def per_dataset(summary: pd.DataFrame, cells: pd.DataFrame, metric: str, path: Path, level: float = 0.95) -> str | None:
    """One panel per dataset (and the Average first) at the largest shots setting: a row per method in the
    report's order, dot = mean over seeds, bar = t-interval, small dots = seeds."""
    top_shots = summary.shots.max()
    sub = summary[(summary.shots == top_shots)].dropna(subset=[metric])
    if sub.empty:
        return None
    _theme()
    colours = palette(summary.method)
    single = stats.single_run_methods(summary)
    methods = method_order(sub.method)
    targets = stats.targets_only(summary[summary.shots == top_shots])
    avg = stats.seed_averages(targets, metric)
    average = "Average" if len(targets) == len(summary[summary.shots == top_shots]) else "Average (targets)"
    datasets = [average] * (not avg.empty) + sorted(sub.dataset.unique())
    fig, axes, cols = _panel_grid(len(datasets), max(1.8, 0.6 + 0.27 * len(methods)))
    y = {m: i for i, m in enumerate(methods)}
    for ax, name in zip(axes, datasets, strict=True):
        runs = (
            avg.rename(columns={metric: "value"})
            if name == average
            else sub[sub.dataset == name].rename(columns={metric: "value"})
        )
        for method, g in runs.groupby("method"):
            mean, lo, hi = _mean_interval(g.value, level, method in single)
            if not np.isnan(lo):
                ax.plot([lo, hi], [y[method]] * 2, color=colours[method], lw=2, solid_capstyle="butt")
                ax.scatter(g.value, [y[method]] * len(g), s=10, color="black", alpha=0.5, lw=0, zorder=3)
            ax.scatter(
                [mean],
                [y[method]],
                s=36,
                color=colours[method],
                marker="s" if method in single else "o",
                zorder=4,
                edgecolor="white",
                lw=0.5,
            )
        lo, hi = ax.get_xlim()
        ax.set_xlim(max(lo, 0.0), min(hi, 100.0))  # an interval may reach past what an accuracy can be
        ax.set_yticks(range(len(methods)), labels=methods)
        ax.set_ylim(len(methods) - 0.5, -0.5)
        ax.set_title(name, fontweight="bold" if name == average else "normal")
        ax.set_xlabel(LABELS[metric])
        if ax not in axes[::cols]:
            ax.tick_params(labelleft=False)
    fig.tight_layout()
    _save(fig, path)
    missing = sorted(set(summary.method) - set(sub.method))
    return f"{', '.join(missing)}: no {LABELS[metric].replace(' (%)', '')}, not shown" if missing else ""


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

    sns.set_theme(style="white", rc=RC)
    ranks = stats.mean_ranks(scores)
    cd = stats.critical_difference(len(ranks), len(scores), alpha)
    fig, ax = plt.subplots(figsize=(WIDTH * 0.8, 1.0 + 0.3 * len(ranks)))
    sp.critical_difference_diagram(
        ranks,
        stats.nemenyi(scores),
        ax=ax,
        alpha=alpha,
        color_palette=palette(ranks.index),
        label_props={"fontsize": 10},
    )
    ax.set_title(f"{title}   (CD = {cd:.2f})", pad=22)
    _save(fig, path)


def median_seed(runs: pd.DataFrame) -> int:
    """The seed whose final-epoch loss is the median of the seeds' (the lower of the two middle ones when even)."""
    final = runs.sort_values("epoch").groupby("seed").loss.last().sort_values(kind="stable")
    return int(final.index[(len(final) - 1) // 2])


def training_curves(curves: pd.DataFrame, dataset: str, path: Path) -> str | None:
    """The mean training loss per epoch on ``dataset`` at its largest shots setting, one panel per method:
    a thin line per seed, the median seed (:func:`median_seed`) drawn thick."""
    sub = curves[curves.dataset == dataset]
    if sub.empty:
        return None
    sub = sub[sub.shots == sub.shots.max()]
    methods = method_order(sub.method.unique())
    _theme()
    colours = palette(methods)
    fig, axes, _ = _panel_grid(len(methods), 2.6)
    for ax, method in zip(axes, methods, strict=True):
        runs = sub[sub.method == method]
        middle = median_seed(runs)
        for seed, run in runs.groupby("seed"):
            run = run.sort_values("epoch")
            thick = seed == middle
            ax.plot(run.epoch, run.loss, color=colours[method], lw=2.0 if thick else 0.8, alpha=1 if thick else 0.45)
        ax.set_title(method)
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
    fig.tight_layout()
    _save(fig, path)
    return ""
