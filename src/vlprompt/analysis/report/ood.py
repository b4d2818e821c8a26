"""Protocol ood: the OpenOOD table (near and far OOD sets, FPR@95 and AUROC, their averages, ID accuracy).

OpenOOD v1.5 prints, per method, FPR@95 ↓ and AUROC ↑ on every OOD set, the average over the near-OOD sets and over
the far-OOD sets, and the ID accuracy; means over seeds with their standard deviation. The averages are taken per
seed first (a seed's near average over its near sets), then over seeds. A second, collapsed table gives every
metric per set (AUPR-in/out and the MCM papers' FPR@95 with ID positive beside OpenOOD's).
"""

from __future__ import annotations

import math

import pandas as pd

from vlprompt.analysis.report.document import Section

HEAD = {"fpr95": "FPR@95 ↓", "auroc": "AUROC ↑"}
ALL = {
    "fpr95": "FPR@95 ↓",
    "auroc": "AUROC ↑",
    "aupr_in": "AUPR-in ↑",
    "aupr_out": "AUPR-out ↑",
    "fpr95_id": "FPR@95 (ID-TPR) ↓",
    "all_acc": "ID acc.",
}


def _cell(values: pd.Series) -> str:
    vals = values.dropna()
    if vals.empty:
        return "—"
    if len(vals) == 1 or vals.nunique() == 1:
        return f"{vals.mean():.2f}"
    return f"{vals.mean():.2f} ± {vals.std(ddof=1):.2f}"


def ood_rows(summary: pd.DataFrame) -> pd.DataFrame:
    """The rows of OOD sets (a run scored on a set), at the largest shots setting; methods without training data
    (``trained`` false) once per seed-independent run."""
    if "ood_group" not in summary:
        return summary.iloc[0:0]
    rows = summary[summary.ood_group.notna()]
    if rows.empty:
        return rows
    rows = rows[rows.shots == rows.shots.max()]
    if "trained" in rows:
        untrained = ~rows.trained.astype(bool)
        rows = pd.concat([rows[~untrained], rows[untrained].drop_duplicates(["method", "dataset"])])
    return rows


def openood_table(rows: pd.DataFrame, method_order: list[str]) -> pd.DataFrame:
    """One row per method: per set and per group average FPR@95 and AUROC, then the ID accuracy."""
    sets = {g: sorted(rows[rows.ood_group == g].dataset.unique()) for g in ("near", "far")}
    out = []
    for method in method_order:
        m = rows[rows.method == method]
        if m.empty:
            continue
        line = {"Method": method}
        for group in ("near", "far"):
            for name in sets[group]:
                for k, head in HEAD.items():
                    line[f"{name} {head}"] = _cell(m[m.dataset == name][k])
            if sets[group]:
                per_seed = m[m.ood_group == group].groupby("seed")[list(HEAD)].mean()
                for k, head in HEAD.items():
                    line[f"{group} average {head}"] = _cell(per_seed[k])
        line["ID acc."] = _cell(m.groupby("seed").all_acc.mean())
        out.append(line)
    return pd.DataFrame(out)


def metrics_table(rows: pd.DataFrame, method_order: list[str]) -> pd.DataFrame:
    out = []
    for method in method_order:
        for (group, name), g in rows[rows.method == method].groupby(["ood_group", "dataset"], sort=True):
            line = {"Method": method, "OOD set": name, "Group": group, "Seeds": g.seed.nunique()}
            line.update({head: _cell(g[k]) for k, head in ALL.items() if k in g})
            out.append(line)
    return pd.DataFrame(out)


def ood_section(summary: pd.DataFrame, method_order: list[str]) -> Section | None:
    rows = ood_rows(summary)
    if rows.empty:
        return None
    shots = int(rows.shots.max())
    n_near = rows[rows.ood_group == "near"].dataset.nunique()
    n_far = rows[rows.ood_group == "far"].dataset.nunique()
    s = Section("OOD detection (OpenOOD layout)", "ood")
    id_sets = ", ".join(sorted(rows.train_dataset.unique()))
    s.text(
        f"ID: {id_sets}; {n_near} near-OOD and {n_far} far-OOD set(s); trained methods at {shots} shots. Values in "
        "percent, mean ± standard deviation over seeds (a method without training data is one run). FPR@95 is "
        "OpenOOD's (OOD positive: ID images rejected when 95 % of OOD images are); the averages are over the "
        "group's sets per seed, then over seeds. Methods without an OOD score of their own are scored by their "
        "maximum softmax probability (MSP)."
    )
    s.table(openood_table(rows, method_order))
    s.table(metrics_table(rows, method_order), collapsed="Every metric per OOD set (click to open)")
    if any(math.isnan(v) for v in rows.auroc):
        s.note("some OOD scores were undefined (NaN); their cells show —")
    return s
