"""KgCoOp: Knowledge-guided Context Optimization (Yao et al., "Visual-Language Prompt Tuning with
Knowledge-guided Context Optimization", CVPR 2023). CoOp plus one loss term.

Reference implementation read (not copied): htyao89/KgCoOp, KgCoOp/trainers/kgcoop.py,
configs/trainers/KgCoOp/vit_b16_ep100_ctxv1.yaml and scripts/base2new_train.sh (4 tokens from
"a photo of a", batch 128, 100 epochs, SGD lr 0.002, cosine, 1 constant warm-up epoch, weight W = 8.0).

With w_c = normalize(g(t_c)) the learned-prompt text feature (CoOp) and w_c^clip = normalize(E_text(
template.format(classname_c))) the hand-crafted prompt's feature, computed once. The template is KgCoOp's own
table (``anchor_template="kgcoop"``, the reference's ``CUSTOM_TEMPLATES`` in data/method_templates.json): CoOp's,
except DTD's "a photo of a {}, a type of texture." where CoOp has "{} texture.".

    L = CE(s · x̂ · Wᵀ, y) + λ · (1 − (1/C) Σ_c cos(w_c, w_c^clip)),   λ = 8.0

(the reference computes ``1 - mean(cos)``, which equals the mean of ``1 - cos``). The reference builds
the whole class set's prompts every step, so the term covers all training classes, not only the batch's.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from vlprompt.clip.prompting import text_classifier
from vlprompt.methods.base import MethodContext, register
from vlprompt.methods.coop import CoOp, CoOpConfig


@dataclasses.dataclass(frozen=True)
class KgCoOpConfig(CoOpConfig):
    epochs: int = 100
    batch_size: int = 128
    kg_weight: float = 8.0  # λ
    anchor_template: str | None = "kgcoop"  # template table (method_templates.json) or template; None: CoOp's


def knowledge_loss(text: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """1 − mean_c cos(w_c, w_c^clip) for (C, D) feature matrices (any norm)."""
    return 1 - F.cosine_similarity(text.float(), anchors.float(), dim=-1, eps=1e-7).mean()


@register
class KgCoOp(CoOp):
    name = "kgcoop"
    paper = "Yao et al., Visual-Language Prompt Tuning with Knowledge-guided Context Optimization, CVPR 2023"
    description = "CoOp regularised towards the hand-crafted prompt's text features (cosine distance, weight 8)"
    Config = KgCoOpConfig
    batchable = True  # its loss draws no randomness: seeds train together (vlprompt.training.batched)

    anchors: torch.Tensor  # (C, D) the hand-crafted prompts' normalised features

    def __init__(self, config: KgCoOpConfig, ctx: MethodContext):
        super().__init__(config, ctx)
        self.backbone = ctx.backbone
        self.anchor_templates = ctx.templates(config.anchor_template)
        self.set_anchors(ctx.classnames)

    def set_classes(self, classnames: list[str]) -> None:
        super().set_classes(classnames)
        self.set_anchors(classnames)

    def set_anchors(self, classnames: list[str]) -> None:
        """The hand-crafted prompts' normalised features w^clip, computed once per class set."""
        anchors = text_classifier(self.backbone, self.anchor_templates, classnames)  # (C, D)
        self.register_buffer("anchors", anchors, persistent=False)

    def loss(self, image_features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict]:
        text = self.text_features()  # (C, D), once for both terms
        ce = F.cross_entropy(self.logit_scale * F.normalize(image_features.float(), dim=-1) @ text.T, labels)
        kg = knowledge_loss(text, self.anchors)
        return ce + self.config.kg_weight * kg, {"ce": ce.item(), "kg": kg.item()}
