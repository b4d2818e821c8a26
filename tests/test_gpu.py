"""The GPU paths: feature extraction under fp16 autocast, training under autocast with a GradScaler.

Skipped where torch sees no CUDA device (this project's CPU machine and CI); run on a GPU machine with
``python -m pytest -m gpu``. What they check is the agreement of the GPU path with the CPU path, on the same
pocket images and the same shipped pocket CLIP: the banks differ only by fp16 rounding, and a CoOp run learns
the same classes to within a few images.
"""

import json

import numpy as np
import pytest
import torch
import yaml

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (python -m pytest -m gpu)"),
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from conftest import tiny_pocket

    return tiny_pocket(tmp_path_factory.mktemp("gpu_tiny"), 4, 4, {"train": 2, "test": 4})


def test_fp16_autocast_extraction_on_the_gpu_agrees_with_the_cpu(tiny, tmp_path):
    from vlprompt.clip.backbone import POCKET_MODEL, load_backbone
    from vlprompt.clip.features import ExtractionSpec, extract_split

    root, split = tiny
    banks = {}
    for device in ("cpu", "cuda"):
        backbone = load_backbone(POCKET_MODEL, "pocket_v2", device=device)
        for spec in (ExtractionSpec("test", split["test"], 1), ExtractionSpec("train_views", split["train"], 3)):
            extract_split(
                backbone,
                root,
                spec,
                tmp_path / device,
                batch_size=16,
                device=torch.device(device),
                scale_min=0.5,
                progress=False,
            )
        banks[device] = {s: np.load(tmp_path / device / f"{s}.npy").astype(np.float32) for s in ("test", "train_views")}
    for split_name in ("test", "train_views"):
        a = banks["cpu"][split_name].reshape(-1, banks["cpu"][split_name].shape[-1])
        b = banks["cuda"][split_name].reshape(-1, a.shape[-1])
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        print(f"{split_name}: min cosine CPU/GPU {cos.min():.6f}, max |diff| {np.abs(a - b).max():.4g}")
        assert cos.min() > 0.999, (split_name, cos.min())  # same images, same (seeded) views: rounding only
        assert np.abs(a - b).max() < 0.05 * np.abs(a).max(), split_name


def coop_pipeline(device: str, work) -> dict:
    """prepare, classes, few-shot, extract and train zero-shot CLIP and CoOp on pocket_dark, as the DAG's jobs do,
    everything on ``device``; the runs' metrics by method."""
    from conftest import prepare_run_inputs
    from vlprompt.cli import main as cli

    cfg = yaml.safe_load(open("config/config.yaml"))
    cfg.update(
        experiment="gpu",
        data_root=str(work / "data"),
        results_root=str(work / "results"),
        reports_root=str(work / "reports"),
        datasets=["pocket_dark"],
        shots=[4],
        seeds=[1],
        methods=["zeroshot", "coop"],
        method_overrides={"coop": {"epochs": 10}},
    )
    cfg["pocket"]["per_class"] = {"train": 4, "val": 4, "test": 6}
    cfg["features"].update(train_views=2, device=device)
    cfg["train"]["device"] = device
    work.mkdir(parents=True)
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    prepare_run_inputs(path, "pocket_dark", shots=4)
    metrics = {}
    for method, shots, seed in (("zeroshot", "0", "0"), ("coop", "4", "1")):
        out = work / method
        assert (
            cli(
                [
                    "train",
                    "--config",
                    str(path),
                    "--dataset",
                    "pocket_dark",
                    "--method",
                    method,
                    "--shots",
                    shots,
                    "--seed",
                    seed,
                    "--out",
                    str(out),
                    "--quiet",
                ]
            )
            == 0
        )
        metrics[method] = json.loads((out / "metrics.json").read_text())
    return metrics


def test_a_coop_run_under_autocast_learns_as_on_the_cpu(tmp_path):
    """The whole job path on each device; the GPU run trains under fp16 autocast with a GradScaler. Both beat
    zero-shot on base classes, and they agree within a few test images."""
    metrics = {device: coop_pipeline(device, tmp_path / device) for device in ("cpu", "cuda")}
    for device, m in metrics.items():
        print(device, {k: (round(v["base_acc"], 2), round(v["new_acc"], 2)) for k, v in m.items()})
    assert metrics["cuda"]["coop"]["provenance"]["device"].startswith("cuda")
    for device, m in metrics.items():
        assert np.isfinite(m["coop"]["base_acc"]) and np.isfinite(m["coop"]["new_acc"])
        assert m["coop"]["base_acc"] > m["zeroshot"]["base_acc"] + 5, (device, m["coop"], m["zeroshot"])
    # zero-shot: the same classifier up to fp16 rounding, at most 3 of the 216 test images per set change; CoOp:
    # 10 epochs from the same seed, the GPU's steps in fp16, within 5 points
    for method, tolerance in (("zeroshot", 100 * 3 / metrics["cpu"]["zeroshot"]["base_n"]), ("coop", 5.0)):
        for key in ("base_acc", "new_acc"):
            gap = abs(metrics["cpu"][method][key] - metrics["cuda"][method][key])
            assert gap <= tolerance + 1e-6, (method, key, gap)
