"""The real-size path, end to end, on this CPU.

``config/base2novel.yaml`` as a user would run it, changed only where this machine differs from a GPU
cluster with the real data and weights:

- the backbone is the real architecture, open_clip's ViT-B-16 with QuickGELU (``quick_gelu: true``, as for
  OpenAI's weights), but with weights the test writes: a randomly initialised model saved (fp16 state dict,
  OpenAI/open_clip key layout) into a local file, given as ``backbone.pretrained`` (nothing can be downloaded);
- the dataset is EuroSAT in its published format (``EuroSAT.zip`` holding ``2750/<Class>/<Class>_<n>.jpg``,
  all 10 classes, real 64 px JPEGs, and a ``split_zhou_EuroSAT.json`` in CoOp's format) but with 2 training,
  1 validation and 1 test image per class, served by a loopback mirror (``download.mirror``; the archive's
  checksum overridden for the miniature, as ``download.files`` allows);
- 1 shot, 1 seed, zero-shot CLIP, CoOp (feature bank) and VPT-deep (image encoder in the loop) for one epoch
  (one step each: ``by_dataset: {EuroSAT: {epochs: 1}}`` beside the config's own ImageNet overrides),
  2 augmented views per training image, 2 DataLoader workers, 1 thread per job.

Everything else is the real config's: ``snakemake --configfile`` with its prepare (download through the
mirror, checksum, safe extraction, published split), base/new classes, few-shot subset, feature extraction
(test and validation splits, the subset's views, un-augmented and validation images at 224 px), training jobs
at ``job_granularity: run``, aggregate, statistics and report. Only the GPU (fp16 autocast, pinned memory) and
the real weights are missing.

Measured on the 2-core reference machine (shared with other work): about 3 minutes.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import time

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from mirror import Server, eurosat_archive, jpeg
from test_e2e import ENV, REPO, SNAKEMAKE

EXPERIMENT = "real_size"
METHODS = ["zeroshot", "coop", "vpt_deep"]
PARTS = {"train": 2, "val": 1, "test": 1}  # images per class and part of the miniature EuroSAT
VIEWS = 2


def write_random_vit_b16(path) -> None:
    """ViT-B/16 (QuickGELU) with random weights, saved as a state dict in fp16 as a local weights file."""
    from vlprompt.clip.backbone import open_clip

    torch.manual_seed(0)
    model = open_clip().create_model("ViT-B-16", pretrained=None, force_quick_gelu=True)
    torch.save({k: v.half() for k, v in model.state_dict().items()}, path)


def real_size_config(server: Server, weights, split: dict, archive: bytes) -> dict:
    """config/base2novel.yaml with the miniature's mirror, the local weights and the smallest grid."""
    cfg = yaml.safe_load((REPO / "config" / "base2novel.yaml").read_text())
    server.add("/EuroSAT/EuroSAT.zip", archive)
    cfg.update(experiment=EXPERIMENT, datasets=["EuroSAT"], methods=METHODS, shots=[1], seeds=[1])
    cfg["backbone"]["pretrained"] = str(weights)
    cfg["download"] = {
        "mirror": server.url + "/",
        "files": {"EuroSAT": {"EuroSAT.zip": {"md5": hashlib.md5(archive).hexdigest()}}},
        "split_files": {"EuroSAT": server.add("/split_zhou_EuroSAT.json", json.dumps(split).encode())},
    }
    cfg["features"].update(train_views=VIEWS, workers=2)
    cfg["train"]["threads"] = 1
    for method in ("coop", "vpt_deep"):
        block = cfg["method_overrides"].setdefault(method, {}) or {}
        block.setdefault("by_dataset", {})["EuroSAT"] = {"epochs": 1}
        cfg["method_overrides"][method] = block
    return cfg


@pytest.fixture(scope="module")
def real_size(tmp_path_factory):
    """Run the DAG once; yield (workdir, config, snakemake's output, mirror's request log, seconds)."""
    work = tmp_path_factory.mktemp("real_size")
    weights = work / "vit_b16_random.pt"
    write_random_vit_b16(weights)
    archive, split = eurosat_archive(PARTS, image=jpeg)
    with Server() as server:
        cfg = real_size_config(server, weights, split, archive)
        config = work / "real_size.yaml"
        config.write_text(yaml.safe_dump(cfg))
        t0 = time.time()
        proc = subprocess.run(
            SNAKEMAKE + ["-d", str(work), "--cores", "2", "--configfile", str(config)],
            capture_output=True,
            text=True,
            env=ENV,
            timeout=1500,
        )
        seconds = time.time() - t0
        requests = list(server.log)
    print(f"real-size base-to-new DAG (ViT-B/16, CPU): {seconds:.0f} s")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return work, cfg, proc.stdout + proc.stderr, requests, seconds


