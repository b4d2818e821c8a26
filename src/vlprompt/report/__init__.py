"""Render an experiment's report: ``report.md`` and ``index.html`` with the figures in ``figures/``.

Sections: the paper-style table (Base / New / HM per dataset and the Average, whose HM is the harmonic
mean of the averaged Base and New, as the papers compute it), averages by shots, few-shot curves with
bootstrap intervals and per-seed points, base-vs-new scatter, per-dataset bars, critical-difference
diagrams, every statistical test of ``stats.csv``, per-cell statistics, the comparison with published
numbers, and provenance. Whatever cannot be computed (one shots setting, one dataset, a method without
new-class accuracy) is skipped with a visible note.
"""

from __future__ import annotations

import json
import math
from importlib import metadata
from pathlib import Path

import pandas as pd

from vlprompt import stats
from vlprompt.io import atomic_write_text, provenance
from vlprompt.report import figures, published
from vlprompt.report.document import Section, markdown_to_html, to_html, to_markdown

__all__ = ["render", "paper_table", "shots_table"]

NAMES = {"base_acc": "Base", "new_acc": "New", "hm": "HM", "all_acc": "Accuracy"}
PROTOCOLS = {"base2new": "base-to-new generalisation", "fewshot": "few-shot classification",
             "crossdataset": "cross-dataset transfer", "domain_generalization": "domain generalisation"}
REPORT_PACKAGES = ["statsmodels", "scikit-posthocs", "seaborn", "matplotlib", "baycomp"]


def _num(v: float, digits: int = 2) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _pm(mean: float, std: float) -> str:
    return "—" if math.isnan(mean) else f"{mean:.2f} ± {0.0 if math.isnan(std) else std:.2f}"


def _hm(b: float, n: float) -> float:
    return 2 * b * n / (b + n) if (b + n) > 0 else math.nan


def _metrics(summary: pd.DataFrame) -> list[str]:
    return ["base_acc", "new_acc", "hm"] if stats.primary_metric(summary) == "hm" else ["all_acc"]


def _dataset_means(summary: pd.DataFrame, shots) -> pd.DataFrame:
    """Mean and std over seeds per method × dataset (columns metric_mean, metric_std)."""
    sub = summary[summary.shots == shots]
    g = sub.groupby(["method", "dataset"])[list(stats.METRICS)]
    mean, std = g.mean(), g.std(ddof=1)
    return mean.add_suffix("_mean").join(std.add_suffix("_std"))


def _average(means: pd.DataFrame, method: str, metric: str) -> float:
    """The papers' Average over datasets; for HM, the harmonic mean of the averaged Base and New."""
    m = means.loc[method]
    if metric == "hm":
        return _hm(m.base_acc_mean.mean(skipna=False), m.new_acc_mean.mean(skipna=False))
    return m[f"{metric}_mean"].mean(skipna=False)


def paper_table(summary: pd.DataFrame, shots) -> pd.DataFrame:
    """The papers' table at one shots setting, mean ± std over seeds; the Average block comes first.

    Base-to-new: one row per dataset × method with Base / New / HM. Other protocols: one row per dataset,
    one column per method.
    """
    means = _dataset_means(summary, shots)
    methods = sorted(means.index.get_level_values("method").unique())
    datasets = sorted(means.index.get_level_values("dataset").unique())
    if stats.primary_metric(summary) == "hm":
        rows = []
        for m in methods:
            rows.append({"Dataset": "Average", "Method": m,
                         **{NAMES[k]: _num(_average(means, m, k)) for k in ("base_acc", "new_acc", "hm")}})
        for d in datasets:
            for m in methods:
                if (m, d) not in means.index:
                    continue
                r = means.loc[(m, d)]
                rows.append({"Dataset": d, "Method": m, **{NAMES[k]: _pm(r[f"{k}_mean"], r[f"{k}_std"])
                                                          for k in ("base_acc", "new_acc", "hm")}})
        return pd.DataFrame(rows)
    rows = [{"Dataset": "Average", **{m: _num(_average(means, m, "all_acc")) for m in methods}}]
    for d in datasets:
        rows.append({"Dataset": d, **{m: _pm(means.loc[(m, d), "all_acc_mean"], means.loc[(m, d), "all_acc_std"])
                                      if (m, d) in means.index else "—" for m in methods}})
    return pd.DataFrame(rows)


