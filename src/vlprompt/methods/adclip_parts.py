"""AD-CLIP's prompt tokens and losses (Singha et al., "AD-CLIP: Adapting Domains in Prompt Space Using CLIP",
ICCV 2023 workshops): the projectors and loss terms of the ``adclip`` method (:mod:`vlprompt.methods.adclip`),
which feeds them the per-block token statistics of its layer-statistics bank (:mod:`vlprompt.clip.layer_statistics`).

Reference read (not copied): mainaksingha01/AD-CLIP at c82d861, ``trainers/adclip_vitB16.py`` (``AdaIN``,
``domain_projector``, ``image_projector``, ``style_mapping_projector``, ``PromptLearner.forward``,
``entropy_loss``, ``ADCLIPB16.forward_backward``) and ``clip/model.py`` (``Transformer.forward`` returns every
block's tokens, detached). ``tests/test_adclip_parts.py`` checks these functions against the reference's classes
(fixture ``tests/reference/fixtures/adclip_parts.pt``, written by ``tests/reference/regenerate_adclip_parts.py``).

Per image, block l of the frozen ViT (L blocks, width W) gives tokens h_l (T, W), the class token among them; its
statistics are μ_l = mean over tokens and σ_l = sqrt(Σ_t (h_lt − μ_l)² / T + 2.3e-8) (:func:`token_statistics`).
With E the text width:

- domain tokens d_l = B_l A_l (μ_l + σ_l) / 2, A_l: W → W/3, B_l: W/3 → E, no non-linearity. The reference
  stacks (μ_l, σ_l) as two rows and pools them with ``AdaptiveAvgPool2d((1, W))``: their mean;
- image tokens: u_l = V_l μ_l (the reference's ``AdaptiveAvgPool2d`` over the tokens is μ_l), then one
  ``Linear(L, 1)`` across the layers, m = Σ_l a_l u_l + b, **repeated** n_img times (quirk: the reference applies
  the same layer n_img times, so its n_img image tokens are identical);
- style-mapping tokens s_l = D_l relu(C_l pool([μ_l, σ_l])), C_l: W → W/2, D_l: W/2 → E, where ``pool`` is the
  reference's ``AdaptiveAvgPool1d(W)`` over the concatenation (2W values): the mean of each *adjacent pair*
  (quirk: the first half of the result pools μ with itself, the second σ, not μ with σ);
- the context of an image's prompts: [d(source image), d(target image), m(its own image)]: 2L + n_img tokens.

Loss of a step (``forward_backward``), source logits z (B, C), target probabilities p (B, C), the source and
target images' text features t_s, t_t (B, C, E):

    CE(z, y) + 0.1 · MSE(d_source, s_source) + 0.01 · H(p) + KL(softmax_C(t_t) ‖ softmax_C(t_s))

with H (``entropy_loss``) computed on p **L2-normalised over the batch** (dim 0; quirk), mean over images of
−Σ_c p log(p + 1e-8); and the KL (``KLDivLoss(reduction="batchmean")``) taken over the **class axis of the text
features** (dim 1 of (B, C, E); quirk), summed over the rest and divided by B. Only the reference's ``amp`` branch
computes a loss (its shipped precision); everything here is fp32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

EPS_VAR = 2.3e-8  # the reference's constant inside the square root of AdaIN.sigma
EPS_LOG = 1e-8  # inside the entropy's logarithm
WEIGHTS = {"ce": 1.0, "smn": 0.1, "entropy": 0.01, "kl": 1.0}  # forward_backward's loss weights


def token_statistics(tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(μ, σ) over the tokens of per-layer tokens (L, B, T, W): each (L, B, W), σ the population std with the
    reference's 2.3e-8 inside the root."""
    mu = tokens.mean(2)
    sigma = ((tokens - mu.unsqueeze(2)).pow(2).sum(2) + EPS_VAR).div(tokens.shape[2]).sqrt()
    return mu, sigma


def pairwise_pool(x: torch.Tensor) -> torch.Tensor:
    """``AdaptiveAvgPool1d(n/2)`` of (B, n) with n even: the mean of each adjacent pair of values."""
    return x.unflatten(-1, (-1, 2)).mean(-1)


