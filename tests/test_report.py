import json
import math
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from vlprompt.analysis.report import figures, paper_table, published, render, shots_table, tables
from vlprompt.analysis.report.render import CAPTIONS, what_n_allows
from vlprompt.analysis.stats import compute_stats, settings

REPO = Path(__file__).resolve().parents[1]

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
                    row = {
                        "method": method,
                        "protocol": protocol,
                        "dataset": f"pocket_{d}",
                        "train_dataset": f"pocket_{d}",
                        "shots": k,
                        "seed": seed,
                        "base_acc": math.nan,
                        "new_acc": math.nan,
                        "all_acc": math.nan,
                        "hm": math.nan,
                        "backbone": "PocketCLIP-ViT-T8",
                        "weights_sha256": "abc",
                        "config_hash": "h1",
                        "trained": method != "zeroshot",
                    }
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
    cfg = {
        "experiment": "synthetic",
        "protocol": protocol,
        "backbone": {"model": "PocketCLIP-ViT-T8"},
        "report": {"title": "Synthetic report", "notes": notes},
        "stats": FAST,
    }
    render(out / "summary.csv", out / "stats.csv", out / "report", cfg)
    return out / "report"


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    return make_report(tmp_path_factory.mktemp("report"), synthetic())


def test_paper_table_average_hm_is_hm_of_averages_and_both_conventions_are_shown():
    df = synthetic()
    table = paper_table(df, 16)
    top = df[df.shots == 16].groupby(["method", "dataset"])[["base_acc", "new_acc", "hm"]].mean()
    b, n = top.loc["coop"].base_acc.mean(), top.loc["coop"].new_acc.mean()
    assert table.mean[("coop", "Average", "HM")] == pytest.approx(2 * b * n / (b + n))
    assert table.mean[("coop", "Average", "Base")] == pytest.approx(b)
    assert table.mean[("coop", "Average", "HM (mean)")] == pytest.approx(top.loc["coop"].hm.mean())
    assert ("linear_probe", "Average", "New") not in table.mean
    assert table.groups[0] == ("Average", ["Base", "New", "HM", "HM (mean)"])
    assert [g for g, _ in table.groups[1:]] == [f"pocket_{d}" for d in range(6)]
    frame = table.frame()
    assert frame.loc["zeroshot", ("pocket_0", "Base")] == 50.0 and frame.shape == (4, 4 + 6 * 3)


def test_methods_in_a_fixed_order_zero_shot_first_then_by_family():
    table = paper_table(synthetic(), 16)
    assert table.methods == ["zeroshot", "linear_probe", "coop", "kgcoop"]
    order = figures.method_order(
        ["zz_new", "kgcoop", "maple", "tip_adapter", "zeroshot_ensemble", "coop", "zeroshot", "aa_new"]
    )
    # zero-shot family, adapters, text prompts (CoOp before what derives from it), deep prompts, unknown names
    assert order == ["zeroshot", "zeroshot_ensemble", "tip_adapter", "coop", "kgcoop", "maple", "aa_new", "zz_new"]


def test_method_colours_are_the_same_in_every_report():
    small, large = figures.palette(["coop", "zeroshot"]), figures.palette(["kgcoop", "coop", "maple", "zeroshot"])
    assert small["coop"] == large["coop"] and small["zeroshot"] == large["zeroshot"]
    assert len(set(figures.palette(figures.method_order(["zeroshot", "coop", "kgcoop", "maple"])).values())) == 4


def test_single_run_cells_have_no_interval_and_the_best_value_is_marked():
    table = paper_table(synthetic(), 16)
    key = ("zeroshot", "pocket_0", "Base")
    assert table.runs[key] == 1 and math.isnan(table.low[key])  # zero-shot: one run repeated over seeds
    assert table.runs[("coop", "pocket_0", "Base")] == 3
    best = table.best()
    frame = table.frame()
    for column in frame.columns:
        top = frame[column].round(2).max()
        assert {m for m, g, c in best if (g, c) == column} == set(frame.index[frame[column].round(2) == top])
    html = tables.to_html(table)
    winner = frame[("Average", "Base")].idxmax()
    row = re.search(rf"<td class='method'[^>]*>{winner}</td>(.*?)</tr>", html).group(1)
    assert row.startswith("<td title=") and "<strong>" in row.split("</td>")[0]
    assert "one run: the method does not depend on the seed" in html
    md = tables.to_markdown(table)
    assert f"| {winner} | **{frame.loc[winner, ('Average', 'Base')]:.2f}** ± " in md
    assert "| zeroshot | 5" in md and "| Method | Average Base | Average New |" in md