def shots_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Average over datasets per method and metric (rows) and shots setting (columns)."""
    rows = []
    all_shots = sorted(summary.shots.unique())
    per_shots = {k: _dataset_means(summary, k) for k in all_shots}
    for m in sorted(summary.method.unique()):
        for metric in _metrics(summary):
            row = {"Method": m, "Metric": NAMES[metric]}
            for k in all_shots:
                means = per_shots[k]
                ok = m in means.index.get_level_values("method")
                row[f"{k} shots"] = _num(_average(means, m, metric)) if ok else "—"
            rows.append(row)
    return pd.DataFrame(rows)


def _wilcoxon_table(st: pd.DataFrame) -> pd.DataFrame:
    w = st[st.test == "wilcoxon"].copy()
    bayes = st[st.test == "bayesian_signed_rank"].set_index(["comparison", "metric", "shots"])
    rows = []
    for _, r in w.iterrows():
        row = {"comparison": r.comparison, "metric": NAMES.get(r.metric, r.metric), "shots": int(r.shots),
               "n": int(r.n_datasets), "W/T/L": f"{int(r.wins)}/{int(r.ties)}/{int(r.losses)}",
               "mean diff [CI]": f"{r.mean_diff:+.2f} [{r.ci_low:+.2f}, {r.ci_high:+.2f}]",
               "W": _num(r.statistic, 1), "p": f"{r.p_value:.4g}", "p adj.": f"{r.p_adjusted:.4g}",
               "sig.": "yes" if bool(r.significant) else "", "r_rb": f"{r.effect_size:+.2f}"}
        key = (r.comparison, r.metric, r.shots)
        if key in bayes.index:
            b = bayes.loc[key]
            b = b.iloc[0] if isinstance(b, pd.DataFrame) else b
            row["P(worse/equiv./better)"] = f"{b.prob_worse:.2f} / {b.prob_equivalent:.2f} / {b.prob_better:.2f}"
        rows.append(row)
    return pd.DataFrame(rows)


def _stats_section(st: pd.DataFrame, summary: pd.DataFrame, scfg: dict, stats_csv: Path) -> Section:
    s = Section("Statistical tests", "tests")
    if st.empty or not (st.test != "excluded").any():
        s.note("No tests: the experiment has a single method, or no reference method "
               f"({', '.join(scfg['reference_methods'])}) is among its methods.")
    w = st[st.test == "wilcoxon"]
    m = len(w)
    s.text(f"Datasets are the unit of replication: each test compares seed-averaged scores across datasets. "
           f"Method − reference: two-sided Wilcoxon signed-rank test, {scfg['correction'].capitalize()}-corrected "
           f"over the whole family of {m} tests shown here (alpha = {scfg['alpha']:g}); effect size r_rb = "
           "matched-pairs rank-biserial correlation; W = the smaller signed-rank sum; "
           "CI = paired percentile bootstrap "
           f"{scfg['confidence_level']:.0%} interval of the mean difference ({scfg['bootstrap_resamples']} "
           f"resamples, seed {scfg['seed']}); W/T/L = wins / ties / losses over datasets, a tie being a "
           f"difference within the ROPE of ±{scfg['rope']:g} points. Family, alpha and ROPE come from the "
           f"config's `stats` block. Every row is in `{stats_csv.name}` of the results folder.")
    if m:
        n = int(w.n_datasets.max())
        floor = stats.smallest_p(n)
        needed = scfg["alpha"] / m if scfg["correction"] in ("holm", "bonferroni") else scfg["alpha"]
        if floor > needed:
            s.note(f"With {n} datasets the smallest p-value an exact two-sided Wilcoxon test can give is "
                   f"{floor:.3g}; the first step of the correction over {m} tests needs p ≤ {needed:.3g}, so no "
                   "comparison can be significant here, whatever the differences. More datasets or a smaller "
                   "pre-registered family (`stats.shots`, `stats.metrics`) would change that.")
        s.table(_wilcoxon_table(st))
    if scfg["bayesian"] and m and not (st.test == "bayesian_signed_rank").any():
        s.note("Bayesian signed-rank test skipped: the `baycomp` package is not installed.")
    elif (st.test == "bayesian_signed_rank").any():
        s.text("P(worse/equiv./better): posterior probabilities of the Bayesian signed-rank test (Benavoli et al. "
               f"2014, `baycomp`) that the method is worse than, practically equivalent to (ROPE ±{scfg['rope']:g} "
               "points) or better than the reference.")
    fr = st[st.test == "friedman"]
    if len(fr):
        s.subtitle("Friedman test (all methods with complete scores)")
        s.table(pd.DataFrame({"metric": fr.metric.map(NAMES), "shots": fr.shots.astype(int),
                              "methods": fr.method.str.replace(",", ", "), "n": fr.n_datasets.astype(int),
                              "chi²": fr.statistic.map(lambda v: f"{v:.3f}"),
                              "p": fr.p_value.map(lambda v: f"{v:.4g}"), "note": fr.note.fillna("")}))
    ne = st[(st.test == "nemenyi") & (st.shots == summary.shots.max())]
    if len(ne):
        s.subtitle(f"Nemenyi post-hoc ({int(summary.shots.max())} shots; behind the CD diagrams)")
        s.table(pd.DataFrame({"metric": ne.metric.map(NAMES), "comparison": ne.comparison,
                              "mean ranks": ne.note.str.replace("mean ranks ", ""),
                              "p": ne.p_value.map(lambda v: f"{v:.4g}"),
                              "sig.": ne.significant.map(lambda v: "yes" if v else "")}))
    ex = st[st.test == "excluded"]
    if len(ex):
        items = []
        for note, g in ex.groupby("note", sort=True):
            n_shots = g.shots.nunique()
            where = f" (at {n_shots} shots setting{'s' if n_shots > 1 else ''})" if n_shots else ""
            items.append(f"{note}: {', '.join(sorted(g.comparison.unique()))}{where}")
        s.note("Some comparisons could not be run and are not part of the family:")
        s.bullets(items)
    return s


def _figures_section(summary: pd.DataFrame, cells: pd.DataFrame, out: Path, scfg: dict) -> Section:
    s = Section("Figures", "figures")
    metrics = _metrics(summary)
    top = int(summary.shots.max())
    fig_dir = out / "figures"
    label = " / ".join(NAMES[m] for m in metrics)
    res = figures.fewshot_curve(summary, metrics, fig_dir / "fewshot_curve.png", scfg["bootstrap_resamples"],
                                scfg["seed"], scfg["confidence_level"])
    if res is None:
        s.note("Few-shot curve: no scores to draw.")
    else:
        s.figure("figures/fewshot_curve.png",
                 f"{label} against shots per class: line = mean over seeds of the average over datasets"
                 + (" (HM of the averaged Base and New)" if "hm" in metrics else "")
                 + f", band = {scfg['confidence_level']:.0%} bootstrap interval over seeds, dots = seeds; "
                   "dashed = methods that use no training images." + (f" Note: {res}." if res else ""))
    if "hm" in metrics:
        res = figures.base_vs_new(cells, fig_dir / "base_vs_new.png")
        if res is None:
            s.note("Base-vs-new scatter: no method has both base and new accuracy.")
        else:
            s.figure("figures/base_vs_new.png",
                     f"Base against new accuracy ({top} shots): one marker per method and dataset with its "
                     f"{scfg['confidence_level']:.0%} bootstrap interval over seeds; stars = averages over datasets; "
                     "dashed line = equal base and new accuracy." + (f" Note: {res}." if res else ""))
    else:
        s.note("Base-vs-new scatter: not applicable, this protocol has no base/new class split.")
    res = figures.per_dataset(summary, metrics, fig_dir / "per_dataset.png", scfg["confidence_level"], scfg["seed"])
    if res is None:
        s.note("Per-dataset bars: no scores to draw.")
    else:
        s.figure("figures/per_dataset.png",
                 f"{label} per dataset ({top} shots): bar = mean over seeds with its {scfg['confidence_level']:.0%} "
                 "bootstrap interval, dots = seeds." + (f" Note: {res}." if res else ""))
    drawn = 0
    for metric in metrics:
        scores, left_out = stats.complete_methods(stats.dataset_scores(summary, metric, top))
        if scores.shape[1] < 3 or scores.shape[0] < 2:
            s.note(f"Critical-difference diagram for {NAMES[metric]}: needs at least 3 methods with complete scores "
                   f"and 2 datasets; here {scores.shape[1]} method(s) over {scores.shape[0]} dataset(s)"
                   + (f" ({', '.join(left_out)} left out: no {NAMES[metric]})" if left_out else "") + ".")
            continue
        name = f"cd_diagram_{metric}.png"
        figures.cd_diagram(scores, fig_dir / name, scfg["alpha"], f"{NAMES[metric]}, {top} shots")
        drawn += 1
        s.figure(f"figures/{name}",
                 f"Critical-difference diagram ({NAMES[metric]}, {top} shots): mean rank over {scores.shape[0]} "
                 f"datasets (1 = best); a bar joins methods the Nemenyi test does not separate at alpha = "
                 f"{scfg['alpha']:g}; CD = critical difference (Demšar 2006)."
                 + (f" Left out (no {NAMES[metric]}): {', '.join(left_out)}." if left_out else ""))
    return s


def read_notes_file(path: str | None) -> str | None:
    """The markdown of ``report.notes_file`` (relative to the working directory, the repository root)."""
    if not path:
        return None
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise FileNotFoundError(f"report.notes_file: {path!r} does not exist (relative to {Path.cwd()}); "
                                "fix the path in the config or remove the key") from None


def _versions() -> dict[str, str]:
    info = provenance()
    versions = dict(info["versions"])
    for name in REPORT_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return {"git commit": info["git_commit"], **versions}


def _overrides(s: Section, cfg: dict) -> None:
    """The hyperparameter overrides in force (config ``method_overrides``), per method and scope."""
    from vlprompt.config import method_settings, override_rows

    rows = override_rows(cfg)
    if not rows:
        s.text("Every method ran with its preset hyperparameters (no `method_overrides`).")
        return
    s.text("Hyperparameters overriding the methods' presets (`method_overrides`); for a run, later rows of its "
           "method take precedence (every run < shots < dataset < dataset and shots). Each run's complete "
           "hyperparameters are in its metrics.json.")
    s.table(pd.DataFrame({"method": [r[0] for r in rows], "applies to": [r[1] for r in rows],
                          "hyperparameters": [json.dumps(r[2]) for r in rows]}))
    on_test = sorted({f"{m} on {d}" for m in cfg.get("methods", []) for d in cfg.get("datasets", [])
                      for k in cfg.get("shots", []) if method_settings(cfg, m, d, k).get("search_split") == "test"})
    if on_test:
        s.note(f"{', '.join(on_test)}: hyperparameters chosen on the test set, as the reference does "
               "(Tip-Adapter's main_imagenet.py); these accuracies are optimistic.")


def render(summary_csv: Path, stats_csv: Path, out_dir: Path, cfg: dict) -> None:
    """Write ``out_dir/report.md``, ``out_dir/index.html``, ``out_dir/figures/*.png`` and ``out_dir/cells.csv``
    from the experiment's ``summary.csv`` and ``stats.csv``."""
    out = Path(out_dir)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    summary = pd.read_csv(summary_csv)
    st = pd.read_csv(stats_csv) if Path(stats_csv).stat().st_size else pd.DataFrame(columns=stats.COLUMNS)
    st = st.reindex(columns=list(dict.fromkeys([*stats.COLUMNS, *st.columns])))
    report_cfg = cfg.get("report") or {}
    scfg = stats.settings(cfg.get("stats"))
    experiment = cfg.get("experiment", Path(out).name)
    title = report_cfg.get("title") or f"vlprompt report: {experiment}"
    if summary.empty:
        atomic_write_text(out / "report.md", f"# {title}\n\nNo results.\n")
        atomic_write_text(out / "index.html", to_html(title, ["No results."], []))
        return
    protocol = str(summary.protocol.iloc[0])
    metrics = _metrics(summary)
    all_shots = sorted(int(k) for k in summary.shots.unique())
    top = max(all_shots)
    backbone = ", ".join(published.backbones(summary, cfg))
    intro = [f"Experiment **{experiment}**: {PROTOCOLS.get(protocol, protocol)} with backbone `{backbone}`; "
             f"{summary.method.nunique()} methods ({', '.join(sorted(summary.method.unique()))}) on "
             f"{summary.dataset.nunique()} datasets, shots {', '.join(map(str, all_shots))}, seeds "
             f"{', '.join(map(str, sorted(summary.seed.unique())))}. Accuracies in percent."]
    cells = stats.cell_summary(summary, scfg)
    cells.to_csv(out / "cells.csv", index=False, float_format="%.4f")
    sections = []

    notes = "\n\n".join(filter(None, [report_cfg.get("notes"), read_notes_file(report_cfg.get("notes_file"))]))
    if notes:
        sections.append(Section("Notes", "notes").raw(notes, markdown_to_html(notes)))

    s = Section(f"Main table ({top} shots)", "main")
    if "hm" in metrics:
        s.text("Mean ± standard deviation over seeds. Base and new classes are each evaluated as their own closed "
               "set; HM is their harmonic mean. As in the papers, the Average row's HM is the harmonic mean of "
               "the averaged Base and New, not the mean of the per-dataset HMs.")
    else:
        s.text("Accuracy over all test classes, mean ± standard deviation over seeds; Average = mean over datasets.")
    no_new = sorted(m for m, g in summary.groupby("method") if "hm" in metrics and g.new_acc.isna().all())
    if no_new:
        s.note(f"{', '.join(no_new)} cannot classify classes unseen in training: no New accuracy and no HM (—); "
               "left out of every test and figure that needs them.")
    s.table(paper_table(summary, top))
    sections.append(s)

    s = Section("Average over datasets by shots", "shots")
    if len(all_shots) == 1:
        s.note(f"Only one shots setting ({top}): no few-shot trend to show.")
    s.table(shots_table(summary))
    sections.append(s)

    sections.append(_figures_section(summary, cells, out, scfg))
    sections.append(_stats_section(st, summary, scfg, Path(stats_csv)))

    s = Section("Per-cell statistics", "cells")
    s.text(f"Per method × dataset at {top} shots: mean, standard deviation and percentile bootstrap "
           f"{scfg['confidence_level']:.0%} interval over seeds (a deterministic method, such as zero-shot, has "
           "a zero-width interval). Every shots setting is in `cells.csv` next to this report.")
    show = cells[cells.shots == top]
    table = pd.DataFrame({"method": show.method, "dataset": show.dataset, "seeds": show.n_seeds})
    for metric in metrics:
        table[NAMES[metric]] = [
            "—" if math.isnan(r[f"{metric}_mean"]) else
            f"{r[f'{metric}_mean']:.2f} ± {r[f'{metric}_std']:.2f} [{r[f'{metric}_ci_low']:.2f}, "
            f"{r[f'{metric}_ci_high']:.2f}]" for _, r in show.iterrows()]
    s.table(table, collapsed=f"{len(table)} cells (mean ± std [CI])")
    sections.append(s)

    s = Section("Comparison with published numbers", "published")
    reason = published.why_not(summary, cfg)
    comp = published.compare(cells, summary, cfg) if reason is None else None
    if reason:
        s.text(reason)
    elif comp is None or comp.empty:
        s.text("None of this experiment's methods and datasets appear in the published tables (config/published/).")
    else:
        n_out = int(comp.outside.sum())
        s.text(f"Our {published.PAPER_SHOTS}-shot mean with its {scfg['confidence_level']:.0%} bootstrap interval "
               "over seeds, the published value (ViT-B/16, mean of seeds 1–3) and ours − published; "
               f"'outside' marks the {n_out} of {len(comp)} cells whose published value lies outside our interval.")
        show = comp.copy()
        show["metric"] = show.metric.map(NAMES)
        show["outside"] = show.outside.map(lambda v: "outside" if v else "")
        s.table(show)
    sections.append(s)

    s = Section("Provenance", "provenance")
    prov = {"protocol": protocol, "backbone": backbone,
            "weights sha256": ", ".join(sorted(summary.weights_sha256.dropna().astype(str).unique()))
            if "weights_sha256" in summary else "unknown",
            "config hash(es)": ", ".join(sorted(summary.config_hash.dropna().astype(str).unique()))
            if "config_hash" in summary else "unknown",
            **{f"stats.{k}": json.dumps(v) for k, v in sorted(scfg.items())}, **_versions()}
    s.table(pd.DataFrame({"item": list(prov), "value": list(prov.values())}))
    _overrides(s, cfg)
    sections.append(s)

    atomic_write_text(out / "report.md", to_markdown(title, intro, sections))
    atomic_write_text(out / "index.html", to_html(title, intro, sections))
