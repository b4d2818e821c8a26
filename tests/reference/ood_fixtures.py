"""Regenerate the OOD-detection fixtures from OpenOOD-VLM's own code (YBZh/OpenOOD-VLM, 804f331, MIT).

    python tests/reference/ood_fixtures.py --refs DIR

DIR holds a checkout of YBZh/OpenOOD-VLM in ``DIR/OpenOOD-VLM`` (its ``openood/evaluators/metrics.py`` is the
metric code of OpenOOD v1.5). Nothing of it is copied into vlprompt: the reference's functions are loaded from
their files and run on fixed inputs, and the inputs and outputs are written to ``fixtures/ood_metrics.json``:

* ``metrics``: ``compute_all_metrics(conf, label, pred)`` on score vectors with and without ties (ID labels
  0..C-1, OOD label -1, as OpenOOD's evaluator passes them); the fixture keeps FPR@95, AUROC, AUPR-in, AUPR-out.
* ``wccm`` and ``multice``: LAPT's training step pieces, ``mixup_data(..., mix_strategy="wccm")`` of
  ``openood/trainers/oodmixup_trainer.py`` (taken from the file's syntax tree, as the module imports the whole
  framework; ``.cuda()`` is the identity on a CPU) with NumPy's and torch's generators seeded, the λ and template
  indices it drew recorded beside its output; and ``soft_cross_entropy`` of ``openood/losses/sce.py`` on fixed
  logits and one-hot targets.
* ``neglabel_score``: ``OneOodPromptPostprocessor.postprocess`` (the score of LAPT's ``test.sh``, NegLabel's
  grouped score) on fixed image and text features, with its base class stubbed (it only stores the config) and a
  stand-in network that returns the features; the reference hard-codes 1000 ID classes.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
FIXTURE = HERE / "fixtures" / "ood_metrics.json"


def load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def score_cases() -> list[dict]:
    rng = np.random.default_rng(0)
    cases = []
    for n_id, n_ood, shift, ties in ((40, 30, 1.0, False), (25, 50, 0.3, True), (7, 5, 2.0, False)):
        id_s, ood_s = rng.normal(shift, 1.0, n_id), rng.normal(0.0, 1.0, n_ood)
        if ties:  # coarse scores: many ties inside and across the two sets
            id_s, ood_s = np.round(id_s, 1), np.round(ood_s, 1)
        cases.append({"id": [float(x) for x in id_s], "ood": [float(x) for x in ood_s]})
    return cases


def metrics_fixture(ref: Path) -> list[dict]:
    metrics = load(ref / "openood" / "evaluators" / "metrics.py", "openood_metrics")
    out = []
    for case in score_cases():
        conf = np.array(case["id"] + case["ood"])
        label = np.array([0] * len(case["id"]) + [-1] * len(case["ood"]))
        fpr, auroc, aupr_in, aupr_out, _ = metrics.compute_all_metrics(conf, label, np.zeros_like(label))
        out.append({**case, "fpr95": fpr, "auroc": auroc, "aupr_in": aupr_in, "aupr_out": aupr_out})
    return out


def neglabel_fixture(ref: Path) -> dict:
    import torch

    base = types.ModuleType("openood_vlm_post.base_postprocessor")

    class BasePostprocessor:
        def __init__(self, config):
            self.config = config

    base.BasePostprocessor = BasePostprocessor
    pkg = types.ModuleType("openood_vlm_post")
    pkg.__path__ = []
    sys.modules["openood_vlm_post"] = pkg
    sys.modules["openood_vlm_post.base_postprocessor"] = base
    post = load(ref / "openood" / "postprocessors" / "oneoodprompt_postprocessor.py", "openood_vlm_post.oneood")

    gen = torch.Generator().manual_seed(0)
    n_img, n_id, n_neg, dim, groups = 6, 1000, 43, 8, 4
    # unit vectors rounded to 3 decimals (a small file; the reference does not renormalise them)
    img = torch.nn.functional.normalize(torch.randn(n_img, dim, generator=gen), dim=-1).mul(1000).round().div(1000)
    text = torch.nn.functional.normalize(torch.randn(n_id + n_neg, dim, generator=gen), dim=-1)
    text = text.mul(1000).round().div(1000)
    scale = 30.0

    class Net(torch.nn.Module):
        def forward(self, data, return_feat=False):
            return img, text, scale

    args = types.SimpleNamespace(tau=1.0, beta=0.0, in_score="sum", group_num=groups, random_permute=True)
    config = types.SimpleNamespace(postprocessor=types.SimpleNamespace(postprocessor_args=args, postprocessor_sweep={}))
    pred, conf = post.OneOodPromptPostprocessor(config).postprocess(Net(), None)
    torch.manual_seed(0)
    perm = torch.randperm(n_neg - n_neg % groups)  # the permutation the reference draws (seed 0, after the drop)
    return {
        "image_features": [[round(x, 3) for x in row] for row in img.tolist()],
        "text_features": [[round(x, 3) for x in row] for row in text.tolist()],
        "logit_scale": scale,
        "n_id": n_id,
        "groups": groups,
        "permutation": perm.tolist(),
        "pred": pred.tolist(),
        "score": conf.tolist(),
    }


def function_from(path: Path, name: str, namespace: dict):
    import ast

    tree = ast.parse(path.read_text())
    node = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name)
    exec(compile(ast.Module(body=[node], type_ignores=[]), str(path), "exec"), namespace)
    return namespace[name]


def lapt_fixture(ref: Path) -> dict:
    import torch
    import torch.nn.functional as F

    torch.Tensor.cuda = lambda self, *a, **k: self  # CPU: the reference moves its index tensors to the GPU
    mixup_data = function_from(
        ref / "openood" / "trainers" / "oodmixup_trainer.py", "mixup_data", {"np": np, "torch": torch, "F": F}
    )
    sce = load(ref / "openood" / "losses" / "sce.py", "openood_vlm_sce").soft_cross_entropy
    gen = torch.Generator().manual_seed(1)
    batch, n_cls, n_prompts, dim = 8, 5, 3, 6
    img = torch.nn.functional.normalize(torch.randn(batch, dim, generator=gen), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(n_cls, n_prompts, dim, generator=gen), dim=-1)
    y = torch.randint(0, n_cls, (batch,), generator=gen)
    soft_y = torch.nn.functional.one_hot(y, n_cls).float()
    np.random.seed(3)
    torch.manual_seed(4)
    mixed, ya, yb, lam = mixup_data([img, text], y, soft_y, 1.0, "wccm")
    np.random.seed(3)
    torch.manual_seed(4)
    lam_again = np.random.beta(1.0, 1.0)
    which = torch.randint(0, n_prompts, (batch,))
    assert lam_again == lam
    logits = 7.0 * mixed @ text[:, 0].T
    return {
        "image_features": img.tolist(),
        "text_features": text.tolist(),
        "labels": y.tolist(),
        "lam": float(lam),
        "which": which.tolist(),
        "mixed": mixed.tolist(),
        "targets_unchanged": bool(torch.equal(ya, soft_y) and torch.equal(yb, soft_y)),
        "logits": logits.tolist(),
        "multice": float(sce(logits, soft_y)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--refs", type=Path, required=True, help="folder holding the OpenOOD-VLM checkout")
    args = parser.parse_args()
    ref = args.refs / "OpenOOD-VLM"
    fixture = {
        "_source": {
            "metrics": "YBZh/OpenOOD-VLM commit 804f331, openood/evaluators/metrics.py compute_all_metrics",
            "neglabel_score": "YBZh/OpenOOD-VLM commit 804f331, openood/postprocessors/oneoodprompt_postprocessor.py",
            "lapt": "YBZh/OpenOOD-VLM commit 804f331, openood/trainers/oodmixup_trainer.py mixup_data (wccm), "
            "openood/losses/sce.py soft_cross_entropy",
        },
        "metrics": metrics_fixture(ref),
        "neglabel_score": neglabel_fixture(ref),
        "lapt": lapt_fixture(ref),
    }
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    FIXTURE.write_text(json.dumps(fixture) + "\n")
    print(f"wrote {FIXTURE}")


if __name__ == "__main__":
    main()
