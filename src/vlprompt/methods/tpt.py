"""TPT: test-time prompt tuning (Shu et al., "Test-Time Prompt Tuning for Zero-Shot Generalization in
Vision-Language Models", NeurIPS 2022, arXiv 2209.07511), and its CoOp-initialised variant (TPT + CoOp).

Reference implementation read (not copied): azshue/TPT at commit 63ecbac, tpt_classification.py
(``select_confident_samples``, ``avg_entropy``, ``test_time_tuning``, ``test_time_adapt_eval``), clip/custom_clip.py
(``PromptLearner.reset``), data/datautils.py (``AugMixAugmenter``) and scripts/test_tpt.sh, test_tpt_coop.sh
(4 context tokens from "a photo of a", 64 views, AdamW lr 5e-3, one step, 10% of the views).

For each test image x, independently of every other: V = 64 views, the original (resize and centre crop) and 63
random resized crops with flips; logits_v = s · normalize(f(x_v)) · normalize(g(t(v)))ᵀ with t the prompt, CoOp's
learnable context v initialised from "a photo of a" (``tpt``) or from a CoOp run on the training data (``tpt_coop``;
the paper loads CoOp's 16-shot ImageNet context). Keep the ρ = 10% views of lowest entropy (6 of 64), average their
probabilities and minimise the entropy of the average

    p̄ = (1/|S|) Σ_{v ∈ S} softmax(logits_v),      L(v) = − Σ_c p̄_c log p̄_c

with one AdamW step (lr 5e-3, torch's default weight decay 0.01, a fresh optimiser state), predict the original view
with the updated context, then reset the context to its initial state (here: each image tunes its own copy, the
method's context never changes, so no prediction depends on which images came before; tests/test_methods_wave3.py).

Cached features: the views are extracted once into the feature bank (``<features dir>/test_views<V>_crop<s>.npy``, a
part of the bank that exists only for experiments with a method that reads it, see
vlprompt.experiment.grid.test_views_files), so
TPT on cached features is exact up to the finite set of views, which are fixed per image (the reference draws new
ones at every evaluation). Deviations: the views are random resized crops (scale (0.08, 1), bilinear) with flips for
every dataset, the reference's augmentation for ImageNet and its variants; on the fine-grained datasets the
reference also mixes AugMix operations into them, which is not reproduced. Computed in fp32 (the reference uses AMP).
Several images are tuned at once (``batch_images``), each with its own copy of the context and of AdamW's state:
every operation is per image, so the results are those of one image at a time.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from vlprompt.clip.prompting import PromptLearner
from vlprompt.methods.base import MethodContext, MethodError, normalize, register
from vlprompt.methods.coop import CoOp, CoOpConfig


@dataclasses.dataclass(frozen=True)
class TPTConfig(CoOpConfig):
    views: int = 64  # per test image: the original and views - 1 augmented views (the reference's batch size 64)
    view_crop_scale_min: float = 0.08  # random resized crop scale of the views (torchvision's default, the reference's)
    selection: float = 0.1  # the share of views kept: the lowest entropy
    tta_steps: int = 1
    tta_lr: float = 5e-3
    tta_weight_decay: float = 0.01  # torch.optim.AdamW's default (the reference passes only the learning rate)
    batch_images: int = 8  # images tuned at once, each with its own context (speed only: results are unchanged)


def select_confident(logits: torch.Tensor, share: float) -> torch.Tensor:
    """Indices (B, m) of the m = ⌊V · share⌋ views of lowest entropy of each image; logits (B, V, C)."""
    logp = logits.log_softmax(-1)
    entropy = -(logp.exp() * logp).sum(-1)  # (B, V)
    m = max(1, int(logits.shape[1] * share))
    return entropy.argsort(dim=-1, stable=True)[:, :m]


def average_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the mean probability over views, per image: logits (B, m, C) -> (B,)."""
    logp = logits.log_softmax(-1)
    avg = logp.logsumexp(dim=1) - math.log(logits.shape[1])  # (B, C) log of the mean probability
    avg = avg.clamp_min(torch.finfo(avg.dtype).min)
    return -(avg.exp() * avg).sum(-1)


@register
class TPT(CoOp):
    name = "tpt"
    family = "test-time"
    paper = "Shu et al., Test-Time Prompt Tuning for Zero-Shot Generalization in Vision-Language Models, NeurIPS 2022"
    description = "per test image, one entropy-minimisation step of the prompt on its most confident views"
    Config = TPTConfig
    prompt_learner: PromptLearner  # CoOp's, whose context this method reads
    needs_training = False
    reads_test_views = True

    def __init__(self, config: TPTConfig, ctx: MethodContext):
        if config.csc or config.views < 2 or not 0 < config.selection <= 1:
            raise MethodError(f"{self.name}: a shared context (csc false), views >= 2 and 0 < selection <= 1")
        super().__init__(config, ctx)

    def batch_text_features(self, ctx: torch.Tensor) -> torch.Tensor:
        """(B, C, D) normalised text features of B contexts (B, n_ctx, width), in one pass of the text encoder."""
        pl = self.prompt_learner
        prompts = torch.cat([pl.prompts(c) for c in ctx])  # (B·C, L, width)
        return normalize(pl.encoder(prompts, pl.eot.repeat(len(ctx)))).view(len(ctx), len(pl.eot), -1)

    def select_views(self, logits: torch.Tensor) -> torch.Tensor:
        """Indices (B, m) of the views whose mean entropy is minimised; logits (B, V, C) at the initial context."""
        return select_confident(logits, self.config.selection)

    def tune_and_predict(self, views: torch.Tensor) -> torch.Tensor:
        """Logits (B, C) of the original views after tuning a copy of the initial context per image; views (B, V, D)."""
        c = self.config
        x = normalize(views)  # (B, V, D)
        init = self.prompt_learner.ctx.detach()
        ctx = init.unsqueeze(0).repeat(len(x), 1, 1).requires_grad_(True)  # (B, n_ctx, width): one copy per image
        opt = torch.optim.AdamW([ctx], lr=c.tta_lr, weight_decay=c.tta_weight_decay)
        keep = None
        with torch.enable_grad():
            for _ in range(c.tta_steps):
                logits = self.logit_scale * torch.einsum("bvd,bcd->bvc", x, self.batch_text_features(ctx))
                if keep is None:  # chosen once, at the initial context (as the reference)
                    keep = self.select_views(logits.detach())
                chosen = logits.gather(1, keep.unsqueeze(-1).expand(-1, -1, logits.shape[-1]))  # (B, m, C)
                opt.zero_grad(set_to_none=True)
                average_entropy(chosen).sum().backward()  # image b's loss reaches only ctx[b]
                opt.step()
        with torch.no_grad():
            return self.logit_scale * torch.einsum("bd,bcd->bc", x[:, 0], self.batch_text_features(ctx))

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        """(B, D): CoOp's logits (training, validation); (B, V, D) test views: test-time tuning per image."""
        if image_features.dim() == 2:
            return super().forward(image_features)
        from tqdm import tqdm

        step = self.config.batch_images
        chunks = range(0, len(image_features), step)
        return torch.cat(
            [
                self.tune_and_predict(image_features[i : i + step].float())
                for i in tqdm(chunks, desc=f"{self.name} test images", unit="batch", disable=None)
            ]
        )


@register
class TPTCoOp(TPT):
    name = "tpt_coop"
    description = "TPT starting from a CoOp context trained on the training data (TPT + CoOp)"
    needs_training = True
