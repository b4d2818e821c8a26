"""MCM: zero-shot OOD detection by the maximum concept matching score (Ming et al., NeurIPS 2022).

Paper: "Delving into Out-of-Distribution Detection with Vision-Language Representations". Reference code: the
MCM postprocessor of YBZh/OpenOOD-VLM (804f331, ``openood/postprocessors/mcm_postprocessor.py``,
``scripts/ood/mcm/official.sh``; read, not copied): the softmax of the classifier's outputs at temperature τ,
its maximum the confidence, its argmax the prediction.

    s_MCM(x) = max_c  exp(cos(x, w_c) / τ) / Σ_c' exp(cos(x, w_c') / τ),   τ = 1

Classification is zero-shot CLIP's (``zeroshot``): ID accuracy equals it by construction. The paper applies τ to
cosine similarities (τ = 1 its default, kept); OpenOOD-VLM's network returns CLIP's logits, which are the cosines
times CLIP's logit scale: ``temperature`` here is on the cosines, so τ = 1 is the paper's score.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch

from vlprompt.methods.base import normalize, register
from vlprompt.methods.zeroshot import ZeroShot


@dataclasses.dataclass(frozen=True)
class MCMConfig:
    template: str | None = None  # None: the dataset's hand-crafted template, as zero-shot CLIP
    temperature: float = 1.0  # τ on the cosine similarities (the paper's default)


@register
class MCM(ZeroShot):
    name = "mcm"
    paper = "Ming et al., Delving into Out-of-Distribution Detection with Vision-Language Representations, NeurIPS 2022"
    description = "zero-shot CLIP; OOD score: the maximum softmax of the cosine similarities at temperature τ"
    Config: ClassVar[type] = MCMConfig

    @torch.no_grad()
    def ood_score(self, image_features: torch.Tensor) -> torch.Tensor:
        """(N,) confidence that each image is in-distribution (higher: ID)."""
        cos = normalize(image_features) @ self.weights.T  # (N, C)
        return torch.softmax(cos / self.config.temperature, dim=-1).max(-1).values