def test_a_wide_table_is_split_into_tables_of_whole_groups():
    table = paper_table(synthetic(datasets=11, shots=(16,)), 16)
    html = tables.to_html(table)
    chunks = html.split("<table")[1:]
    assert len(chunks) == 3
    for chunk in chunks:
        head = chunk.split("</thead>")[0]
        assert sum(int(n) for n in re.findall(r"colspan='(\d+)'", head)) <= tables.MAX_COLUMNS
    assert html.count("<td class='method'") == 3 * 4  # every table has every method


def test_transfer_protocols_average_over_targets_and_mark_the_source():
    df = synthetic(protocol="crossdataset", datasets=4, shots=(16,))
    df["train_dataset"] = "pocket_0"
    table = paper_table(df, 16)
    assert [g for g, _ in table.groups] == [
        "Average (targets)",
        "pocket_0 (source)",
        "pocket_1",
        "pocket_2",
        "pocket_3",
    ]
    targets = df[(df.dataset != "pocket_0") & (df.method == "coop")]
    assert table.mean[("coop", "Average (targets)", "Accuracy")] == pytest.approx(targets.all_acc.mean())
    st = compute_stats(df, FAST)
    assert (st[st.test == "wilcoxon"].n_datasets == 3).all()  # the source is not a transfer result


def test_shots_table_has_one_column_per_shots_setting():
    table = shots_table(synthetic())
    assert list(table.columns) == ["Method", "Metric", "1 shots", "4 shots", "16 shots"]
    assert len(table) == 4 * 3 and list(table.Method[::3]) == ["zeroshot", "linear_probe", "coop", "kgcoop"]


def test_report_order_results_first_then_figures_tests_and_notes(rendered):
    md = (rendered / "report.md").read_text()
    headings = [
        "# Synthetic report",
        "## Results (16 shots)",
        "## Average over datasets by shots",
        "## Figures",
        "## Statistical tests",
        "## Comparison with published numbers",
        "## Notes",
        "Notes *here*.",
        "## Per-cell statistics",
        "## Provenance",
    ]
    positions = [md.index(h) for h in headings]
    assert positions == sorted(positions), headings
    assert "| coop |" in md and "pocket_5 Base" in md
    for fig in ("per_dataset", "base_vs_new", "fewshot_curve", "cd_diagram_hm"):
        assert (rendered / "figures" / f"{fig}.png").stat().st_size > 5000, fig
        assert f"figures/{fig}.png" in md
    assert not (rendered / "figures" / "cd_diagram_base_acc.png").exists()  # not in the pre-registered family
    assert "| kgcoop vs zeroshot" in md and "| coop vs zeroshot" in md and "Iman–Davenport" in md
    assert "linear_probe cannot classify classes unseen" in md  # the all-NaN new accuracy is said, not hidden
    assert "no published numbers" in md  # pocket benchmark
    assert "git commit" in md and "PocketCLIP-ViT-T8" in md and "h1" in md
    assert (rendered / "cells.csv").exists()
    html = (rendered / "index.html").read_text()
    assert html.count("<img") == 4 and "<em>here</em>" in html
    assert html.index("<table class='table paper'") < html.index("<img")
    assert re.search(r"<details><summary>Notes written by hand.*<em>here</em>", html, re.S)  # collapsed
    assert re.search(r"<details><summary>Nemenyi post-hoc: all \d+ pairs", html)  # the long table folded away


def test_the_report_says_what_n_and_the_family_allow():
    cfg = settings(None)
    four = pd.DataFrame({"n_datasets": [4] * 17, "inference": ["descriptive"] * 17})
    text = what_n_allows(four, cfg)
    assert "With 4 datasets the smallest two-sided p-value a Wilcoxon test can give is 0.125" in text
    assert "none of the 17 pre-registered comparisons can be significant" in text
    assert "A single comparison needs at least 6 datasets to reach alpha, a family of 17 at least 10" in text
    eleven = pd.DataFrame({"n_datasets": [11] * 17, "inference": ["test"] * 17})
    text = what_n_allows(eleven, cfg)
    assert "17 of the 17 pre-registered comparisons can reach alpha" in text
    # Holm's first step over 17: p <= 0.05 / 17 = 0.00294. With 11 datasets, one disagreeing dataset of rank 1
    # (R- = 1; R- <= 1 in 2 of the 2^11 sign patterns) gives p = 2 * 2 / 2048 = 0.00195; two, of ranks 1 and 2
    # (R- = 3; the patterns {}, {1}, {2}, {3}, {1, 2}), give 2 * 5 / 2048 = 0.0049 > 0.00294
    assert "at most 1 dataset(s) go the other way" in text


