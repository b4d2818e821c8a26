import math
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from vlprompt.report import paper_table, render
from vlprompt.stats import compute_stats


def synthetic(protocol="base2new"):
    rng = np.random.default_rng(0)
    rows = []
    for method, gain in (("zeroshot", 0), ("coop", 6), ("kgcoop", 4), ("linear_probe", 7)):
        for d in range(6):
            for shots in (1, 4, 16):
                for seed in (1, 2, 3):
                    noise = rng.normal(0, 1) if method != "zeroshot" else 0
                    base = 50 + d + (gain + shots / 4) * (method != "zeroshot") + noise
                    new = math.nan if method == "linear_probe" else 52 + d - gain / 3 + noise
                    rows.append({"method": method, "protocol": protocol, "dataset": f"pocket_{d}",
                                 "train_dataset": f"pocket_{d}", "shots": shots, "seed": seed, "base_acc": base,
                                 "new_acc": new, "all_acc": math.nan, "hm": 2 * base * new / (base + new),
                                 "backbone": "PocketCLIP-ViT-T8", "weights_sha256": "abc", "config_hash": "h1",
                                 "trained": method != "zeroshot"})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    df = synthetic()
    df.to_csv(out / "summary.csv", index=False)
    compute_stats(df).to_csv(out / "stats.csv", index=False)
    cfg = {"experiment": "synthetic", "protocol": "base2new", "backbone": {"model": "PocketCLIP-ViT-T8"},
           "report": {"title": "Synthetic report", "notes": "Notes *here*."}}
    render(out / "summary.csv", out / "stats.csv", out / "report", cfg)
    return out / "report"


def test_paper_table_average_hm_is_hm_of_averages():
    df = synthetic()
    table = paper_table(df, 16).set_index("dataset")
    top = df[df.shots == 16].groupby(["method", "dataset"])[["base_acc", "new_acc"]].mean()
    b, n = top.loc["coop"].base_acc.mean(), top.loc["coop"].new_acc.mean()
    assert table.loc["Average", "coop HM"] == f"{2 * b * n / (b + n):.2f}"
    assert table.loc["Average", "linear_probe New"] == "—"
    assert len(table) == 7


def test_report_has_every_section_and_figure(rendered):
    md = (rendered / "report.md").read_text()
    for heading in ("# Synthetic report", "Main table", "Figures", "Statistical tests",
                    "Comparison with published numbers", "Notes", "Provenance"):
        assert heading in md
    assert "| pocket_3 " in md and "| Average " in md
    for fig in ("fewshot_curve", "base_vs_new", "per_dataset", "cd_diagram"):
        assert (rendered / "figures" / f"{fig}.png").stat().st_size > 5000
        assert f"figures/{fig}.png" in md
    assert "coop vs zeroshot" in md and "friedman" in md
    html = (rendered / "index.html").read_text()
    assert html.count("<table") >= 3 and "<img" in html


def chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(not chromium(), reason="Chromium not installed (`make system-deps` installs it)")
def test_html_report_renders_in_headless_chromium(rendered, tmp_path):
    shot = tmp_path / "report.png"
    proc = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,4000", f"--screenshot={shot}",
         (rendered / "index.html").as_uri()], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    from PIL import Image

    img = np.asarray(Image.open(shot).convert("L"))
    assert img.shape[0] > 1000
    assert (img < 128).mean() > 0.01  # text and figures were drawn, not a blank page