@pytest.mark.slow
def test_every_stage_of_the_real_dag_ran(real_size):
    _, _, out, requests, _ = real_size
    body = out[out.index("Job stats:") :]
    jobs = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", body, re.M)}
    assert jobs == {
        "prepare_dataset": 1,
        "split_classes": 1,
        "sample_fewshot": 1,
        "extract_test": 1,
        "extract_fewshot": 1,
        "train": 2,
        "train_images": 1,
        "aggregate": 1,
        "report": 1,
        "all": 1,
        "total": 11,
    }, jobs
    # the archive and the split file came through the mirror
    assert ("/EuroSAT/EuroSAT.zip", None) in requests and ("/split_zhou_EuroSAT.json", None) in requests


@pytest.mark.slow
def test_prepared_dataset_and_feature_banks_are_vit_b16_sized(real_size):
    work, cfg, _, _, _ = real_size
    prepared = json.loads((work / "data" / "EuroSAT" / "split_zhou_EuroSAT.json").read_text())
    assert [len(prepared[p]) for p in ("train", "val", "test")] == [10 * n for n in PARTS.values()]
    classes = json.loads((work / "results" / "splits" / "EuroSAT" / "classes.json").read_text())
    assert classes["base"] == [0, 1, 2, 3, 4] and classes["new"] == [5, 6, 7, 8, 9]
    banks = list((work / "results" / "features").iterdir())
    assert len(banks) == 1 and re.fullmatch(r"ViT-B-16__vit_b16_random-[0-9a-f]{8}__quickgelu", banks[0].name)
    store = banks[0] / "EuroSAT"
    assert np.load(store / "test.npy", mmap_mode="r").shape == (10, 512)
    assert np.load(store / "val.npy", mmap_mode="r").shape == (10, 512)
    subset = store / f"views{VIEWS}_crop{cfg['features']['crop_scale_min']:g}_f2"
    train = np.load(subset / "shot1_seed1.train.npy", mmap_mode="r")
    plain = np.load(subset / "shot1_seed1.plain.npy", mmap_mode="r")
    assert train.shape == (VIEWS, 10, 512) and plain.shape == (10, 512)
    assert np.isfinite(train).all() and not np.allclose(train[0], train[1])  # two different augmentations
    for sidecar in (store / "test.json", subset / "shot1_seed1.train.json"):
        meta = json.loads(sidecar.read_text())
        assert (meta["backbone"], meta["quick_gelu"], meta["weights_source"]) == ("ViT-B-16", True, "file")
        assert meta["pretrained"] == "vit_b16_random.pt"
    assert "CenterCrop(size=(224, 224))" in json.loads((store / "test.json").read_text())["transform"]
    train_meta = json.loads((subset / "shot1_seed1.train.json").read_text())
    assert train_meta["views"] == VIEWS and train_meta["scale_min"] == 0.08  # CoOp's crop, the real config's


@pytest.mark.slow
def test_runs_trained_one_step_with_the_per_dataset_override(real_size):
    work, _, _, _, _ = real_size
    runs = work / "results" / EXPERIMENT / "runs" / "EuroSAT"
    for method in ("coop", "vpt_deep"):
        metrics = json.loads((runs / method / "1shot" / "seed1" / "metrics.json").read_text())
        assert metrics["hyperparameters"]["epochs"] == 1 and metrics["overrides"]["epochs"] == 1, method
        assert metrics["train"]["steps_per_epoch"] == 1 and len(metrics["train"]["loss_history"]) == 1, method
        assert np.isfinite(metrics["train"]["loss_history"][0]), method
        prov = metrics["provenance"]
        assert prov["backbone"] == "ViT-B-16" and prov["quick_gelu"] is True and prov["weights_source"] == "file"
        assert prov["pretrained"] == "vit_b16_random.pt" and prov["device"] == "cpu"
    zeroshot = json.loads((runs / "zeroshot" / "0shot" / "seed0" / "metrics.json").read_text())
    assert zeroshot["trained"] is False


@pytest.mark.slow
def test_summary_and_report(real_size):
    work, _, _, _, _ = real_size
    summary = pd.read_csv(work / "results" / EXPERIMENT / "summary.csv")
    assert sorted(summary.method) == sorted(METHODS) and set(summary.dataset) == {"EuroSAT"}
    assert summary[["base_acc", "new_acc"]].apply(lambda c: c.between(0, 100)).all().all()
    md = (work / "reports" / EXPERIMENT / "report.md").read_text()
    assert "EuroSAT" in md and "vpt_deep" in md.lower().replace("vpt-deep", "vpt_deep")
    assert "no 16-shot results" in md  # the published comparison explains why it does not apply at 1 shot
    assert (work / "reports" / EXPERIMENT / "index.html").stat().st_size > 1000


@pytest.mark.slow
def test_second_run_does_nothing(real_size):
    work, cfg, _, _, _ = real_size
    proc = subprocess.run(
        SNAKEMAKE + ["-d", str(work), "-n", "--configfile", str(work / "real_size.yaml")],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Nothing to be done" in proc.stdout + proc.stderr