def test_no_row_is_labelled_significant_that_could_not_be(rendered):
    st = pd.read_csv(rendered.parent / "stats.csv")
    w = st[st.test == "wilcoxon"]
    assert (w.min_p_adjusted[w.significant] <= 0.05).all()
    assert not w[w.inference == "descriptive"].significant.any()
    md = (rendered / "report.md").read_text()
    for line in md.splitlines():
        if line.startswith("| ") and " vs " in line and "descriptive" in line:
            assert "| significant" not in line


@pytest.mark.parametrize("case", ["one_shots", "one_dataset", "fewshot", "two_methods"])
def test_report_degrades_with_notes_instead_of_crashing(tmp_path, case):
    protocol = "fewshot" if case == "fewshot" else "base2new"
    df = synthetic(
        protocol=protocol,
        datasets=1 if case == "one_dataset" else 3,
        shots=(16,) if case in ("one_shots", "fewshot") else (1, 16),
        seeds=(1, 2),
    )
    if case == "two_methods":
        df = df[df.method.isin(["zeroshot", "linear_probe"])]
    report = make_report(tmp_path, df, protocol, notes=None)
    md = (report / "report.md").read_text()
    assert "| Method | Average" in md and "## Notes" not in md
    if case == "one_shots":
        assert "One shots setting (16), so no few-shot curve." in md
        assert not (report / "figures" / "fewshot_curve.png").exists()
    if case == "one_dataset":
        assert "Critical-difference diagram for HM: needs at least 3 methods" in md
    if case == "fewshot":
        assert "base_vs_new" not in md and "| Method | Average | pocket_0 | pocket_1 | pocket_2 |" in md
    if case == "two_methods":
        assert "no hm for linear_probe" in md


def published_like(values: dict) -> pd.DataFrame:
    """CoOp on ViT-B/16 with three seeds per dataset around the given means."""
    rows = []
    for ds, (base, new) in values.items():
        for seed, e in zip((1, 2, 3), (-0.5, 0.0, 0.5), strict=True):
            rows.append(
                {
                    "method": "coop",
                    "protocol": "base2new",
                    "dataset": ds,
                    "shots": 16,
                    "seed": seed,
                    "base_acc": base + e,
                    "new_acc": new + e,
                    "all_acc": math.nan,
                    "hm": 2 * (base + e) * (new + e) / (base + new + 2 * e),
                    "backbone": "ViT-B-16",
                    "trained": True,
                }
            )
    return pd.DataFrame(rows)


def test_published_comparison_flags_values_outside_our_interval():
    from vlprompt.analysis.stats import cell_summary

    pub = published.load("base2new")
    coop = pub[(pub.method == "coop") & (pub.metric != "hm")].pivot(
        index="dataset", columns="metric", values="published"
    )
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
    assert comp.loc[("Average", "base_acc"), "ours"] == pytest.approx(
        coop.loc["Average", "base_acc"] + 5 / 11, abs=0.01
    )


def test_published_comparison_does_not_apply_to_the_pocket_benchmark():
    df = synthetic()
    assert "no published numbers" in published.why_not(df, {"backbone": {"model": "PocketCLIP-ViT-T8"}})
    other = published_like({"ImageNet": (70.0, 60.0)}).assign(backbone="RN50")
    assert "ViT-B/16" in published.why_not(other, {})
    assert settings(None)["reference_methods"] == ["zeroshot", "coop"]


def chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


MEASURE = """<script>
window.addEventListener("load", () => {
  const doc = document.documentElement, table = document.querySelector("table.paper");
  const wide = [...document.querySelectorAll("table")].filter(t => t.offsetParent !== null &&
      t.getBoundingClientRect().right > doc.clientWidth + 1).map(t => t.innerText.slice(0, 60));
  const scrolled = [...document.querySelectorAll(".scroll")].filter(d => d.offsetParent !== null &&
      d.scrollWidth > d.clientWidth + 1).map(d => d.innerText.slice(0, 60));
  const out = document.createElement("pre");
  out.id = "measure";
  out.textContent = JSON.stringify({innerWidth: window.innerWidth, innerHeight: window.innerHeight,
      scrollWidth: doc.scrollWidth, clientWidth: doc.clientWidth, wide: wide, scrolled: scrolled,
      tableTop: table.getBoundingClientRect().top, tableBottom: table.getBoundingClientRect().bottom,
      firstH2: document.querySelector("h2").textContent,
      images: [...document.images].map(i => [i.naturalWidth, i.getBoundingClientRect().right])});
  document.body.appendChild(out);
});
</script>"""


