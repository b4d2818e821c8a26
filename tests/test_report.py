import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from vlprompt.report import paper_table, published, render, shots_table
from vlprompt.stats import compute_stats, settings

FAST = {"bootstrap_resamples": 200, "bayesian_samples": 1000}


def synthetic(protocol="base2new", datasets=6, shots=(1, 4, 16), seeds=(1, 2, 3)):
    """A few methods on pocket-like datasets; the linear probe has no new-class accuracy."""
    rng = np.random.default_rng(0)
    rows = []
    for method, gain in (("zeroshot", 0), ("coop", 6), ("kgcoop", 4), ("linear_probe", 7)):
        for d in range(datasets):
            for k in shots:
                for seed in seeds:
                    noise = rng.normal(0, 1) if method != "zeroshot" else 0
                    base = 50 + d + (gain + k / 4) * (method != "zeroshot") + noise
                    new = math.nan if method == "linear_probe" else 52 + d - gain / 3 + noise
                    row = {"method": method, "protocol": protocol, "dataset": f"pocket_{d}",
                           "train_dataset": f"pocket_{d}", "shots": k, "seed": seed, "base_acc": math.nan,
                           "new_acc": math.nan, "all_acc": math.nan, "hm": math.nan,
                           "backbone": "PocketCLIP-ViT-T8", "weights_sha256": "abc", "config_hash": "h1",
                           "trained": method != "zeroshot"}
                    if protocol == "base2new":
                        row.update(base_acc=base, new_acc=new, hm=2 * base * new / (base + new))
                    else:
                        row.update(all_acc=base)
                    rows.append(row)
    return pd.DataFrame(rows)


def make_report(out, df, protocol="base2new", notes="Notes *here*."):
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "summary.csv", index=False)
    compute_stats(df, FAST).to_csv(out / "stats.csv", index=False)
    cfg = {"experiment": "synthetic", "protocol": protocol, "backbone": {"model": "PocketCLIP-ViT-T8"},
           "report": {"title": "Synthetic report", "notes": notes}, "stats": FAST}
    render(out / "summary.csv", out / "stats.csv", out / "report", cfg)
    return out / "report"


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    return make_report(tmp_path_factory.mktemp("report"), synthetic())


def test_paper_table_average_hm_is_hm_of_averages():
    df = synthetic()
    table = paper_table(df, 16).set_index(["Dataset", "Method"])
    top = df[df.shots == 16].groupby(["method", "dataset"])[["base_acc", "new_acc"]].mean()
    b, n = top.loc["coop"].base_acc.mean(), top.loc["coop"].new_acc.mean()
    assert table.loc[("Average", "coop"), "HM"] == f"{2 * b * n / (b + n):.2f}"
    assert table.loc[("Average", "coop"), "Base"] == f"{b:.2f}"
    assert table.loc[("Average", "linear_probe"), "New"] == "—"
    assert table.loc[("pocket_0", "zeroshot"), "Base"] == "50.00 ± 0.00"
    assert len(table) == 4 * 7 and table.index[0][0] == "Average"


def test_shots_table_has_one_column_per_shots_setting():
    table = shots_table(synthetic())
    assert list(table.columns) == ["Method", "Metric", "1 shots", "4 shots", "16 shots"]
    assert len(table) == 4 * 3


def test_report_has_every_section_figure_and_row(rendered):
    md = (rendered / "report.md").read_text()
    for heading in ("# Synthetic report", "## Notes", "Notes *here*.", "## Main table (16 shots)",
                    "## Average over datasets by shots", "## Figures", "## Statistical tests", "## Per-cell statistics",
                    "## Comparison with published numbers", "## Provenance"):
        assert heading in md, heading
    assert "| Average   | coop " in md and "| pocket_5  | kgcoop " in md
    for fig in ("fewshot_curve", "base_vs_new", "per_dataset", "cd_diagram_base_acc", "cd_diagram_new_acc",
                "cd_diagram_hm"):
        assert (rendered / "figures" / f"{fig}.png").stat().st_size > 5000, fig
        assert f"figures/{fig}.png" in md
    assert "| kgcoop vs zeroshot" in md and "| coop vs zeroshot" in md and "Friedman" in md
    assert "linear_probe cannot classify classes unseen" in md  # the all-NaN new accuracy is said, not hidden
    assert "no published numbers" in md  # pocket benchmark
    assert "git commit" in md and "PocketCLIP-ViT-T8" in md and "h1" in md
    assert (rendered / "cells.csv").exists()
    html = (rendered / "index.html").read_text()
    assert html.count("<table") >= 6 and html.count("<img") == 6 and "<em>here</em>" in html


@pytest.mark.parametrize("case", ["one_shots", "one_dataset", "fewshot", "two_methods"])
def test_report_degrades_with_notes_instead_of_crashing(tmp_path, case):
    protocol = "fewshot" if case == "fewshot" else "base2new"
    df = synthetic(protocol=protocol, datasets=1 if case == "one_dataset" else 3,
                   shots=(16,) if case in ("one_shots", "fewshot") else (1, 16), seeds=(1, 2))
    if case == "two_methods":
        df = df[df.method.isin(["zeroshot", "linear_probe"])]
    report = make_report(tmp_path, df, protocol, notes=None)
    md = (report / "report.md").read_text()
    assert "| Average " in md and "## Notes" not in md
    if case == "one_shots":
        assert "Only one shots setting" in md and "only one shots setting, so no curve" in md
    if case == "one_dataset":
        assert "Critical-difference diagram for HM: needs at least 3 methods" in md
    if case == "fewshot":
        assert "not applicable, this protocol has no base/new class split" in md and "| pocket_2 " in md
    if case == "two_methods":
        assert "no hm for linear_probe" in md


