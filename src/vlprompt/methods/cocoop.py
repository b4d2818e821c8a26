"""CoCoOp: Conditional Context Optimization (Zhou et al., "Conditional Prompt Learning for Vision-Language
Models", CVPR 2022). CoOp plus a meta-net that conditions the context on the image.

Reference implementation read (not copied): KaiyangZhou/CoOp, trainers/cocoop.py and
configs/trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml (4 tokens from "a photo of a", batch 1,
10 epochs, SGD lr 0.002, cosine, 1 constant warm-up epoch at 1e-5).

For an image with normalised feature x̂ = normalize(f(x)) (D):

    π(x) = W_2 · ReLU(W_1 · x̂ + b_1) + b_2,   W_1: D → D/16, W_2: D/16 → d_text   (the meta-net)
    v_m(x) = v_m + π(x)                        (the same bias added to every context token m)
    t_c(x) = [SOS][v_1(x) … v_M(x)][CLASS_c][.][EOS]
    logits_c(x) = s · x̂ · normalize(g(t_c(x)))ᵀ,   L = CE(logits(x), y)

The reference trains with batch 1 and loops over the images of a batch; on cached features a batch is
vectorised here: the B·C instance-conditioned prompts of a batch go through the text encoder in one pass
(in chunks of at most ``max_prompts_per_pass`` prompts, which also bounds evaluation memory). The meta-net
and the context vectors train; its initialisation is PyTorch's default for ``nn.Linear``, seeded by the run.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from vlprompt.clip.prompting import PromptLearner
from vlprompt.methods.base import MethodContext, normalize, register
from vlprompt.methods.coop import CoOp, CoOpConfig


@dataclasses.dataclass(frozen=True)
class CoCoOpConfig(CoOpConfig):
    epochs: int = 10
    batch_size: int = 1
    meta_reduction: int = 16  # meta-net hidden width D / meta_reduction
    max_prompts_per_pass: int = 4096  # images × classes encoded at once (memory bound, not a hyperparameter)


@register
class CoCoOp(CoOp):
    name = "cocoop"
    paper = "Zhou et al., Conditional Prompt Learning for Vision-Language Models, CVPR 2022"
    description = "CoOp with a meta-net adding an image-conditioned bias to the context tokens"
    Config = CoCoOpConfig
    batchable = True  # its loss draws no randomness: seeds train together (vlprompt.training.batched)
    prompt_learner: PromptLearner  # CoOp's, whose context this method reads

    def __init__(self, config: CoCoOpConfig, ctx: MethodContext):
        if config.csc or config.class_token_position != "end":
            raise ValueError("cocoop supports shared context with the class token at the end only (as the reference)")
        super().__init__(config, ctx)
        dim, width = ctx.backbone.embed_dim, ctx.encoder.width
        hidden = max(1, dim // config.meta_reduction)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(ctx.seed)
            self.meta_net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, width)).to(ctx.device)

    def context_bias(self, x_hat: torch.Tensor) -> torch.Tensor:
        """(B, D) normalised image features -> (B, 1, width) π(x), the bias of every context token of every class
        (TMML's class-aware bias is (B, C, width))."""
        return self.meta_net(x_hat).unsqueeze(1)

    def query(self, x_hat: torch.Tensor) -> torch.Tensor:
        """The image feature the logits use (CoCoOp: x̂ itself; TMML tunes it)."""
        return x_hat

    def instance_text_features(self, x_hat: torch.Tensor) -> torch.Tensor:
        """(B, D) normalised image features -> (B, C, D) normalised text features of their prompts."""
        pl = self.prompt_learner
        b, n_cls = x_hat.shape[0], pl.token_prefix.shape[0]
        bias = self.context_bias(x_hat)  # (B, 1 or C, width)
        ctx = pl.ctx.view(1, 1, *pl.ctx.shape) + bias.unsqueeze(2)  # (B, 1 or C, n_ctx, width)
        prefix = pl.token_prefix.unsqueeze(0).expand(b, -1, -1, -1)  # (B, C, 1, width)  SOS
        suffix = pl.token_suffix.unsqueeze(0).expand(b, -1, -1, -1)  # (B, C, *, width)  class . EOS
        ctx = ctx.expand(-1, n_cls, -1, -1).to(prefix.dtype)  # (B, C, n_ctx, width)
        prompts = torch.cat([prefix, ctx, suffix], dim=2).flatten(0, 1)  # (B·C, L, width)
        feats = pl.encoder(prompts, pl.eot.repeat(b))  # (B·C, D)
        return normalize(feats).view(b, n_cls, -1)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        x_hat = normalize(image_features)
        queries = self.query(x_hat)
        n_cls = self.prompt_learner.token_prefix.shape[0]
        chunk = max(1, self.config.max_prompts_per_pass // n_cls)
        out = []
        for i in range(0, len(x_hat), chunk):
            text = self.instance_text_features(x_hat[i : i + chunk])  # (b, C, D)
            xb = queries[i : i + chunk]
            out.append(self.logit_scale * torch.einsum("bd,bcd->bc", xb, text.to(xb.dtype)))
        return torch.cat(out)
