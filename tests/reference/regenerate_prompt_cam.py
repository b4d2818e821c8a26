"""Regenerate Prompt-CAM's fixture (``fixtures/prompt_cam.pt``) from the reference's own model, on the tiny CLIP.

    python tests/reference/regenerate_prompt_cam.py --refs DIR

DIR holds a checkout of Imageomics/Prompt_CAM (folder ``Prompt_CAM``) at the commit in ``REFERENCE``. Its
``model.vision_transformer.VisionTransformerPETL`` (timm's ViT with its prompt insertion and prompt-output head, train
type ``prompt_cam``) is built at the image tower of the tiny OpenAI-layout CLIP (``tiny_clip.py``: 32-pixel images,
patch 8, width 64, 3 blocks, 1 head, QuickGELU, pre-norm as its CLIP ViTs) and loaded with that tower's weights
through timm's own OpenAI-CLIP conversion (``_convert_openai_clip``), its projection dropped as the reference's
loader drops the head. Its ``utils.setup_logging`` (a logging setup that writes files) is replaced by the standard
``logging.getLogger``. Nothing of it is copied into vlprompt.

Recorded, on the fixed images and labels stored with the tiny CLIP (4 classes): the initial prompts and head (the
reference's own initialisation, seeded), the class-prompt outputs through the final norm, the logits, the
cross-entropy, the gradients, and the parameters after one step of the reference's optimiser (``engine/optimizer.py``:
SGD, momentum 0.9, weight decay 0.001 on every tuned parameter) at its lr 0.005, in training mode with prompt
dropout and drop path 0 (the project runs the frozen blocks without drop path); then, in eval mode, the stepped
model's last-block attention of every class prompt over the patches (its ``vis_attn`` path, the slice of
``experiment/visualize_run.py``).
"""

from __future__ import annotations

import argparse
import logging
import sys
import types
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tiny_clip  # noqa: E402

REFERENCE = ("Imageomics/Prompt_CAM", "7722fc2ec3b66fe6c8ba445537a6c05c649e73b2")
OUT = Path(__file__).parent / "fixtures" / "prompt_cam.pt"
LR, MOMENTUM, WD = 0.005, 0.9, 0.001


def reference_model(refs: Path, n_classes: int) -> nn.Module:
    sys.path.insert(0, str(refs / "Prompt_CAM"))
    stub = types.ModuleType("utils.setup_logging")
    stub.get_logger = logging.getLogger  # type: ignore[attr-defined]
    sys.modules["utils.setup_logging"] = stub
    from model.vision_transformer import VisionTransformerPETL  # the reference's
    from open_clip.transformer import QuickGELU
    from timm.models.vision_transformer import _convert_openai_clip

    params = types.SimpleNamespace(
        train_type="prompt_cam", vpt_mode=None, vpt_layer=None, vpt_num=n_classes, vpt_dropout=0.0, vis_attn=False
    )
    torch.manual_seed(0)
    model = VisionTransformerPETL(
        img_size=tiny_clip.IMAGE,
        patch_size=tiny_clip.PATCH,
        embed_dim=tiny_clip.VISION_WIDTH,
        depth=tiny_clip.LAYERS,
        num_heads=tiny_clip.VISION_WIDTH // 64,
        pre_norm=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-5),
        act_layer=QuickGELU,
        num_classes=n_classes,
        drop_path_rate=0.0,
        params=params,
    )
    weights = _convert_openai_clip(tiny_clip.state_dict(), model)
    weights = {k: v for k, v in weights.items() if not k.startswith("head.")}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    assert not unexpected and set(missing) == {"vpt.prompt_embeddings", "head.weight", "head.bias"}, missing
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--refs", type=Path, required=True)
    args = parser.parse_args()
    inputs = tiny_clip.inputs()
    classnames, images, labels = inputs["classnames"], inputs["images"], inputs["labels"]
    model = reference_model(args.refs, len(classnames))
    model.train()
    tuned = {"vision_ctx": model.vpt.prompt_embeddings, "head.weight": model.head.weight, "head.bias": model.head.bias}
    for p in model.parameters():
        p.requires_grad_(any(p is t for t in tuned.values()))
    init = {k: v.detach().clone() for k, v in tuned.items()}
    features, _ = model.forward_features(images)
    logits, _ = model(images)
    logits = logits.squeeze(-1)  # engine/trainer.py: (B, C, 1) -> (B, C) for train type prompt_cam
    loss = F.cross_entropy(logits, labels)
    optimizer = torch.optim.SGD(list(tuned.values()), lr=LR, weight_decay=WD, momentum=MOMENTUM)
    optimizer.zero_grad()
    loss.backward()
    grads = {k: v.grad.detach().clone() for k, v in tuned.items()}
    optimizer.step()
    model.eval()
    model.params.vis_attn = True  # the reference's visualisation path: the last block's attention maps
    with torch.no_grad():
        _, attn_map = model(images)  # (B, heads, C + 1 + G, C + 1 + G): [prompts, CLS, patches]
    model.params.vis_attn = False
    trait_maps = attn_map[:, :, : len(classnames), len(classnames) + 1 :]  # visualize_run.py's slice, every class
    torch.save(
        {
            "references": [{"repo": REFERENCE[0], "commit": REFERENCE[1]}],
            "settings": {"lr": LR, "momentum": MOMENTUM, "weight_decay": WD, "dataset": "OxfordPets"},
            "classnames": classnames,
            "labels": labels,
            "init": init,
            "class_outputs": features[:, : len(classnames)].detach(),
            "logits": logits.detach(),
            "loss": loss.detach(),
            "grads": grads,
            "after_step": {k: v.detach().clone() for k, v in tuned.items()},
            "trait_maps_after_step": trait_maps,  # the attention maps of the stepped model
        },
        OUT,
    )
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