def published_like(values: dict) -> pd.DataFrame:
    """CoOp on ViT-B/16 with three seeds per dataset around the given means."""
    rows = []
    for ds, (base, new) in values.items():
        for seed, e in zip((1, 2, 3), (-0.5, 0.0, 0.5), strict=True):
            rows.append({"method": "coop", "protocol": "base2new", "dataset": ds, "shots": 16, "seed": seed,
                         "base_acc": base + e, "new_acc": new + e, "all_acc": math.nan,
                         "hm": 2 * (base + e) * (new + e) / (base + new + 2 * e), "backbone": "ViT-B-16",
                         "trained": True})
    return pd.DataFrame(rows)


def test_published_comparison_flags_values_outside_our_interval():
    from vlprompt.stats import cell_summary

    pub = published.load("base2new")
    coop = pub[(pub.method == "coop") & (pub.metric != "hm")].pivot(index="dataset", columns="metric",
                                                                       values="published")
    values = {ds: (r.base_acc, r.new_acc) for ds, r in coop.drop("Average").iterrows()}
    values["Caltech101"] = (values["Caltech101"][0] + 5, values["Caltech101"][1])  # ours 5 points above
    df = published_like({k.lower(): v for k, v in values.items()})  # our names are lower case
    cfg = {"protocol": "base2new", "backbone": {"model": "ViT-B-16"}, "stats": FAST}
    assert published.why_not(df, cfg) is None
    comp = published.compare(cell_summary(df, FAST), df, cfg).set_index(["dataset", "metric"])
    assert len(comp) == 12 * 3  # 11 datasets and the Average, Base / New / HM
    assert comp.loc[("Caltech101", "base_acc"), "outside"]
    assert comp.loc[("Caltech101", "base_acc"), "difference"] == pytest.approx(5.0)
    assert not comp.loc[("Caltech101", "new_acc"), "outside"]
    assert not comp.loc[("ImageNet", "hm"), "outside"]
    assert comp.loc[("ImageNet", "base_acc"), "source"].startswith("CoCoOp paper")
    assert comp.loc[("Average", "base_acc"), "ours"] == pytest.approx(coop.loc["Average", "base_acc"] + 5 / 11,
                                                                      abs=0.01)


def test_published_comparison_does_not_apply_to_the_pocket_benchmark():
    df = synthetic()
    assert "no published numbers" in published.why_not(df, {"backbone": {"model": "PocketCLIP-ViT-T8"}})
    other = published_like({"ImageNet": (70.0, 60.0)}).assign(backbone="RN50")
    assert "ViT-B/16" in published.why_not(other, {})
    assert settings(None)["reference_methods"] == ["zeroshot", "coop"]


def chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(not chromium(), reason="headless Chromium not found: install the Debian package `chromium` "
                                           "(make system-deps)")
def test_html_report_renders_in_headless_chromium(rendered, tmp_path):
    shot = tmp_path / "report.png"
    proc = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
         f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,4000", f"--screenshot={shot}",
         (rendered / "index.html").as_uri()], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert shot.exists(), proc.stderr[-2000:]
    from PIL import Image

    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert img.shape[:2] == (4000, 1280)
    grey = img.mean(axis=2)
    assert (grey < 128).mean() > 0.01  # text and figures were drawn, not a blank page
    colourful = (img.max(axis=2) - img.min(axis=2)) > 80
    assert colourful.mean() > 0.002  # the seaborn figures (coloured) were loaded, not broken images


def test_notes_file_is_added_after_the_notes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("findings.md").write_text("## Findings\n\nCoOp loses *new* accuracy on dark.\n")
    df = synthetic()
    df.to_csv(tmp_path / "summary.csv", index=False)
    compute_stats(df, FAST).to_csv(tmp_path / "stats.csv", index=False)
    cfg = {"experiment": "synthetic", "protocol": "base2new", "backbone": {"model": "PocketCLIP-ViT-T8"},
           "report": {"title": "t", "notes": "Inline note.", "notes_file": "findings.md"}, "stats": FAST}
    render(tmp_path / "summary.csv", tmp_path / "stats.csv", tmp_path / "report", cfg)
    md = (tmp_path / "report" / "report.md").read_text()
    assert md.index("Inline note.") < md.index("CoOp loses *new* accuracy on dark.")
    assert "CoOp loses" in (tmp_path / "report" / "index.html").read_text()
    cfg["report"]["notes_file"] = "missing.md"
    with pytest.raises(FileNotFoundError, match="report.notes_file: 'missing.md'"):
        render(tmp_path / "summary.csv", tmp_path / "stats.csv", tmp_path / "report2", cfg)