class DomainTokens(nn.Module):
    """d_l = linear2_l(linear1_l((μ_l + σ_l) / 2)): (L, B, W) statistics → (B, L, E) tokens."""

    def __init__(self, layers: int, width: int, embed: int, hidden: int):
        super().__init__()
        self.linear1 = nn.ModuleList(nn.Linear(width, hidden) for _ in range(layers))
        self.linear2 = nn.ModuleList(nn.Linear(hidden, embed) for _ in range(layers))

    def forward(self, mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        mid = (mu + sigma) / 2  # (L, B, W)
        return torch.stack([b(a(x)) for a, b, x in zip(self.linear1, self.linear2, mid, strict=True)], dim=1)


class ImageTokens(nn.Module):
    """u_l = linear_l(μ_l), m = lin over the layers; m repeated ``n_tokens`` times: (B, n_tokens, E)."""

    def __init__(self, layers: int, width: int, embed: int):
        super().__init__()
        self.linear = nn.ModuleList(nn.Linear(width, embed) for _ in range(layers))
        self.lin = nn.Linear(layers, 1)

    def forward(self, mu: torch.Tensor, n_tokens: int) -> torch.Tensor:
        per_layer = torch.stack([f(x) for f, x in zip(self.linear, mu, strict=True)], dim=1)  # (B, L, E)
        merged = self.lin(per_layer.transpose(1, 2)).transpose(1, 2)  # (B, 1, E)
        return merged.expand(-1, n_tokens, -1)


class StyleMappingTokens(DomainTokens):
    """s_l = linear2_l(relu(linear1_l(pairwise_pool([μ_l, σ_l])))): (B, L, E); the domain tokens' two layers per
    block with another pool and a ReLU between them."""

    def forward(self, mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        pooled = pairwise_pool(torch.cat([mu, sigma], dim=-1))  # (L, B, W)
        out = [b(F.relu(a(x))) for a, b, x in zip(self.linear1, self.linear2, pooled, strict=True)]
        return torch.stack(out, dim=1)


class PromptTokens(nn.Module):
    """The three projectors of the reference's prompt learner; hidden widths W/3 and W/2 as its 256 and 384 at
    W = 768."""

    def __init__(self, layers: int, width: int, embed: int, n_image_tokens: int = 4):
        super().__init__()
        self.n_image_tokens = n_image_tokens
        self.domain = DomainTokens(layers, width, embed, width // 3)
        self.image = ImageTokens(layers, width, embed)
        self.style = StyleMappingTokens(layers, width, embed, width // 2)

    def forward(self, source: tuple, target: tuple) -> dict[str, torch.Tensor]:
        """``source``, ``target``: (μ, σ) of a batch of source and of target images (each (L, B, W)). Returns the
        context of each image's prompts (B, 2L + n_img, E), the source domain tokens and their style mapping."""
        d_s, d_t = self.domain(*source), self.domain(*target)
        return {
            "source_context": torch.cat([d_s, d_t, self.image(source[0], self.n_image_tokens)], dim=1),
            "target_context": torch.cat([d_s, d_t, self.image(target[0], self.n_image_tokens)], dim=1),
            "source_domain": d_s,
            "source_style": self.style(*source),
        }


def batch_normalised_entropy(probs: torch.Tensor) -> torch.Tensor:
    """``entropy_loss``: p (B, C) L2-normalised over the batch (dim 0), then the mean over images of
    −Σ_c p log(p + 1e-8)."""
    p = F.normalize(probs, dim=0)
    return -(p * torch.log(p + EPS_LOG)).sum(1).mean()


def text_kl(source_text: torch.Tensor, target_text: torch.Tensor) -> torch.Tensor:
    """KLDivLoss(batchmean)(log_softmax(t_s, dim=1), softmax(t_t, dim=1)) on text features (B, C, E)."""
    return F.kl_div(F.log_softmax(source_text, dim=1), F.softmax(target_text, dim=1), reduction="batchmean")


def loss_terms(
    source_logits: torch.Tensor,
    labels: torch.Tensor,
    target_probs: torch.Tensor,
    source_domain: torch.Tensor,
    source_style: torch.Tensor,
    source_text: torch.Tensor,
    target_text: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """Each term of ``forward_backward`` and their weighted sum ``loss``."""
    terms = {
        "ce": F.cross_entropy(source_logits, labels),
        "smn": F.mse_loss(source_domain, source_style),
        "entropy": batch_normalised_entropy(target_probs),
        "kl": text_kl(source_text, target_text),
    }
    terms["loss"] = torch.stack([WEIGHTS[k] * v for k, v in terms.items()]).sum()
    return terms
