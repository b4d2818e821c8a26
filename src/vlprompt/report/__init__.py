"""Render an experiment's report: ``report.md`` and a self-contained ``index.html`` with figures.

Sections: the paper-style Base / New / HM table (the average row's HM is the harmonic mean of the
averaged Base and New, as the papers compute it), few-shot curves with 95% intervals and per-seed
points, base-vs-new scatter, per-dataset bars, the critical-difference diagram, every statistical
test (from ``stats.csv``), the comparison with published numbers, and provenance.
"""

from __future__ import annotations

import html
import math
from pathlib import Path

import pandas as pd

from vlprompt.evaluate import harmonic_mean
from vlprompt.io import atomic_write_text, package_versions
from vlprompt.report import figures, published
from vlprompt.stats import cell_summary, dataset_scores, nemenyi, primary_metric

METRIC_NAMES = {"base_acc": "Base", "new_acc": "New", "hm": "HM", "all_acc": "Accuracy"}


class Section:
    """One report section, kept as markdown and as HTML from the same content."""

    def __init__(self, title: str):
        self.title, self.md, self.html = title, [f"## {title}\n"], [f"<h2>{html.escape(title)}</h2>"]

    def text(self, text: str) -> Section:
        self.md.append(text + "\n")
        self.html.append(f"<p>{html.escape(text)}</p>")
        return self

    def table(self, df: pd.DataFrame, floatfmt: str = ".2f") -> Section:
        self.md.append(df.to_markdown(index=False, floatfmt=floatfmt) + "\n")
        self.html.append(df.to_html(index=False, na_rep="—", float_format=lambda v: format(v, floatfmt),
                                    border=0, classes="table"))
        return self

    def figure(self, path: str, caption: str) -> Section:
        self.md.append(f"![{caption}]({path})\n")
        self.html.append(f'<figure><img src="{html.escape(path)}" alt="{html.escape(caption)}">'
                         f"<figcaption>{html.escape(caption)}</figcaption></figure>")
        return self


def _fmt(mean: float, std: float) -> str:
    return "—" if math.isnan(mean) else f"{mean:.2f} ± {std:.2f}"


def paper_table(summary: pd.DataFrame, shots) -> pd.DataFrame:
    """Rows = datasets + Average, columns = method × (Base, New, HM) or method × Accuracy; mean ± std."""
    sub = summary[summary.shots == shots]
    metrics = ["base_acc", "new_acc", "hm"] if primary_metric(summary) == "hm" else ["all_acc"]
    seed_mean = sub.groupby(["method", "dataset", "seed"])[metrics].mean().reset_index()
    per_ds = seed_mean.groupby(["method", "dataset"])[metrics].agg(["mean", "std"]).fillna({})
    rows = []
    datasets = sorted(sub.dataset.unique())
    methods = sorted(sub.method.unique())
    for ds in datasets + ["Average"]:
        row = {"dataset": ds}
        for m in methods:
            for metric in metrics:
                col = f"{m} {METRIC_NAMES[metric]}"
                if ds == "Average":
                    means = [per_ds.loc[(m, d), (mm, "mean")] for d in datasets for mm in [metric]
                             if (m, d) in per_ds.index]
                    if metric == "hm":  # the papers' average HM: HM of the averaged base and new
                        b = per_ds.loc[m][("base_acc", "mean")].mean()
                        n = per_ds.loc[m][("new_acc", "mean")].mean()
                        row[col] = "—" if math.isnan(harmonic_mean(b, n)) else f"{harmonic_mean(b, n):.2f}"
                    else:
                        v = pd.Series(means, dtype=float).mean()
                        row[col] = "—" if math.isnan(v) else f"{v:.2f}"
                elif (m, ds) in per_ds.index:
                    std = per_ds.loc[(m, ds), (metric, "std")]
                    row[col] = _fmt(per_ds.loc[(m, ds), (metric, "mean")], 0.0 if math.isnan(std) else std)
                else:
                    row[col] = "—"
        rows.append(row)
    return pd.DataFrame(rows)


