"""Regenerate APT's module fixture (``fixtures/apt_module.pt``) from the reference's own ``approximate_prompt``.

    python tests/reference/regenerate_apt.py --refs DIR

DIR holds a checkout of DoubtedSteam/APT (folder ``APT``) at the commit in ``REFERENCE``. Its module files import
ViLT's and timm's model code at the top, so the class ``approximate_prompt`` is taken from the syntax tree of
``ViLT/vilt/modules/vision_transformer_apt.py`` and run in a namespace holding only ``torch`` and ``nn``. Nothing of
it is copied into vlprompt. The fixture records fixed inputs (the attention output ``out`` and its input ``inp``),
the module's parameters (the low-rank up-projection and the scale set away from their zero initialisation, so that
every term acts), its output, and the gradients of a fixed linear read-out of the output with respect to every
parameter and input, in training mode with attention dropout 0.
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

import torch
from torch import nn

REFERENCE = ("DoubtedSteam/APT", "d66bbc46906dadd4b3dddc1d37cd8e8663aa28f9")
SOURCE = "ViLT/vilt/modules/vision_transformer_apt.py"
OUT = Path(__file__).parent / "fixtures" / "apt_module.pt"
WIDTH, MEMORY, RANK = 16, 5, 4


def reference_class(refs: Path) -> type:
    tree = ast.parse((refs / "APT" / SOURCE).read_text())
    node = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "approximate_prompt")
    namespace: dict = {"torch": torch, "nn": nn}
    exec(compile(ast.Module(body=[node], type_ignores=[]), SOURCE, "exec"), namespace)
    return namespace["approximate_prompt"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--refs", type=Path, required=True)
    args = parser.parse_args()
    gen = torch.Generator().manual_seed(0)
    module = reference_class(args.refs)(4, WIDTH, RANK, MEMORY, 0.0).train()
    with torch.no_grad():  # the reference's initialisation, then every term away from zero
        module.mm_tokens.copy_(torch.randn(MEMORY, WIDTH, generator=gen) * 0.5)
        module.mm[0].weight.copy_(torch.randn(RANK, WIDTH, generator=gen))
        module.mm[1].weight.copy_(torch.randn(WIDTH, RANK, generator=gen) * 0.1)
        module.scale.fill_(0.3)
    params = {
        "memory": module.mm_tokens.detach().clone(),
        "down": module.mm[0].weight.detach().clone(),
        "up": module.mm[1].weight.detach().clone(),
        "scale": module.scale.detach().clone(),
    }
    out = torch.randn(2, 7, WIDTH, generator=gen).requires_grad_()
    inp = torch.randn(2, 7, WIDTH, generator=gen).requires_grad_()
    readout = torch.randn(2, 7, WIDTH, generator=gen)
    result = module(out, inp)
    (result * readout).sum().backward()
    grads = {
        "memory": module.mm_tokens.grad,
        "down": module.mm[0].weight.grad,
        "up": module.mm[1].weight.grad,
        "scale": module.scale.grad,
        "out": out.grad,
        "inp": inp.grad,
    }
    torch.save(
        {
            "references": [{"repo": REFERENCE[0], "commit": REFERENCE[1]}],
            "source": f"{SOURCE} approximate_prompt",
            "params": params,
            "out": out.detach(),
            "inp": inp.detach(),
            "readout": readout,
            "result": result.detach(),
            "grads": {k: v.detach().clone() for k, v in grads.items()},
        },
        OUT,
    )
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
