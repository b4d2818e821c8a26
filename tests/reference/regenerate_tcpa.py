"""Regenerate TCPA's pool fixture (``fixtures/tcpa_pool.pt``) from the reference's own ``Pool`` and ``Pool_TCPA``,
and its mixup fixture (``fixtures/tcpa_mixup.pt``) from the reference's own ``get_mixup_fn``.

    python tests/reference/regenerate_tcpa.py --refs DIR [--only pool|mixup]

DIR holds a checkout of zhoujiahuan1991/ICML2025-TCPA (folder ``ICML2025-TCPA``) at the commit in ``REFERENCE``. The
classes ``Pool`` and ``Pool_TCPA`` are taken from the syntax tree of ``models/TCPA.py`` and run in a namespace holding
``torch``, ``nn`` and ``device`` (the CPU; the reference imports it from ``train.utils``). ``Pool.__init__`` calls
``.to('cuda')`` on its parameters without keeping the result; on a machine without CUDA that call is answered with
the tensor itself while the pools are built. Nothing of the reference is copied into vlprompt.

``get_mask_TDVP`` hard-codes ViT-B/16's shapes (197 tokens, 196 patches, 12 heads, width 768), so the fixture is at
those shapes: random tokens x (2, 197, 768), pools of different sizes, lengths and top-k for the CLS and the image
prompts (so that a swap shows), its mask (one head: every head's is checked equal here) and pool loss at one layer,
chosen by key matching and by its random draws (after ``torch.manual_seed``), and ``get_prompts`` in eval mode. x
is rounded to fp16 first, so that the fixture stores it exactly in half the space, and only that layer's keys and
prompts are stored.

The mixup fixture: ``get_mixup_fn`` taken from the syntax tree of ``train/utils.py`` and run in a namespace holding
timm's ``Mixup`` (the installed timm; the reference's environment pins timm 1.0.8, whose ``Mixup`` is the same in
batch mode) and a class count for a toy dataset, with the released scripts' arguments (``--mixup=mixup``,
``--cutmix_alpha`` at its default 0). It mixes fixed images and labels after ``np.random.seed(s)`` for several s;
the λ that ``Mixup._params_per_batch`` drew is recorded beside the mixed images and soft targets (some seeds mix,
some do not).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import types
from pathlib import Path

import torch
from torch import nn

REFERENCE = ("zhoujiahuan1991/ICML2025-TCPA", "dce8b3aaa3049c4cbf646343d9f73e981ea0f8e0")
SOURCE = "models/TCPA.py"
OUT = Path(__file__).parent / "fixtures" / "tcpa_pool.pt"
MIXUP_SOURCE = "train/utils.py"
MIXUP_OUT = Path(__file__).parent / "fixtures" / "tcpa_mixup.pt"
MIXUP_CLASSES, MIXUP_SEEDS = 5, (0, 1, 2, 3, 4, 5)
SETTINGS = {
    "pool_size_cls": 6,
    "len_prompts_cls": 2,
    "topk_cls": 3,
    "pool_size_image": 5,
    "len_prompts_image": 1,
    "topk_image": 2,
    "prompt_dropout_dvp": 0.1,
    "TDVP": True,
    "RDVP": True,
}
LAYER, SEED = 3, 7


def reference_classes(refs: Path) -> dict:
    tree = ast.parse((refs / "ICML2025-TCPA" / SOURCE).read_text())
    nodes = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name in ("Pool", "Pool_TCPA")]
    namespace: dict = {"torch": torch, "nn": nn, "device": torch.device("cpu")}
    exec(compile(ast.Module(body=nodes, type_ignores=[]), SOURCE, "exec"), namespace)
    return namespace


@contextlib.contextmanager
def cuda_calls_stay_on_the_cpu():
    to = torch.Tensor.to

    def stay(self, *args, **kwargs):
        if args and args[0] == "cuda" and not torch.cuda.is_available():
            return self
        return to(self, *args, **kwargs)

    torch.Tensor.to = stay  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.Tensor.to = to  # type: ignore[method-assign]


def mixup_fixture(refs: Path) -> None:
    import numpy as np
    import timm
    from timm.data import Mixup

    tree = ast.parse((refs / "ICML2025-TCPA" / MIXUP_SOURCE).read_text())
    nodes = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "get_mixup_fn"]
    namespace: dict = {"Mixup": Mixup, "Dataset_N_classes": {"toy": MIXUP_CLASSES}}
    exec(compile(ast.Module(body=nodes, type_ignores=[]), MIXUP_SOURCE, "exec"), namespace)
    mixup_fn = namespace["get_mixup_fn"](types.SimpleNamespace(cutmix_alpha=0.0, dataset="toy"))
    drawn: list[float] = []
    params = mixup_fn._params_per_batch

    def recorded():
        lam, use_cutmix = params()
        assert not use_cutmix
        drawn.append(lam)
        return lam, use_cutmix

    mixup_fn._params_per_batch = recorded
    x = torch.randn(6, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([0, 3, 1, 4, 2, 3])
    cases = []
    for s in MIXUP_SEEDS:
        np.random.seed(s)
        mixed, target = mixup_fn(x.clone(), y.clone())
        cases.append({"seed": s, "lam": drawn[-1], "images": mixed, "target": target})
    assert {c["lam"] == 1.0 for c in cases} == {True, False}, "the seeds should both mix and not"
    torch.save(
        {
            "references": [{"repo": REFERENCE[0], "commit": REFERENCE[1]}],
            "source": f"{MIXUP_SOURCE} get_mixup_fn (timm {timm.__version__} Mixup)",
            "settings": {
                "mixup_alpha": mixup_fn.mixup_alpha,
                "prob": mixup_fn.mix_prob,
                "label_smoothing": mixup_fn.label_smoothing,
                "cutmix_alpha": mixup_fn.cutmix_alpha,
                "mode": mixup_fn.mode,
                "classes": MIXUP_CLASSES,
            },
            "images": x,
            "labels": y,
            "cases": cases,
        },
        MIXUP_OUT,
    )
    print(f"wrote {MIXUP_OUT}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--refs", type=Path, required=True)
    parser.add_argument("--only", choices=("pool", "mixup"), help="write one of the two fixtures")
    args = parser.parse_args()
    if args.only != "pool":
        mixup_fixture(args.refs)
    if args.only == "mixup":
        return
    ns = reference_classes(args.refs)
    torch.manual_seed(0)
    with cuda_calls_stay_on_the_cpu():
        pools = ns["Pool_TCPA"](types.SimpleNamespace(**SETTINGS))
    pools.eval()
    x = torch.randn(2, 197, 768, generator=torch.Generator().manual_seed(1)).half().float()  # stored as fp16
    with torch.no_grad():
        mask, dist = pools.get_mask_TDVP(LAYER, x, random=False)
        torch.manual_seed(SEED)
        mask_random, dist_random = pools.get_mask_TDVP(LAYER, x, random=True)
        prompts = pools.get_prompts(LAYER, 2)
    for m in (mask, mask_random):
        assert all(torch.equal(m[:, h], m[:, 0]) for h in range(m.shape[1])), "heads differ"
    torch.save(
        {
            "references": [{"repo": REFERENCE[0], "commit": REFERENCE[1]}],
            "source": f"{SOURCE} Pool_TCPA.get_mask_TDVP, get_prompts",
            "settings": SETTINGS,
            "layer": LAYER,
            "seed": SEED,
            "x": x.half(),  # exact: x was rounded to fp16 before it was used
            "cls_keys": pools.Pool_cls.keys[LAYER].detach().clone(),  # the layer's only
            "cls_prompts": pools.Pool_cls.prompts[LAYER].detach().clone(),
            "image_keys": pools.Pool_image.keys[LAYER].detach().clone(),
            "image_prompts": pools.Pool_image.prompts[LAYER].detach().clone(),
            "mask": mask[:, 0].bool(),
            "dist": dist,
            "mask_random": mask_random[:, 0].bool(),
            "dist_random": dist_random,
            "prompts": prompts,
        },
        OUT,
    )
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
