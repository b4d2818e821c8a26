"""Render an experiment's report: ``report.md`` and ``index.html`` with the figures in ``figures/``.

The order is the order a reader needs: the paper table first (methods in a fixed order, zero-shot first,
then by family; datasets as column groups with the Average first; best values in bold), then the figures,
then the statistical tests (what the number of datasets and the pre-registered family allow, in two
sentences, before any table), the comparison with published numbers, the notes written by hand (collapsed),
the per-cell statistics (collapsed) and the provenance. Whatever cannot be computed (one shots setting,
one dataset, a method without new-class accuracy) is skipped with a visible note.
"""

from __future__ import annotations

import json
import math
from importlib import metadata
from pathlib import Path

import pandas as pd

from vlprompt.analysis import stats
from vlprompt.analysis.report import adaptation, figures, published, tables
from vlprompt.analysis.report.document import Section, markdown_to_html, to_html, to_markdown
from vlprompt.analysis.report.ood import ood_section
from vlprompt.analysis.report.tables import NAMES
from vlprompt.analysis.report.teacher import teacher_section
from vlprompt.io import atomic_write_text, provenance

PROTOCOLS = {
    "base2new": "base-to-new generalisation",
    "fewshot": "few-shot classification",
    "crossdataset": "cross-dataset transfer",
    "domain_generalization": "domain generalisation",
    "ood": "OOD detection",
    "domain_adaptation": "unsupervised domain adaptation",
}
REPORT_PACKAGES = ["statsmodels", "scikit-posthocs", "seaborn", "matplotlib", "baycomp"]
CAPTIONS = {  # what each figure shows; the report adds the numbers, workflow/report/figure.rst the same words
    "fewshot_curve": "against shots per class: line = mean over seeds of the average over datasets",
    "base_vs_new": "Base against new accuracy, the Average over datasets and each dataset",
    "per_dataset": "per dataset and on average",
    "cd_diagram": "Critical-difference diagram: mean rank over datasets (1 = best)",
    "training_curves": "Training loss per epoch, one panel per method: thin lines = seeds, thick = the median seed",
}


def _num(v: float, digits: int = 2) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _metrics(summary: pd.DataFrame) -> list[str]:
    return ["base_acc", "new_acc", "hm"] if stats.primary_metric(summary) == "hm" else ["all_acc"]


def _families(methods) -> dict[str, str]:
    from vlprompt.methods import list_methods, registry

    list_methods()  # imports every method module, so that the registry is complete
    return {m: registry[m].family if m in registry else "" for m in methods}


