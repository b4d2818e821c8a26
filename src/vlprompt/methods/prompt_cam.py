"""Prompt-CAM: one deep visual prompt per class, classified from the prompts' own outputs.

Chowdhury et al., "Prompt-CAM: Making Vision Transformers Interpretable for Fine-Grained Analysis", CVPR 2025
(arXiv 2501.09333). Reference implementation read (not copied): Imageomics/Prompt_CAM at commit 7722fc2,
``model/vpt.py`` (``VPT``: the prompts and their initialisation), ``model/vision_transformer.py``
(``forward_features``, ``forward_head``: train_type ``prompt_cam``) and
``experiment/config/prompt_cam/dino/cub/args.yaml`` (the preset).

With C classes and J = depth (capped at the tower's blocks; the reference prompts every block), P_j ∈ R^{C×d_v}:

    block j input:  [CLS, patches, drop(P_j)]       for j < J   (P_0 through ln_pre; see vlprompt.clip.deep_prompts)
    o_c = the last block's output at the prompt of class c        (vlprompt.clip.prompt_outputs)
    logit_c(x) = w · LN(o_c) + b,   L = CE(logits(x), y)

with LN the tower's final norm (CLIP's ``ln_post``) and (w, b) one shared ``Linear(d_v, 1)``. The prompts and the
head train; the image tower and the text tower are frozen, and the text tower is not used at all: the method is
class-specific (``supports_new_classes = False``, as CoOp's class-specific context), so it runs in the few-shot
protocol only. The explanation of a prediction (the "traits") is the true class prompt's last-block attention over
the patches, per head (``trait_maps``; the reference's ``attn_map[:, :, target, vpt_num + 1:]``, which it draws over
the image for every head). On the pocket world a run scores these maps against the objects' silhouettes, which the
renderer knows (:mod:`vlprompt.training.trait_localisation`; ``metrics.json``'s ``trait_localisation`` and the
report's "Trait localisation" section): the share of the attention on the object beside the object's area, and a
pointing game beside its chance, on the test images and on the few-shot training images. The scores are the
project's (an assumption: the paper judges its traits on real birds' annotated parts; the reference's code draws
maps and ranks heads by blurring them, and scores nothing); its head ranking is not reproduced.

Initialisation as the reference's: P ~ U(−v, v) with v = √(6 / (3·p² + d_v)) (p the patch size; Xavier-uniform for
the patch embedding's fan), the head's weight ~ N(0, 0.02²) (truncated at ±2, absolute: timm's
``init_weights_vit_timm``, which the reference's model runs before loading pretrained weights without a head) and
its bias 0 (a bias shared by every class's logit, which the cross-entropy cannot see: it stays 0, in the reference
too). Prompt dropout 0.1 on every block's prompts in training.

Preset (``args.yaml`` for CUB on DINO): SGD momentum 0.9, lr 0.005, weight decay 0.001, batch 16, 130 epochs,
20 warm-up epochs, prompt dropout 0.1.

Deviations and readings (the reference's backbones are DINO and DINOv2 ViTs, not CLIP):

* P_0 enters after CLIP's ``ln_pre``, as the reference inserts its prompts after ``norm_pre`` (its CLIP ViT's
  ``ln_pre``; the identity on its DINO backbones). ``prompts_through_ln_pre`` True passes it through ``ln_pre`` with
  the image tokens instead, as the project's other deep prompts do (MaPLe's reference).
* The prompts are appended after the patches and replaced at every block; the reference prepends them before the
  class token and drops their outputs after each block. Attention without a causal mask does not depend on the
  order of the tokens, so the two are the same computation.
* The reference's drop path (0.1) inside the frozen blocks is not applied: the shared open_clip blocks run as they
  are.
* The reference warms up linearly from 0 to the lr over 20 epochs (timm's scheduler); the project's loop warms up at
  a constant rate, set to half the lr (the ramp's mean): ``warmup_lr``, an assumption.

Checked in ``tests/test_prompt_cam.py``: against the reference's own model (its ``VisionTransformerPETL`` at the tiny
OpenAI-layout CLIP's image tower, ``tests/reference/fixtures/prompt_cam.pt``, written by
``tests/reference/regenerate_prompt_cam.py``): class-prompt outputs, logits, loss, gradients and one optimiser step;
and the kept prompt outputs against a hand-written loop over open_clip's blocks in the reference's order.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from vlprompt.clip import deep_prompts, prompt_outputs
from vlprompt.methods.base import MethodContext, MethodError, TrainConfig, register
from vlprompt.methods.vpt_deep import VPTDeep


@dataclasses.dataclass(frozen=True)
class PromptCAMConfig(TrainConfig):
    epochs: int = 130
    batch_size: int = 16
    lr: float = 0.005
    weight_decay: float = 0.001
    warmup_epochs: int = 20
    warmup_lr: float = 0.0025  # assumption: the reference's linear warm-up from 0 as a constant at its mean, lr / 2
    depth_vision: int = 12  # blocks with their own class prompts, capped at the tower's (the reference: all)
    prompt_dropout: float = 0.1  # dropout on every block's prompts in training (the reference's vpt_dropout)
    prompts_through_ln_pre: bool = False  # False: P_0 after ln_pre (the reference's norm_pre); True: through it


@register
class PromptCAM(VPTDeep):
    name = "prompt_cam"
    paper = (
        "Chowdhury et al., Prompt-CAM: Making Vision Transformers Interpretable for Fine-Grained Analysis, CVPR 2025"
    )
    description = "one deep visual prompt per class; each class's logit read from its prompt's last-block output"
    Config = PromptCAMConfig
    supports_new_classes = False

    def build_prompts(self, config, ctx: MethodContext, gen: torch.Generator) -> None:
        model = self.frozen.model
        depth = deep_prompts.cap_depth(config.depth_vision, deep_prompts.vision_layers(model), "vision")
        if depth == 0:
            raise MethodError("prompt_cam reads its logits from its prompts: depth_vision must be at least 1")
        width = deep_prompts.vision_width(model)
        patch = model.visual.conv1.kernel_size
        bound = math.sqrt(6.0 / (3 * patch[0] * patch[1] + width))
        device = next(model.parameters()).device
        init = torch.rand(depth, len(ctx.classnames), width, generator=gen) * (2 * bound) - bound
        self.vision_ctx = nn.Parameter(init.to(device))  # (J, C, d_v)
        self.head = nn.Linear(width, 1, device=device)  # shared over the classes' prompts
        with torch.no_grad():
            nn.init.trunc_normal_(self.head.weight, std=0.02, generator=gen)
            self.head.bias.zero_()
        self.prompt_dropout = nn.Dropout(config.prompt_dropout)

    def set_classes(self, classnames: list[str]) -> None:
        """Class-specific prompts exist only for the trained classes: unseen classes cannot be classified."""
        if getattr(self, "classnames", None) is not None and list(classnames) != self.classnames:
            raise NotImplementedError("prompt_cam's class prompts cannot classify classes it was not trained on")
        self.classnames = list(classnames)

    def class_outputs(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, d_v) the last block's outputs at the class prompts, through ``ln_post``."""
        prompts = [self.prompt_dropout(p) for p in self.vision_prompts()]
        return prompt_outputs.encode_prompt_outputs(
            self.frozen.model, images, prompts, self.config.prompts_through_ln_pre
        )

    def trait_maps(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, heads, G): each class prompt's last-block attention over the G patches (the explanation of class c
        is row c: the reference's ``attn_map[:, :, c, vpt_num + 1:]``), without prompt dropout."""
        prompts = self.vision_prompts()
        return prompt_outputs.prompt_attention_maps(
            self.frozen.model, images, prompts, self.config.prompts_through_ln_pre
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.class_outputs(images).to(self.head.weight.dtype)).squeeze(-1)  # (B, C)
