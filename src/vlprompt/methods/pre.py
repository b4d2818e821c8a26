"""PRE: prompt learning with a reparameterisation encoder (Pham et al., "PRE: Vision-Language Prompt Learning with
Reparameterization Encoder", arXiv 2309.07760, ICLR 2024 DMLR workshop). CoOp whose context vectors pass through
a small encoder before the text encoder.

Reference implementation read (not copied): minhanh151/PRE, trainers/pre.py (``PromptEncoder``,
``PromptLearner``), scripts/base2new_train.sh and configs/trainers/PRE/vit_b16_ep50_ctxv1.yaml (4 tokens from
"a photo of a", encoder ``LSTM1`` with the residual, one network shared by the tokens, batch 32, 50 epochs,
SGD lr 0.002, cosine, 1 constant warm-up epoch at 1e-5; mixed precision, so the loss is CE alone).

With v = [v_1 … v_M] (M, d) the learnable context (CoOp's, initialised from "a photo of a"):

    E(v) = BiLSTM(v) + v          one bidirectional LSTM layer over the M tokens as a sequence, hidden d/2 per
                                   direction (output d), plus the residual connection
    t_c = [SOS][E(v)_1 … E(v)_M][CLASS_c][.][EOS],   w_c = normalize(g(t_c))
    logits_c(x) = s · x̂ · w_cᵀ,   L = CE(logits(x), y)

v and the LSTM's weights train; prediction uses the reparameterised context E(v) (computed from the trained v and
encoder; nothing else changes between training and inference). The LSTM is initialised by PyTorch's default,
seeded by the run. Note the encoder's output at initialisation is not v: unlike CoOp, PRE does not start from the
hand-crafted prompt's classifier.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from vlprompt.clip.prompting import PromptLearner
from vlprompt.methods.base import MethodContext, normalize, register
from vlprompt.methods.coop import CoOp, CoOpConfig


@dataclasses.dataclass(frozen=True)
class PREConfig(CoOpConfig):
    epochs: int = 50
    encoder_layers: int = 1  # LSTM layers (the reference's LSTM1; LSTM2 = 2, dropout 0.05 between them)
    residual: bool = True  # E(v) = BiLSTM(v) + v


class ReparameterizationEncoder(nn.Module):
    """BiLSTM over the context tokens (as one sequence), plus the residual: (M, d) -> (M, d)."""

    def __init__(self, width: int, layers: int = 1, residual: bool = True):
        super().__init__()
        if width % 2:
            raise ValueError(f"the PRE encoder needs an even token width, got {width}")
        self.lstm = nn.LSTM(
            width,
            width // 2,
            num_layers=layers,
            bidirectional=True,
            batch_first=True,
            dropout=0.05 if layers > 1 else 0.0,
        )
        self.residual = residual

    def forward(self, ctx: torch.Tensor) -> torch.Tensor:
        out = self.lstm(ctx.float().unsqueeze(0))[0].squeeze(0)  # (M, d): forward and backward halves
        return out + ctx.float() if self.residual else out


@register
class PRE(CoOp):
    name = "pre"
    paper = "Pham et al., PRE: Vision-Language Prompt Learning with Reparameterization Encoder, arXiv 2309.07760"
    description = "CoOp whose context passes through a residual BiLSTM encoder before the text encoder"
    Config = PREConfig
    prompt_learner: PromptLearner  # CoOp's, whose context this method reads

    def __init__(self, config: PREConfig, ctx: MethodContext):
        if config.csc:
            raise ValueError("pre: class-specific context is not supported (the reference's runs share it)")
        super().__init__(config, ctx)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(ctx.seed)
            self.prompt_encoder = ReparameterizationEncoder(
                ctx.encoder.width, config.encoder_layers, config.residual
            ).to(ctx.device)

    def reparameterized_context(self) -> torch.Tensor:
        """E(v), (M, d): the context the text encoder sees, in training and at inference."""
        return self.prompt_encoder(self.prompt_learner.ctx)

    def text_features(self) -> torch.Tensor:
        return normalize(self.prompt_learner(self.reparameterized_context()))