def render(summary_csv: Path, stats_csv: Path, out_dir: Path, cfg: dict) -> None:
    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    summary = pd.read_csv(summary_csv)
    stats = pd.read_csv(stats_csv)
    title = cfg.get("report", {}).get("title") or f"vlprompt report: {cfg['experiment']}"
    primary = primary_metric(summary)
    all_shots = sorted(summary.shots.unique())
    top = max(all_shots)
    sections = []

    s = Section(f"Main table ({top} shots, mean ± std over seeds)")
    s.text(f"Protocol {cfg['protocol']}; {summary.seed.nunique()} seeds; backbone "
           f"{summary.backbone.iloc[0]}. " + ("Base and new classes are each evaluated as their own closed "
                                              "set; HM is the harmonic mean of base and new accuracy; the "
                                              "Average row's HM is the HM of the averaged base and new."
                                              if primary == "hm" else "Accuracy over all classes."))
    untrained_new = sorted(summary[summary.new_acc.isna() & (summary.protocol == "base2new")].method.unique())
    if untrained_new:
        s.text(f"— : {', '.join(untrained_new)} cannot classify classes unseen in training (no new accuracy).")
    s.table(paper_table(summary, top))
    sections.append(s)

    s = Section("Figures")
    cells = cell_summary(summary, cfg.get("stats"))
    for name, caption, fn in (
            ("fewshot_curve.png", f"{METRIC_NAMES[primary]} against shots: mean over datasets with 95% "
                                  "bootstrap interval over seeds; points are seeds", figures.fewshot_curve),
            ("base_vs_new.png", f"Base vs new accuracy per method and dataset ({top} shots)", figures.base_vs_new),
            ("per_dataset.png", f"{METRIC_NAMES[primary]} per dataset ({top} shots), 95% interval over seeds",
             figures.per_dataset)):
        if fn(summary, cells, out_dir / "figures" / name, primary):
            s.figure(f"figures/{name}", caption)
    scores = dataset_scores(summary, primary, top)
    complete = scores.dropna(axis=1, how="any")
    if complete.shape[1] >= 3 and complete.shape[0] >= 2:
        figures.cd_diagram(complete, nemenyi(complete), out_dir / "figures" / "cd_diagram.png")
        s.figure("figures/cd_diagram.png", f"Critical-difference diagram ({METRIC_NAMES[primary]}, {top} shots, "
                                           "mean rank over datasets; bars join methods not significantly "
                                           "different by the Nemenyi test)")
    else:
        s.text("Critical-difference diagram: needs at least 3 methods with complete scores and 2 datasets.")
    sections.append(s)

    s = Section("Statistical tests")
    if stats.empty:
        s.text("No tests: the experiment has a single method or no reference method.")
    else:
        s.text("Datasets are the unit of replication (seed-averaged scores). Wilcoxon signed-rank tests of each "
               "method against each reference, Holm-adjusted over the whole family shown here; effect size = "
               "matched-pairs rank-biserial correlation; CI = paired bootstrap 95% interval of the mean "
               "difference. Friedman test over all methods with complete scores.")
        show = stats.copy()
        s.table(show[["comparison", "metric", "shots", "test", "statistic", "p_value", "p_adjusted", "significant",
                      "effect_size", "mean_diff", "ci_low", "ci_high", "n_datasets", "wins", "ties", "losses"]],
                floatfmt=".4g")
    sections.append(s)

    s = Section("Comparison with published numbers")
    comp = published.compare(cells, summary, cfg)
    if comp is None:
        s.text("No published numbers apply to this experiment (backbone or datasets not in config/published/).")
    else:
        s.text("Our mean with its 95% bootstrap interval over seeds, the published value and the difference; "
               "'outside' marks cells whose published value lies outside our interval.")
        s.table(comp)
    sections.append(s)

    notes = cfg.get("report", {}).get("notes")
    if notes:
        s = Section("Notes")
        s.md.append(notes + "\n")
        s.html.append("<pre class='notes'>" + html.escape(notes) + "</pre>")
        sections.append(s)

    s = Section("Provenance")
    versions = package_versions()
    from vlprompt.io import git_commit

    prov = pd.DataFrame([
        {"item": "git commit", "value": git_commit()},
        {"item": "config hash(es)", "value": ", ".join(sorted(summary.config_hash.astype(str).unique()))},
        {"item": "backbone", "value": ", ".join(sorted(summary.backbone.astype(str).unique()))},
        {"item": "weights sha256", "value": ", ".join(sorted(summary.weights_sha256.astype(str).unique()))},
        *({"item": k, "value": v} for k, v in versions.items()),
    ])
    s.table(prov)
    sections.append(s)

    md = f"# {title}\n\n" + "\n".join("\n".join(sec.md) for sec in sections)
    atomic_write_text(out_dir / "report.md", md)
    body = "\n".join("\n".join(sec.html) for sec in sections)
    atomic_write_text(out_dir / "index.html", HTML.format(title=html.escape(title), body=body))


HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }}
table.table {{ border-collapse: collapse; font-size: 0.85em; margin: 1em 0; }}
table.table th, table.table td {{ padding: 0.25em 0.6em; border-bottom: 1px solid #ddd; text-align: right; }}
table.table th {{ background: #f4f4f4; }}
figure {{ margin: 1.5em 0; }} figure img {{ max-width: 100%; }}
figcaption {{ font-size: 0.85em; color: #555; }}
pre.notes {{ white-space: pre-wrap; font-family: inherit; }}
</style></head>
<body><h1>{title}</h1>
{body}
</body></html>
"""
