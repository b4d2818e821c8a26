"""Regenerate tests/reference/fixtures/dam_vp.pt from DAM-VP's own code.

    python tests/reference/regenerate_dam_vp.py --refs DIR

DIR holds a checkout of shikiw/DAM-VP at dec5821 as ``DIR/DAM-VP``; nothing of it is copied into vlprompt. The
script runs, on small random inputs (32-pixel images, a 4-pixel frame, the pocket scale):

* ``models/prompters.py``'s ``PadPrompter`` (imported: it needs only torch), its parameters drawn after
  ``torch.manual_seed(0)``, on a batch of images;
* from ``task_adapting/adapter_clip.py`` the methods ``coarse_clustering`` (DTD's threshold, 16) and
  ``get_prompted_image`` (the diversity-aware branch), and from ``meta-training/meta_clip.py`` ``computer_diff``
  and ``computer_meta_weight`` (the ``wo_da`` branch, Reptile's outer step): each method's source is taken from
  its file (the modules import the ``clip`` package, tkinter and the reference's data loaders, none of which these
  methods use) and run on a stand-in ``self`` whose ``model(image, text)[0]`` returns fixed representations (the
  zero-shot logits in the reference).
"""

from __future__ import annotations

import argparse
import ast
import sys
import types
from pathlib import Path

import numpy as np
import torch

COMMIT = "dec5821ecbee908c4d9efcb66fe81eb553849574"
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "dam_vp.pt"
SIZE, PAD, B, C = 32, 4, 24, 5


def method_source(path: Path, cls: str, name: str, namespace: dict):
    """The function ``cls.name`` of the file at ``path``, compiled alone in ``namespace``."""
    tree = ast.parse(path.read_text())
    node = next(
        n
        for c in tree.body
        if isinstance(c, ast.ClassDef) and c.name == cls
        for n in c.body
        if getattr(n, "name", None) == name
    )
    module = ast.Module(body=[node], type_ignores=[])
    exec(compile(module, str(path), "exec"), namespace)
    return namespace[name]


def representation(images: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The stand-in for ``self.model(image, text_inputs)[0]``: a fixed linear map of the images' channel means."""
    return 150 * images.mean(dim=(2, 3)) @ weight


def main(refs: Path) -> None:
    import sklearn.cluster as cluster

    root = refs / "DAM-VP"
    sys.path.insert(0, str(root))
    from models import prompters  # the reference's module (torch and numpy only)

    args = types.SimpleNamespace(
        prompt_size=PAD, crop_size=SIZE, wo_da=False, test_dataset="dtd", meta_step_size=0.5, device="cpu"
    )
    torch.manual_seed(0)
    prompter = prompters.PadPrompter(args)
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(B, 3, SIZE, SIZE, generator=gen)
    weight = torch.randn(3, C, generator=gen)
    out = {"references": [{"repo": "shikiw/DAM-VP", "commit": COMMIT}], "images": images, "weight": weight, "pad": PAD}
    out["pad_params"] = {k: v.detach().clone() for k, v in prompter.state_dict().items()}
    out["pad_prompted"] = prompter(images).detach()

    # clustering on the representations (coarse_clustering)
    logger = types.SimpleNamespace(info=lambda *a, **k: None)
    ns = {"torch": torch, "cluster": cluster, "np": np, "logger": logger}
    coarse = method_source(root / "task_adapting" / "adapter_clip.py", "Adapter", "coarse_clustering", ns)
    prompted = method_source(root / "task_adapting" / "adapter_clip.py", "Adapter", "get_prompted_image", ns)
    adapter = types.SimpleNamespace(args=args, model=lambda image, text: (representation(image, weight),))
    loader = [{"image": images[i : i + 8]} for i in range(0, B, 8)]
    coarse(adapter, (loader, None, None), None)
    out["prototypes"] = adapter.prototype_gather.clone()
    # one prompter per cluster (each a perturbed copy), the routed images
    gathered = []
    for k in range(len(out["prototypes"])):
        p = prompters.PadPrompter(args)
        p.load_state_dict({n: v + 0.1 * k for n, v in out["pad_params"].items()})
        gathered.append(p)
    out["cluster_params"] = [{n: v.detach().clone() for n, v in p.state_dict().items()} for p in gathered]
    with torch.no_grad():
        out["routed"] = prompted(adapter, images, None, adapter.prototype_gather, prompter_gather=gathered)

    # Reptile's outer step (wo_da): two fast prompters
    args.wo_da = True
    diff = method_source(root / "meta-training" / "meta_clip.py", "Meta", "computer_diff", ns)
    meta_weight = method_source(root / "meta-training" / "meta_clip.py", "Meta", "computer_meta_weight", ns)
    meta = types.SimpleNamespace(args=args, prompter=prompters.PadPrompter(args))
    out["theta"] = {k: v.detach().clone() for k, v in meta.prompter.state_dict().items()}
    fast = []
    for _ in range(2):
        f = prompters.PadPrompter(args)
        f.load_state_dict({k: v + torch.randn(v.shape, generator=gen) for k, v in out["theta"].items()})
        fast.append(f)
    out["fast"] = [{k: v.detach().clone() for k, v in f.state_dict().items()} for f in fast]
    meta_weight(meta, [diff(meta, prompter=f) for f in fast])
    out["theta_after"] = {k: v.detach().clone() for k, v in meta.prompter.state_dict().items()}
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    torch.save(out, FIXTURE)
    print(f"wrote {FIXTURE}: {len(out['prototypes'])} clusters")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--refs", type=Path, required=True)
    main(parser.parse_args().refs)
