"""Regenerate TCPA's pool fixture (``fixtures/tcpa_pool.pt``) from the reference's own ``Pool`` and ``Pool_TCPA``.

    python tests/reference/regenerate_tcpa.py --refs DIR

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--refs", type=Path, required=True)
    args = parser.parse_args()
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