def shots_table(summary: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """Average over datasets per method and metric (rows) and shots setting (columns), the report's order."""
    rows = []
    all_shots = sorted(summary.shots.unique())
    table = tables.paper_table(summary, shots=all_shots[0], level=level)  # for the method order only
    averages = {k: tables.paper_table(summary, shots=k, level=level) for k in all_shots}
    for m in table.methods:
        for metric in _metrics(summary):
            row = {"Method": m, "Metric": NAMES[metric]}
            for k in all_shots:
                row[f"{k} shots"] = _num(averages[k].mean.get((m, "Average", NAMES[metric]), math.nan))
            rows.append(row)
    return pd.DataFrame(rows)


def _results_section(summary: pd.DataFrame, cfg: dict, scfg: dict) -> Section:
    b2n = "hm" in _metrics(summary)
    all_shots = sorted(int(k) for k in summary.shots.unique())
    top = max(all_shots)
    s = Section(f"Results ({top} shots)" if b2n or len(all_shots) == 1 else "Results", "results")
    order = adaptation.pair_order(cfg) or cfg.get("datasets")  # domain_adaptation: the pairs are the datasets
    table = tables.paper_table(summary, level=scfg["confidence_level"], datasets=order)
    s.raw(tables.to_markdown(table), tables.to_html(table, _families(table.methods)))
    level = f"{scfg['confidence_level']:.0%}"
    legend = (
        f"Accuracy in percent, mean over seeds (bold: best of the column); the small number is the half-width "
        f"of the {level} Student-t interval over seeds (hover for the interval), blank for a method that does "
        "not depend on the seed (one run). "
    )
    if b2n:
        legend += (
            "Base and new classes are each evaluated as their own closed set; HM is their harmonic mean. "
            "Average = mean over datasets, its HM the harmonic mean of the averaged Base and New (as the "
            "papers compute it); HM (mean) is the mean of the per-dataset HMs, the quantity the tests compare."
        )
    else:
        legend += "Average = mean over datasets."
    s.text(legend, css="legend")
    no_new = sorted(m for m, g in summary.groupby("method") if b2n and g.new_acc.isna().all())
    if no_new:
        s.note(
            f"{', '.join(no_new)} cannot classify classes unseen in training: no New accuracy and no HM (—); "
            "left out of every test and figure that needs them."
        )
    return s


def _bounds_section(summary: pd.DataFrame) -> Section | None:
    """Generalisation bounds beside the test accuracy, for methods that report one (``acc_bound``), or None."""
    if "acc_bound" not in summary or summary.acc_bound.isna().all():
        return None
    top = summary.shots.max()
    rows = summary[summary.acc_bound.notna() & (summary.shots == top)]
    test = "base_acc" if rows.base_acc.notna().any() else "all_acc"
    table = (
        rows.groupby(["method", "dataset"], sort=True)
        .agg(
            test=(test, "mean"),
            train=("train_acc", "mean"),
            bound=("acc_bound", "mean"),
            bound_kl=("acc_bound_kl", "mean"),
            seeds=("seed", "nunique"),
        )
        .reset_index()
    )
    table.columns = ["Method", "Dataset", f"Test ({NAMES[test]})", "Training", "Bound", "Bound (kl)", "Seeds"]
    s = Section("Generalisation bounds", "bounds")
    s.text(
        f"PAC-Bayes lower bounds on the test accuracy ({top} shots, means over seeds): with probability 1 − δ over "
        "the training sample, accuracy on the training distribution (base classes under base-to-new) is at least "
        "the bound. Bound: McAllester's form; Bound (kl): the kl-inverse form; δ, n and the KL term are in each "
        f"run's metrics.json (`method_info.bound`). Prior: {'; '.join(sorted(rows.bound_prior.dropna().unique()))}."
    )
    s.table(table.round(2))
    return s


def _proposers_section(summary: pd.DataFrame) -> Section | None:
    """What proposed the candidates of the searches with a language model in their loop (``proposer``), or None."""
    if "proposer" not in summary or summary.proposer.isna().all():
        return None
    rows = summary[summary.proposer.notna()].groupby(["method", "proposer"], sort=True).size().reset_index()
    s = Section("Proposers", "proposers")
    s.text(
        "Methods that search with a language model in the loop, or with a pool one wrote, and what answered in "
        "these runs (each run's metrics.json, `method_info.proposer`): a recorded trace replayed exactly (the "
        "model's own answers), a model called live, the rule-based stand-in (not a language model: its results "
        "show the search and its scoring with proposals of that kind, not what a language model would propose), or "
        "a fixed pool. See docs/language_models.md."
    )
    rows.columns = ["Method", "Proposer", "Runs"]
    s.table(rows)
    return s


def _traits_section(summary: pd.DataFrame) -> Section | None:
    """Where the class prompts' attention maps look, for methods that give them (``trait_mass``), or None."""
    if "trait_mass" not in summary or summary.trait_mass.isna().all():
        return None
    top = summary.shots.max()
    rows = summary[summary.trait_mass.notna() & (summary.shots == top)]
    columns = {
        "mass": ("trait_mass", "mean"),
        "area": ("trait_area", "mean"),
        "pointing": ("trait_pointing", "mean"),
        "pointing_chance": ("trait_pointing_chance", "mean"),
    }
    if "trait_mass_train" in rows:
        columns |= {"mass_train": ("trait_mass_train", "mean"), "area_train": ("trait_area_train", "mean")}
    table = rows.groupby(["method", "dataset"], sort=True).agg(**columns, seeds=("seed", "nunique")).reset_index()
    names = {
        "method": "Method",
        "dataset": "Dataset",
        "mass": "Mass on object",
        "area": "Chance (object area)",
        "pointing": "Pointing",
        "pointing_chance": "Chance (pointing)",
        "mass_train": "Mass on object (training images)",
        "area_train": "Chance (training images)",
        "seeds": "Seeds",
    }
    table.columns = [names[c] for c in table.columns]
    s = Section("Trait localisation", "traits")
    s.text(
        f"Where the explanation looks (in percent; {top} shots, means over seeds and images): each image's own class "
        "prompt's attention over the patches at the last block (Prompt-CAM's trait maps). Mass on object: the share "
        "of that attention on patches covered by the object (each patch weighted by its covered share, averaged over "
        "the heads), beside what a uniform map gives (the object's area). Pointing: how often the peak of the "
        "head-summed map is a patch at least half object, beside a random patch's chance. Test images, and the "
        "few-shot training images, where a pocket world with spurious cues ties a texture or a position to the "
        "class. The pocket renderer knows each object's silhouette; this score is the project's, not the paper's "
        "(each run's metrics.json, `trait_localisation`)."
    )
    for col in table.columns:
        if col not in ("Method", "Dataset", "Seeds"):
            table[col] = table[col] * 100
    s.table(table.round(1))
    return s


def _figure(s: Section, name: str, caption: str, note: str | None) -> None:
    s.figure(f"figures/{name}.png", caption + (f" Note: {note}." if note else ""))


def _figures_section(summary: pd.DataFrame, cells: pd.DataFrame, out: Path, scfg: dict) -> Section:
    s = Section("Figures", "figures")
    metrics = _metrics(summary)
    top = int(summary.shots.max())
    fig_dir = out / "figures"
    level = f"{scfg['confidence_level']:.0%}"
    primary = stats.primary_metric(summary)
    note = figures.per_dataset(summary, cells, primary, fig_dir / "per_dataset.png", scfg["confidence_level"])
    if note is None:
        s.note("Per-dataset figure: no scores to draw.")
    else:
        _figure(
            s,
            "per_dataset",
            f"{NAMES[primary]} {CAPTIONS['per_dataset']} ({top} shots): dot = mean over "
            f"seeds, bar = its {level} t-interval, small dots = seeds; square = one run (the method does not "
            "depend on the seed)" + (", Average = HM of the averaged Base and New" if primary == "hm" else "") + ".",
            note,
        )
    if "hm" in metrics:
        note = figures.base_vs_new(summary, cells, fig_dir / "base_vs_new.png", scfg["confidence_level"])
        if note is None:
            s.note("Base-vs-new figure: no method has both base and new accuracy.")
        else:
            _figure(
                s,
                "base_vs_new",
                f"{CAPTIONS['base_vs_new']} ({top} shots): one marker per method with its "
                f"{level} t-intervals over seeds; dashed line = equal base and new accuracy.",
                note,
            )
    shots = sorted(summary.shots.unique())
    if len(shots) > 1:
        label = " / ".join(NAMES[m] for m in metrics)
        note = figures.fewshot_curve(summary, metrics, fig_dir / "fewshot_curve.png", scfg["confidence_level"])
        _figure(
            s,
            "fewshot_curve",
            f"{label} {CAPTIONS['fewshot_curve']}"
            + (" (HM of the averaged Base and New)" if "hm" in metrics else "")
            + f", band = {level} t-interval over seeds, dots = seeds; dashed = one run (no training images).",
            note,
        )
    else:
        s.note(f"One shots setting ({top}), so no few-shot curve.")
    for metric in stats.family_metrics(summary, scfg):
        scores, left_out = stats.complete_methods(stats.dataset_scores(summary, metric, top))
        if scores.shape[1] < 3 or scores.shape[0] < 2:
            s.note(
                f"Critical-difference diagram for {NAMES[metric]}: needs at least 3 methods with complete scores "
                f"and 2 datasets; here {scores.shape[1]} method(s) over {scores.shape[0]} dataset(s)"
                + (f" ({', '.join(left_out)} left out: no {NAMES[metric]})" if left_out else "")
                + "."
            )
            continue
        name = f"cd_diagram_{metric}"
        figures.cd_diagram(scores, fig_dir / f"{name}.png", scfg["alpha"], f"{NAMES[metric]}, {top} shots")
        _figure(
            s,
            name,
            f"{CAPTIONS['cd_diagram']} ({NAMES[metric]}, {top} shots, {scores.shape[0]} datasets); a "
            f"bar joins methods the Nemenyi test does not separate at alpha = {scfg['alpha']:g}; CD = critical "
            "difference (Demšar 2006)." + (" HM per dataset." if metric == "hm" else ""),
            f"left out (no {NAMES[metric]}): {', '.join(left_out)}" if left_out else None,
        )
    return s


def _needed_datasets(m: int, alpha: float, correction: str) -> int:
    """The fewest datasets with which each of ``m`` comparisons can reach ``alpha`` after the correction."""
    n = 1
    while not stats.attainable([stats.smallest_p(n)] * m, alpha, correction)[0].all():
        n += 1
    return n


def what_n_allows(w: pd.DataFrame, scfg: dict) -> str:
    """Two sentences: what the number of datasets and the size of the family allow the Wilcoxon tests to show."""
    m, k = len(w), int((w.inference == "test").sum())
    n = int(w.n_datasets.max())
    alpha, corr = scfg["alpha"], scfg["correction"].capitalize()
    floor = stats.smallest_p(n)
    one, many = _needed_datasets(1, alpha, scfg["correction"]), _needed_datasets(m, alpha, scfg["correction"])
    if k == 0:
        why = (
            f"the smallest two-sided p-value a Wilcoxon test can give is {floor:.3g} (every dataset favouring "
            f"one method), above alpha = {alpha:g}"
            if floor > alpha
            else f"the smallest two-sided p-value is {floor:.3g}, but {corr}'s correction over {m} comparisons needs "
            f"p ≤ {alpha / m:.3g} at its first step"
        )
        return (
            f"**With {n} datasets {why}: none of the {m} pre-registered comparisons can be significant, whatever "
            f"the differences, so they are shown as descriptions (sign pattern, effect size, interval), not as "
            f"tests.** A single comparison needs at least {one} datasets to reach alpha, a family of {m} at "
            f"least {many}; a smaller family (`stats.metrics`, `stats.methods`, `stats.reference_methods`, "
            "`stats.shots`) or more datasets would change that."
        )
    threshold = alpha / k if scfg["correction"] in ("holm", "bonferroni") else alpha
    worst = stats.max_disagreements(n, threshold)
    left = f"; the other {m - k}, which could not reach alpha whatever the data, are descriptive" if k < m else ""
    return (
        f"**{k} of the {m} pre-registered comparisons can reach alpha = {alpha:g}: with {n} datasets the "
        f"smallest two-sided p is {floor:.3g}, and {corr}'s correction runs over those {k}{left}.** At its first "
        f"step a comparison needs p ≤ {threshold:.3g}, which {n} datasets give only when "
        + (
            "every dataset favours one method."
            if worst == 0
            else f"at most {worst} dataset(s) go the other way, and by the smallest differences."
        )
    )


def _wilcoxon_table(st: pd.DataFrame, methods: list[str]) -> pd.DataFrame:
    w = st[st.test == "wilcoxon"].copy()
    bayes = st[st.test == "bayesian_signed_rank"].set_index(["comparison", "metric", "shots"])
    order = {m: i for i, m in enumerate(methods)}
    w["_key"] = [(r.metric, r.shots, order.get(r.reference, 999), order.get(r.method, 999)) for r in w.itertuples()]
    w = w.sort_values("_key")
    several = {c: w[c].nunique() > 1 for c in ("metric", "shots")}
    rows = []
    for _, r in w.iterrows():
        test = r.inference == "test"
        row = {"comparison": r.comparison}
        if several["metric"]:
            row["metric"] = NAMES.get(r.metric, r.metric)
        if several["shots"]:
            row["shots"] = int(r.shots)
        n_pairs = int(r.n_pairs) if not pd.isna(r.n_pairs) else int(r.n_datasets)
        row.update(
            {
                "N": f"{int(r.n_datasets)}" + (f" ({n_pairs} used)" if n_pairs != r.n_datasets else ""),
                "+ / − / 0": f"{int(r.n_pos)} / {int(r.n_neg)} / {int(r.n_zero)}",
                "mean diff [CI]": f"{r.mean_diff:+.2f} [{r.ci_low:+.2f}, {r.ci_high:+.2f}]",
                "r_rb": f"{r.effect_size:+.2f}",
                "p": f"{r.p_value:.3g}" if test else "—",
                "p adj.": f"{r.p_adjusted:.3g}" if test else "—",
                "result": ("significant" if bool(r.significant) else "not significant") if test else "descriptive",
            }
        )
        key = (r.comparison, r.metric, r.shots)
        if key in bayes.index:
            b = bayes.loc[key]
            b = b.iloc[0] if isinstance(b, pd.DataFrame) else b
            row["P(worse / equiv. / better)"] = f"{b.prob_worse:.2f} / {b.prob_equivalent:.2f} / {b.prob_better:.2f}"
        rows.append(row)
    return pd.DataFrame(rows)


def _stats_section(st: pd.DataFrame, summary: pd.DataFrame, scfg: dict, stats_csv: Path) -> Section:
    s = Section("Statistical tests", "tests")
    w = st[st.test == "wilcoxon"]
    if st.empty or not (st.test != "excluded").any():
        s.note(
            "No tests: the experiment has a single method, or no reference method "
            f"({', '.join(scfg['reference_methods'])}) is among its methods."
        )
    if len(w):
        s.text(what_n_allows(w, scfg))
    methods = figures.method_order(summary.method)
    metrics = ", ".join(NAMES[m] for m in stats.family_metrics(summary, scfg))
    zero = {
        "wilcox": "zero differences dropped (Wilcoxon's method; N counts the pairs used)",
        "pratt": "zero differences ranked with the others, then dropped (Pratt's method)",
        "zsplit": "the ranks of zero differences split between the two signs",
    }[scfg["zero_method"]]
    s.subtitle("Pre-registered comparisons")
    s.text(
        f"The family, pre-registered in the config's `stats` block: {metrics}; "
        + (", ".join(scfg["methods"]) if scfg["methods"] else "every method")
        + f" against {' and '.join(scfg['reference_methods'])}. Datasets are the unit of replication: each "
        f"comparison pairs seed-averaged scores over datasets (for HM, each dataset's HM). Exact two-sided "
        f"Wilcoxon signed-rank test on the differences method − reference rounded to {scfg['resolution']:g} "
        f"points, {zero}; {scfg['correction'].capitalize()}'s correction (alpha = {scfg['alpha']:g}) over the "
        f"comparisons that can reach alpha (decided from N alone, before any test: Tarone 1990). + / − / 0 = "
        f"datasets where the method is above, below, equal; r_rb = matched-pairs rank-biserial correlation; "
        f"CI = paired percentile bootstrap {scfg['confidence_level']:.0%} interval of the mean difference "
        f"({scfg['bootstrap_resamples']} resamples, seed {scfg['seed']}). Every row, with the p-values of the "
        f"descriptive comparisons, is in `{stats_csv.name}` of the results folder."
    )
    if len(w):
        s.table(_wilcoxon_table(st, methods))
    bayes = st[st.test == "bayesian_signed_rank"]
    if scfg["bayesian"] and len(w) and bayes.empty:
        s.note("Bayesian signed-rank test skipped: the `baycomp` package is not installed.")
    elif len(bayes):
        s.text(
            "P(worse / equiv. / better): posterior probabilities of the Bayesian signed-rank test (Benavoli et al. "
            f"2014, `baycomp`) that the method is worse than, practically equivalent to (ROPE ±{scfg['rope']:g} "
            f"points) or better than the reference, under a Dirichlet-process prior of strength "
            f"{scfg['bayesian_prior']:g} put at a zero difference."
        )
        n = int(bayes.n_datasets.max())
        if n < 10:
            s.note(
                f"With {n} datasets (fewer than 10) the posterior reflects the number of datasets and the prior "
                "more than the size of the differences: every dataset favouring one method gives P(better) near "
                "1 even where no test could be significant. Read it as a description of consistency, not as "
                "evidence."
            )
    ex = st[st.test == "excluded"]
    if len(ex):
        items = []
        for note, g in ex.groupby("note", sort=True):
            n_shots = g.shots.nunique()
            where = f" (at {n_shots} shots setting{'s' if n_shots > 1 else ''})" if n_shots > 1 else ""
            metric = ", ".join(sorted(NAMES.get(m, m) for m in g.metric.dropna().unique()))
            items.append(f"{note}{f' ({metric})' if metric else ''}: {', '.join(sorted(g.comparison.unique()))}{where}")
        s.note("Left out of the family:")
        s.bullets(items)
    _all_methods_tables(s, st, summary, scfg)
    return s


def _all_methods_tables(s: Section, st: pd.DataFrame, summary: pd.DataFrame, scfg: dict) -> None:
    fr = st[st.test == "friedman"]
    if fr.empty:
        return
    ids = st[st.test == "iman_davenport"].set_index(["metric", "shots"])
    s.subtitle("All methods: Friedman and Iman–Davenport")
    s.text(
        "Friedman test over datasets of every method with complete scores; its chi² approximation is "
        "conservative with few datasets, so the decision uses the Iman–Davenport F (Demšar 2006, eq. 3). "
        "The critical-difference diagrams show the Nemenyi post-hoc test."
    )
    rows = []
    for _, r in fr.iterrows():
        row = {
            "metric": NAMES.get(r.metric, r.metric),
            "shots": int(r.shots),
            "methods": len(r.method.split(",")),
            "N": int(r.n_datasets),
            "chi²": f"{r.statistic:.2f}",
            "p (chi²)": f"{r.p_value:.3g}",
        }
        if (r.metric, r.shots) in ids.index:
            i = ids.loc[(r.metric, r.shots)]
            df = i.note.split(";")[0].removeprefix("F")
            row.update(
                {
                    "F": f"{i.statistic:.2f}",
                    "df": df.strip("()"),
                    "p (F)": f"{i.p_value:.3g}",
                    "result": "significant" if i.significant else "not significant",
                }
            )
        row["left out"] = (r.note or "").split(": ")[-1] if isinstance(r.note, str) and r.note else ""
        rows.append(row)
    s.table(pd.DataFrame(rows))
    ne = st[st.test == "nemenyi"]
    if len(ne):
        table = pd.DataFrame(
            {
                "metric": ne.metric.map(NAMES),
                "shots": ne.shots.astype(int),
                "comparison": ne.comparison,
                "mean ranks": ne.note.str.replace("mean ranks ", ""),
                "p": ne.p_value.map(lambda v: f"{v:.3g}"),
                "result": ne.significant.map(lambda v: "significant" if v else ""),
            }
        )
        n_sig = int(ne.significant.sum())
        s.table(
            table, collapsed=f"Nemenyi post-hoc: all {len(ne)} pairs ({n_sig} significant at alpha = {scfg['alpha']:g})"
        )


def read_notes_file(path: str | None) -> str | None:
    """The markdown of ``report.notes_file`` (relative to the working directory, the repository root)."""
    if not path:
        return None
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise FileNotFoundError(
            f"report.notes_file: {path!r} does not exist (relative to {Path.cwd()}); "
            "fix the path in the config or remove the key"
        ) from None


def _versions() -> dict[str, str]:
    """The git commit and package versions of the process that renders the report, and its environment."""
    info = provenance()
    versions = dict(info["versions"])
    for name in REPORT_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    env = info["environment"]
    if env["lock_sha256"] is None:
        lock = env["lock"]
    else:
        lock = f"{env['lock']} (sha256 {env['lock_sha256']}), " + (
            "matches" if env["matches_lock"] else f"differs: {'; '.join(env['differences'])}"
        )
    return {"git commit": info["git_commit"], **versions, "report environment": lock}


def _unique(summary: pd.DataFrame, column: str) -> str:
    if column not in summary:
        return "not recorded"
    return ", ".join(sorted(summary[column].dropna().astype(str).unique())) or "not recorded"


def _run_environments(s: Section, summary: pd.DataFrame) -> dict[str, str]:
    """The runs' Python versions and lock hashes; a note flags runs made in an environment that differs from its
    lock (``env_matches_lock`` false in summary.csv) or with no lock to compare with."""
    prov = {"runs: python": _unique(summary, "python"), "runs: lock sha256": _unique(summary, "lock_sha256")}
    if "env_matches_lock" not in summary:
        return prov
    runs = summary.drop_duplicates(["method", "dataset", "train_dataset", "shots", "seed"])
    matches = runs.env_matches_lock.map(lambda v: str(v).lower())
    differ = runs[matches == "false"]
    unknown = runs[~matches.isin(["true", "false"])]
    if len(differ):
        which = ", ".join(sorted({f"{r.method} on {r.dataset}" for r in differ.itertuples()}))
        s.note(
            f"{len(differ)} of {len(runs)} runs were made in an environment that differs from its lock ({which}); "
            "each run's metrics.json lists the differences (provenance.environment). `python -m vlprompt env` "
            "shows an environment's; `make install` reinstalls the lock."
        )
    if len(unknown):
        s.note(
            f"{len(unknown)} of {len(runs)} runs recorded no lock to compare their environment with "
            "(an installation without the repository's requirements/, or a run recorded before locks)."
        )
    return prov


def _cells_section(cells: pd.DataFrame, summary: pd.DataFrame, scfg: dict) -> Section:
    top = summary.shots.max()
    s = Section("Per-cell statistics", "cells")
    s.text(
        f"Per method × dataset at {int(top)} shots: mean, standard deviation and {scfg['confidence_level']:.0%} "
        "Student-t interval over the runs (a method that does not depend on the seed is one run, without "
        "interval). Every shots setting is in `cells.csv` next to this report."
    )
    show = cells[cells.shots == top]
    order = {m: i for i, m in enumerate(figures.method_order(show.method))}
    show = show.assign(_o=show.method.map(order)).sort_values(["_o", "dataset"])
    table = pd.DataFrame({"method": show.method, "dataset": show.dataset, "runs": show.n_runs})
    for metric in _metrics(summary):
        table[NAMES[metric]] = [
            "—"
            if math.isnan(r[f"{metric}_mean"])
            else f"{r[f'{metric}_mean']:.2f}"
            if r.n_runs == 1
            else f"{r[f'{metric}_mean']:.2f} ± {r[f'{metric}_std']:.2f} [{r[f'{metric}_ci_low']:.2f}, "
            f"{r[f'{metric}_ci_high']:.2f}]"
            for _, r in show.iterrows()
        ]
    s.table(table, collapsed=f"{len(table)} cells (mean ± sd [t-interval])")
    return s


def _published_section(cells: pd.DataFrame, summary: pd.DataFrame, cfg: dict, scfg: dict) -> Section:
    s = Section("Comparison with published numbers", "published")
    reason = published.why_not(summary, cfg)
    comp = published.compare(cells, summary, cfg) if reason is None else None
    if reason:
        s.text(reason)
    elif comp is None or comp.empty:
        s.text("None of this experiment's methods and datasets appear in the published tables (config/published/).")
    else:
        n_out = int((comp.outside == True).sum())  # noqa: E712 (None for a single run)
        s.text(
            f"Our {published.PAPER_SHOTS}-shot mean with its {scfg['confidence_level']:.0%} t-interval over "
            "seeds, the published value (ViT-B/16, mean of seeds 1–3) and ours − published; "
            f"'outside' marks the {n_out} of {len(comp)} cells whose published value lies outside our interval "
            "(a method that does not depend on the seed has no interval)."
        )
        show = comp.copy()
        show["metric"] = show.metric.map(NAMES)
        show["outside"] = show.outside.map(lambda v: "outside" if v is True else "")
        s.table(show, css="wrap")
    return s


def _provenance_section(summary: pd.DataFrame, protocol: str, backbone: str, scfg: dict) -> Section:
    s = Section("Provenance", "provenance")
    prov = {
        "protocol": protocol,
        "backbone": backbone,
        "weights sha256": ", ".join(sorted(summary.weights_sha256.dropna().astype(str).unique()))
        if "weights_sha256" in summary
        else "unknown",
        "config hash(es)": ", ".join(sorted(summary.config_hash.dropna().astype(str).unique()))
        if "config_hash" in summary
        else "unknown",
        **{f"stats.{k}": json.dumps(v) for k, v in sorted(scfg.items())},
        **_run_environments(s, summary),
        **_versions(),
    }
    s.table(pd.DataFrame({"item": list(prov), "value": list(prov.values())}), css="wrap")
    return s


def _overrides(s: Section, cfg: dict) -> None:
    """The hyperparameter overrides in force (config ``method_overrides``), per method and scope."""
    from vlprompt.experiment.config import method_settings, override_rows

    rows = override_rows(cfg)
    if not rows:
        s.text("Every method ran with its preset hyperparameters (no `method_overrides`).")
        return
    s.text(
        "Hyperparameters overriding the methods' presets (`method_overrides`); for a run, later rows of its "
        "method take precedence (every run < shots < dataset < dataset and shots). Each run's complete "
        "hyperparameters are in its metrics.json."
    )
    s.table(
        pd.DataFrame(
            {
                "method": [r[0] for r in rows],
                "applies to": [r[1] for r in rows],
                "hyperparameters": [json.dumps(r[2]) for r in rows],
            }
        ),
        css="wrap",
    )
    on_test = sorted(
        {
            f"{m} on {d}"
            for m in cfg.get("methods", [])
            for d in cfg.get("datasets", [])
            for k in cfg.get("shots", [])
            if method_settings(cfg, m, d, k).get("search_split") == "test"
        }
    )
    if on_test:
        s.note(
            f"{', '.join(on_test)}: hyperparameters chosen on the test set, as the reference does "
            "(Tip-Adapter's main_imagenet.py); these accuracies are optimistic."
        )


def _curves_figure(s: Section, curves_dir: Path | None, out: Path, cfg: dict) -> None:
    """The training curves of one dataset (``report.curves_dataset``, else the first dataset that has them)."""
    from vlprompt.analysis.aggregate import read_curves

    curves = read_curves(curves_dir) if curves_dir is not None else None
    if curves is None or curves.empty:
        return
    chosen = (cfg.get("report") or {}).get("curves_dataset")
    have = [str(d) for d in dict.fromkeys(curves.dataset)]
    dataset: str = chosen if chosen in have else next((d for d in cfg.get("datasets", []) if d in have), have[0])
    top = int(curves[curves.dataset == dataset].shots.max())
    note = figures.training_curves(curves, dataset, out / "figures" / "training_curves.png")
    if note is not None:
        _figure(
            s,
            "training_curves",
            f"{CAPTIONS['training_curves']} (median final loss), on {dataset}, {top} shots; the mean loss of the "
            "epoch's steps, every term the method reports in its run's `curves/` CSV.",
            f"`report.curves_dataset` {chosen!r} has no curves, {dataset} shown"
            if chosen and chosen != dataset
            else None,
        )


def _user_datasets(s: Section, cfg: dict) -> None:
    """The experiment's own datasets (config ``user_datasets``) as their prepare step found them (PREPARED.json)."""
    from vlprompt.data import registry, user
    from vlprompt.experiment.grid import all_datasets

    if not user.entries(cfg):  # the report of an experiment without user datasets (also a partial config) has none
        return
    rows = []
    for name in (d for d in all_datasets(cfg) if user.is_user(cfg, d)):
        path = registry.dataset_dir(cfg, name) / "PREPARED.json"
        if not path.is_file():
            continue
        record = json.loads(path.read_text())
        rows.append(
            {
                "dataset": name,
                "root": record["root"],
                "prepared as": record["key"],
                "classes": record["counts"]["classes"],
                "train / val / test": " / ".join(str(record["images"][p]) for p in ("train", "val", "test")),
                "split": record["split_origin"],
                "converted on reading": ", ".join(f"{k} {v}" for k, v in record["conversions"].items()) or "none",
                "skipped": ", ".join(r for r, _ in record["skipped"][:5]) or "none",
                "warnings": len(record["warnings"]),
            }
        )
    if rows:
        s.text(
            "Datasets of your own (`user_datasets`, docs/your_data.md), as the prepare step checked and split them; "
            "the findings in full are in each prepared folder's PREPARED.json."
        )
        s.table(pd.DataFrame(rows), css="wrap")


def render(summary_csv: Path, stats_csv: Path, out_dir: Path, cfg: dict, curves_dir: Path | None = None) -> None:
    """Write ``out_dir/report.md``, ``out_dir/index.html``, ``out_dir/figures/*.png`` and ``out_dir/cells.csv``
    from the experiment's ``summary.csv`` and ``stats.csv`` (and the training curves in ``curves_dir``)."""
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
    all_shots = sorted(int(k) for k in summary.shots.unique())
    backbone = ", ".join(published.backbones(summary, cfg))
    intro = [
        f"Experiment **{experiment}**: {PROTOCOLS.get(protocol, protocol)} with backbone `{backbone}`; "
        f"{summary.method.nunique()} methods on {summary.dataset.nunique()} datasets, shots "
        f"{', '.join(map(str, all_shots))}, seeds {', '.join(map(str, sorted(summary.seed.unique())))}."
    ]
    cells = stats.cell_summary(summary, scfg)
    cells.to_csv(out / "cells.csv", index=False, float_format="%.4f")

    sections = [_results_section(summary, cfg, scfg)]
    if protocol == "ood":
        from vlprompt.methods import method_order

        ood = ood_section(summary, method_order(summary.method.unique()))
        if ood is not None:
            sections.insert(0, ood)
    if protocol == "domain_adaptation":
        sections.append(adaptation.section(summary, cfg, scfg["confidence_level"]))
    bounds = _bounds_section(summary)
    if bounds is not None:
        sections.append(bounds)
    proposers = _proposers_section(summary)
    if proposers is not None:
        sections.append(proposers)
    traits = _traits_section(summary)
    if traits is not None:
        sections.append(traits)
    teacher = teacher_section(Path(summary_csv), cfg)  # distillation: how much better the teacher is
    if teacher is not None:
        sections.append(teacher)
    if "hm" in _metrics(summary) and len(all_shots) > 1:
        s = Section("Average over datasets by shots", "shots")
        s.table(shots_table(summary, scfg["confidence_level"]))
        sections.append(s)
    sections.append(_figures_section(summary, cells, out, scfg))
    _curves_figure(sections[-1], curves_dir, out, cfg)
    sections.append(_stats_section(st, summary, scfg, Path(stats_csv)))
    sections.append(_published_section(cells, summary, cfg, scfg))
    notes = "\n\n".join(filter(None, [report_cfg.get("notes"), read_notes_file(report_cfg.get("notes_file"))]))
    if notes:
        s = Section("Notes", "notes")
        s.raw(
            notes,
            f"<details><summary>Notes written by hand for this experiment (click to open)</summary>"
            f"<div class='notes'>{markdown_to_html(notes)}</div></details>",
        )
        sections.append(s)
    sections.append(_cells_section(cells, summary, scfg))
    s = _provenance_section(summary, protocol, backbone, scfg)
    _user_datasets(s, cfg)
    _overrides(s, cfg)
    sections.append(s)

    atomic_write_text(out / "report.md", to_markdown(title, intro, sections))
    atomic_write_text(out / "index.html", to_html(title, intro, sections))
