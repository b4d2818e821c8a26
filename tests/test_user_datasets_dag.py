"""The DAG on a user's own folder (config ``user_datasets``), end to end and small: 32 px pocket images, one seed,
zero-shot and a 2-epoch CoOp.

One working folder for the module, in order: a base-to-new experiment on the hostile folder (tests/user_folders.py,
``skip_unreadable``) and a small clean one, to a report; the same images through a CSV give the same rows of
``summary.csv``; the hostile folder as a cross-dataset target (run) and a domain-generalisation target (planned);
then one image replaced re-plans exactly the jobs of that dataset.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

from user_folders import CLASSES, draw, write_csv, write_folder

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def snakemake(workdir: Path, config: Path, *args: str) -> str:
    """``snakemake --configfile config *args`` in ``workdir`` (it must succeed); its output."""
    from test_isolation import snakemake as run

    proc = run(workdir, "--configfile", str(config), *args)
    return proc.stdout + proc.stderr


def experiment(workdir: Path, name: str, protocol: str, datasets: list, user_datasets: dict, **more) -> Path:
    cfg = {
        "experiment": name,
        "protocol": protocol,
        "backbone": {"model": "PocketCLIP-ViT-T8", "pretrained": "pocket"},
        "datasets": datasets,
        "methods": ["zeroshot", "coop"],
        "shots": [1],
        "seeds": [1],
        "user_datasets": user_datasets,
        "features": {"train_views": 1, "device": "cpu"},
        "train": {"device": "cpu"},
        "method_overrides": {"coop": {"epochs": 2}},
        "stats": {"bootstrap_resamples": 200, "bayesian": False},
        **more,
    }
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    return path


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("userdag")
    shapes = write_folder(workdir / "images")
    other = workdir / "other"
    for folder, (colour, shape) in list(CLASSES.items())[:4]:
        (other / folder).mkdir(parents=True)
        for i in range(5):
            draw(colour, shape, 20 + i).save(other / folder / f"{i}.png")
    entries = {
        "shapes": {"root": str(shapes), "classnames": str(workdir / "classnames.tsv"), "skip_unreadable": True},
        "other": {"root": str(other)},
    }
    return workdir, entries


def planned(text: str) -> dict[str, int]:
    body = text[text.index("Job stats:") :] if "Job stats:" in text else ""
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", body, re.M) if m.group(1) != "total"}


def test_base2new_on_the_users_folder_to_a_report(work):
    workdir, entries = work
    config = experiment(workdir, "mine", "base2new", ["shapes", "other"], entries)
    snakemake(workdir, config, "--cores", "2")
    assert (workdir / "reports" / "mine" / "index.html").is_file()
    summary = pd.read_csv(workdir / "results" / "mine" / "summary.csv")
    assert sorted(set(zip(summary.dataset, summary.method, strict=True))) == [
        ("other", "coop"),
        ("other", "zeroshot"),
        ("shapes", "coop"),
        ("shapes", "zeroshot"),
    ]
    assert summary.hm.notna().all()
    metrics = json.loads((workdir / "results/mine/runs/shapes/coop/1shot/seed1/metrics.json").read_text())
    record = metrics["dataset_provenance"]
    assert record["skipped"] == 1 and record["conversions"] == {"16-bit": 1, "CMYK": 1, "EXIF-rotated": 1}
    assert record["key"].startswith("shapes-") and record["template"] == "a photo of a {}."
    classes = json.loads(next((workdir / "results" / "splits").glob("shapes-*/classes.json")).read_text())
    assert "AC/DC" in classes["classnames"] and "猫 ねこ" in classes["classnames"]
    assert not any(p.name.startswith("split_zhou") for p in (workdir / "images").rglob("*"))


def test_the_same_images_through_a_csv_give_the_same_summary_rows(work):
    workdir, entries = work
    table = write_csv(workdir / "images", workdir / "labels.csv", skip=("Cross/notes.txt",))
    csv_entry = {**entries["shapes"], "layout": "csv", "csv": str(table)}
    config = experiment(workdir, "mine_csv", "base2new", ["shapes"], {"shapes": csv_entry})
    snakemake(workdir, config, "--cores", "2")
    by_csv = pd.read_csv(workdir / "results" / "mine_csv" / "summary.csv")
    by_folder = pd.read_csv(workdir / "results" / "mine" / "summary.csv")
    by_folder = by_folder[by_folder.dataset == "shapes"].reset_index(drop=True)
    pd.testing.assert_frame_equal(by_csv.reset_index(drop=True), by_folder)


def test_the_users_folder_as_a_cross_dataset_and_a_domain_target(work):
    workdir, entries = work
    more = {"targets": ["shapes"], "methods": ["coop"]}  # CoOp trained on `other`, evaluated on the user's folder
    config = experiment(workdir, "mine_cross", "crossdataset", ["other"], entries, **more)
    snakemake(workdir, config, "--cores", "2")
    summary = pd.read_csv(workdir / "results" / "mine_cross" / "summary.csv")
    target = summary[summary.dataset == "shapes"]
    assert list(target.method) == ["coop"] and (target.train_dataset == "other").all()
    assert target.all_acc.notna().all()
    metrics = json.loads((workdir / "results/mine_cross/runs/other/coop/1shot/seed1/transfer/shapes.json").read_text())
    assert metrics["dataset_provenance"]["key"].startswith("shapes-")
    config = experiment(workdir, "mine_dg", "domain_generalization", ["other"], entries, **more)
    jobs = planned(snakemake(workdir, config, "-n", "--quiet", "rules"))
    assert jobs.get("evaluate_transfer", 0) == 1 and jobs.get("report") == 1, jobs


def test_one_image_replaced_replans_exactly_what_depends_on_it(work):
    workdir, entries = work
    config = workdir / "mine.yaml"
    assert "Nothing to be done" in snakemake(workdir, config, "-n")
    draw("red", "circle", 77).save(workdir / "images" / "plain_ring" / "004.png")
    text = snakemake(workdir, config, "-n")
    jobs = planned(text)
    assert jobs.pop("prepare_dataset") == 1 and jobs.pop("split_classes") == 1 and jobs.pop("sample_fewshot") == 1
    assert jobs.pop("aggregate") == 1 and jobs.pop("report") == 1
    assert sum(n for rule, n in jobs.items() if rule.startswith("train")) == 2  # zero-shot and CoOp on shapes
    assert sum(n for rule, n in jobs.items() if rule.startswith("extract")) == 2  # its test bank, its few-shot bank
    jobs_of = [line for line in text.splitlines() if line.strip().startswith(("output:", "wildcards:"))]
    assert any("shapes-" in line for line in jobs_of)
    assert not [line for line in jobs_of if "other" in line]  # no job builds anything of the other dataset


def test_the_documented_example_runs_as_written(tmp_path):
    """docs/your_data.md's config and five commands, in a fresh clone, on a folder of class subfolders."""
    from test_isolation import ENV

    doc = (REPO / "docs" / "your_data.md").read_text()

    def block(tag: str) -> str:
        return re.search(rf"<!-- example: {re.escape(tag)} -->\n```\w+\n(.*?)```", doc, re.S).group(1)

    clone = tmp_path / "vlprompt"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True, env=ENV)
    (clone / "my_experiment.yaml").write_text(block("my_experiment.yaml"))
    for folder, (colour, shape) in list(CLASSES.items())[:4]:
        (clone / "my_images" / folder).mkdir(parents=True)
        for i in range(6):
            draw(colour, shape, 40 + i).save(clone / "my_images" / folder / f"{i}.png")
    env = {**ENV, "PYTHONPATH": str(clone / "src")}
    outputs = []
    for command in block("commands").strip().splitlines():
        proc = subprocess.run(command, shell=True, cwd=clone, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, (command, proc.stdout[-2000:], proc.stderr[-2000:])
        outputs.append(proc.stdout)
    assert re.search(r"^my_images\s+missing\s+data/my_images-[0-9a-f]{8}", outputs[0], re.M)
    assert "ready to prepare" in outputs[1]
    assert "method,protocol,dataset" in outputs[4] and "my_images" in outputs[4]
    assert (clone / "reports" / "my_experiment" / "index.html").is_file()