def _chromium(args, tmp_path, page):
    return subprocess.run(
        [
            chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--window-size=1400,900",
            *args,
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.skipif(
    not chromium(), reason="headless Chromium not found: install the Debian package `chromium` (make system-deps)"
)
def test_html_report_in_headless_chromium_fits_the_page_and_opens_with_the_paper_table(rendered, tmp_path):
    # the page as a reader sees it at 1400 x 900 px: measured in the DOM, then kept as a screenshot
    page = rendered / "measured.html"
    page.write_text((rendered / "index.html").read_text().replace("</body>", MEASURE + "</body>"))
    try:
        proc = _chromium(["--virtual-time-budget=10000", "--dump-dom"], tmp_path, page)
    finally:
        page.unlink()
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = re.search(r'<pre id="measure">(.*?)</pre>', proc.stdout, re.S)
    assert found, proc.stdout[-2000:]
    m = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert m["innerWidth"] == 1400
    assert m["scrollWidth"] <= m["clientWidth"], m  # no horizontal overflow of the page
    assert m["wide"] == [] and m["scrolled"] == [], m  # no table wider than the page, none scrolling sideways
    assert m["firstH2"].startswith("Results") and m["tableTop"] < m["innerHeight"] * 0.4, m
    assert m["tableBottom"] < m["innerHeight"], m  # the whole paper table is on the first screen
    assert all(w > 0 and right <= m["clientWidth"] for w, right in m["images"]), m  # figures loaded and fit
    folder = Path(os.environ.get("VLPROMPT_ARTIFACTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    shot = folder / "report_first_screen.png"
    proc = _chromium([f"--screenshot={shot}"], tmp_path, rendered / "index.html")
    assert proc.returncode == 0 and shot.exists(), proc.stderr[-2000:]
    print(f"screenshot of the report's first screen: {shot}")
    from PIL import Image

    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert img.shape[:2] == (900, 1400)
    assert (img.mean(axis=2) < 128).mean() > 0.01  # text was drawn, not a blank page


def test_figure_captions_for_snakemakes_report_cover_every_figure():
    jinja2 = pytest.importorskip("jinja2")
    template = jinja2.Template((REPO / "workflow" / "report" / "figure.rst").read_text())

    class Snake:
        def __init__(self, name):
            self.wildcards = type("W", (), {"name": name})

    for name, words in (
        ("per_dataset", "per dataset"),
        ("base_vs_new", CAPTIONS["base_vs_new"]),
        ("fewshot_curve", "against shots per class"),
        ("cd_diagram_hm", "Critical-difference"),
    ):
        text = " ".join(template.render(snakemake=Snake(name)).split())
        assert words in text, (name, text)
    rule = (REPO / "workflow" / "rules" / "report.smk").read_text()
    assert 'patterns=["{name}.png"]' in rule and 'caption="../report/figure.rst"' in rule


def test_notes_file_is_added_after_the_notes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("findings.md").write_text("## Findings\n\nCoOp loses *new* accuracy on dark.\n")
    df = synthetic()
    df.to_csv(tmp_path / "summary.csv", index=False)
    compute_stats(df, FAST).to_csv(tmp_path / "stats.csv", index=False)
    cfg = {
        "experiment": "synthetic",
        "protocol": "base2new",
        "backbone": {"model": "PocketCLIP-ViT-T8"},
        "report": {"title": "t", "notes": "Inline note.", "notes_file": "findings.md"},
        "stats": FAST,
    }
    render(tmp_path / "summary.csv", tmp_path / "stats.csv", tmp_path / "report", cfg)
    md = (tmp_path / "report" / "report.md").read_text()
    assert md.index("Inline note.") < md.index("CoOp loses *new* accuracy on dark.")
    assert "CoOp loses" in (tmp_path / "report" / "index.html").read_text()
    cfg["report"]["notes_file"] = "missing.md"
    with pytest.raises(FileNotFoundError, match="report.notes_file: 'missing.md'"):
        render(tmp_path / "summary.csv", tmp_path / "stats.csv", tmp_path / "report2", cfg)
