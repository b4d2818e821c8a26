"""DPL: decoupled prompt learning — deep vision prompts whose share in the instances' attention is decoupled from
the softmax.

Xu, Zhu, Zhang, Shen, Liao, Chen, Wu & Wang, "DPL: Decoupled Prompt Learning for Vision-Language Models", arXiv
2308.10061. No official code was found (the paper lists give "-" for its code), and only the abstract could be
read, so this is a documented reading; every detail the abstract leaves open is a Config field marked
"assumption" below, and the catalogue says so.

What was read: the self-attention of prompted transformers is reformulated as four sub-processes (prompt to prompt,
prompt to instance, instance to prompt, instance to instance); "certain sub-processes can be strengthened to
bolster robustness and generalizability by some approximation techniques"; a language-conditioned textual prompting
builds on the decoupled attention; no auxiliary loss, no extra data.

The reading here (:mod:`vlprompt.clip.decoupled_attention` computes the four sub-processes): VPT-deep's prompts
(:mod:`vlprompt.methods.vpt_deep`, fixed hand-crafted text classifier, cross-entropy), and in every block of the
image tower, for an instance query x (the class token or a patch),

    ordinary attention:  (1 − w(x)) · I2I(x) + w(x) · I2P(x),   w(x) = σ(ℓ_P(x) − ℓ_X(x))   (the softmax's share)
    DPL (reading):       (1 − γ) · I2I(x) + γ · I2P(x)                                     (w approximated by γ)

so the instances' own attention (I2I, exactly the frozen CLIP's computation over the instances) keeps a fixed
weight 1 − γ whatever the prompts' keys say, and the prompts enter through I2P at a fixed weight γ: the prompts
can no longer crowd out the pretrained attention among instances, which is how the abstract's "strengthened by
approximation" is read. Prompt queries (P2P, P2I) keep ordinary attention; they feed only the carried prompt
positions after the last prompted block.

Assumptions (the paper's forms and values could not be read):

* the approximation (a constant share ``prompt_gate`` γ in place of the softmax's w, for instance queries only, in
  every block of the image tower) and γ = 0.1;
* the vision tower only: the language-conditioned textual prompting is not implemented (its form could not be read);
* VPT-deep's preset for everything else (8 tokens at depth 12, capped at the tower's blocks; SGD lr 0.0025, batch
  4, 5 epochs, one warm-up epoch at 1e-5; the text prompt "a photo of a {}.").

Reductions, checked exactly in ``tests/test_decoupled_attention.py``: ``prompt_gate`` None is ordinary attention,
so DPL is VPT-deep (logits and gradient); the sub-processes by hand on a one-head, two-token toy; the gated
recombination against a hand-written loop over open_clip's vision blocks.
"""

from __future__ import annotations

import dataclasses

import torch

from vlprompt.clip import deep_prompts
from vlprompt.clip.decoupled_attention import Parts, decoupled_attention, exact
from vlprompt.methods.base import MethodError, normalize, register
from vlprompt.methods.vpt_deep import VPTDeep, VPTDeepConfig


@dataclasses.dataclass(frozen=True)
class DPLConfig(VPTDeepConfig):
    prompt_gate: float | None = 0.1  # assumption: γ, the instance queries' fixed share on the prompts; None: exact


def gated(gate: float):
    """The recombination with the instance queries' share on the prompts fixed at ``gate`` (prompt queries exact)."""

    def combine(parts: Parts) -> torch.Tensor:
        fixed = (1 - gate) * parts.to_instances + gate * parts.to_prompts
        return torch.where(parts.prompt_queries[:, None], exact(parts), fixed)

    return combine


@register
class DPL(VPTDeep):
    name = "dpl"
    paper = "Xu et al., DPL: Decoupled Prompt Learning for Vision-Language Models, arXiv 2308.10061"
    description = (
        "VPT-deep whose prompts enter the instances' attention at a fixed share, the instance-to-instance "
        "attention kept (a documented reading: no official code)"
    )
    Config = DPLConfig

    def __init__(self, config: DPLConfig, ctx):
        if config.prompt_gate is not None and not 0.0 <= config.prompt_gate <= 1.0:
            raise MethodError(f"dpl: prompt_gate must lie in [0, 1] (or be null); got {config.prompt_gate}")
        super().__init__(config, ctx)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        prompts = self.vision_prompts()
        gate = self.config.prompt_gate
        if not prompts or gate is None:
            return super().image_features(images)
        model = self.frozen.model
        with decoupled_attention(model, "vision", prompts[0].shape[0], gated(gate)):
            return normalize(deep_prompts.encode_image(model, images, prompts))

    def run_info(self) -> dict:
        return {**super().run_info(), "prompt_gate": f"{self.config.prompt_gate} (assumption)"}
