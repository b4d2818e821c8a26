"""TCPA: token coordinated prompt attention, per-token prompts chosen from two pools by key matching.

Liu et al., "Token Coordinated Prompt Attention is Needed for Visual Prompting", ICML 2025 (arXiv 2505.02406).
Reference implementation read (not copied): zhoujiahuan1991/ICML2025-TCPA at commit dce8b3a, ``models/TCPA.py``
(``Pool``, ``Pool_TCPA.get_prompts``/``get_mask_TDVP``), ``models/VFPT_TCPA.py`` (``forward``, ``forward_block``,
``forward_attn``), ``train/trainer.py`` (the pool loss and the random epochs), ``utils/args.py`` and
``sh/VFPT_TCPA_dtd.sh`` (the preset). The reference tunes a supervised ImageNet-22k ViT with a linear head; here the
image tower is CLIP's and the classifier CLIP's fixed hand-crafted text prompts, as VPT-deep's (a reading).

Block j of the image tower (all blocks by default) has two pools: CLS prompts C_j ∈ R^{S_c×ℓ_c×d} with keys
K^c_j ∈ R^{S_c×d}, and image prompts I_j ∈ R^{S_i×ℓ_i×d} with keys K^i_j. With x the block's input ([CLS, patches])::

    a_cls = top-k_c of cos(x_CLS, K^c_j)           a_p = top-k_i of cos(x_p, K^i_j) for every patch p
    P_j = F(drop([C_j; I_j]))                        (all S_c·ℓ_c + S_i·ℓ_i prompts; F = Re FFT₂ when ``fourier``)
    the CLS token attends to the tokens and to the prompts of its chosen CLS entries (never an image prompt);
    patch p attends to the tokens and to the prompts of its chosen image entries (never a CLS prompt)
    (vlprompt.clip.attention_mask: the prompts are keys and values only, fresh at every block; the mask multiplies
    the softmax over all L + m keys, unrenormalised, as the reference's ``attn * self.mask``)
    L_pool = Σ_j [mean(1 − cos(x_CLS, K^c_{a_cls})) + mean_p mean(1 − cos(x_p, K^i_{a_p}))]
    L = CE(s · x̂ · wᵀ, y) + λ_pool · L_pool

Training batches go through the reference's mixup first (timm's ``Mixup`` as its ``train/utils.py``
``get_mixup_fn`` builds it, batch mode, cutmix off, with ``SoftTargetCrossEntropy`` in place of the CE): an odd
batch drops its last image, then with probability p_mix (0.5) one λ ~ Beta(α, α) (α = 0.8) is drawn for the batch
and every image is mixed with its mirror in the batch (image b with image B − 1 − b)::

    x̃_b = λ x_b + (1 − λ) x_{B−1−b},   t_b = λ ỹ_b + (1 − λ) ỹ_{B−1−b},   ỹ = (1 − ε) onehot(y) + ε / C
    CE(logits, y) becomes −Σ_c t_b,c log softmax(logits_b)_c, averaged over the batch

with ε = 0.1 the label smoothing (applied to every batch, mixed or not, as the reference's target always passes
through ``mixup_target``) and C the training classes. The two draws (whether to mix, then λ) come from torch's
generator, which the training loop seeds from (seed, epoch), so a run and its resumption draw the same λs (the
reference draws them from NumPy's global generator).

For the first ``random_epochs`` epochs of training the entries are drawn at random (a uniform random permutation per
token, its first k), as the reference's ``random=True``; L_pool still reads the similarities of the drawn entries.
Keys and prompts ~ U(−1, 1) (the reference's ``Pool``). Only the pools train.

Preset (``sh/VFPT_TCPA_dtd.sh`` and ``utils/args.py``): AdamW, lr 0.01, weight decay 0.1, batch 128, 100 epochs, warm-up
over the first fifth of the steps then cosine per step, pool size 18 and top-k 10 for both pools, prompt length 1,
λ_pool 0.01, 10 random epochs, prompt dropout 0.1. The released scripts run TCPA on VFPT (``--model=VFPT_TCPA``): the
prompts pass through the real part of a 2-D FFT (over the width, then over the prompts) before they enter the
block, ``fourier`` True by default; False gives TCPA on plain prompts (the paper's VPT variant).

Deviations and readings:

* the classifier is CLIP's fixed text classifier ("a photo of a {}.", ``template`` as VPT-deep's) instead of the
  reference's trained linear head (the project has no linear head for a tower in the loop);
* mixup is on by default, as every released script sets ``--mixup=mixup`` (``mixup`` False gives the plain
  cross-entropy without label smoothing, the reference's ``--mixup=none``); its cutmix branch is not reproduced,
  the scripts leave ``--cutmix_alpha`` at its default 0 (off);
* the linear warm-up from 0 is a constant warm-up at half the lr (the ramp's mean), ``warmup_lr``, an assumption;
* ``after_softmax`` False gives a masked softmax instead (each token's weights renormalised over what it may see).

Checked in ``tests/test_tcpa.py``: the selection, the mask and L_pool against the reference's own ``Pool_TCPA`` at its
hard-coded ViT-B/16 shapes (``tests/reference/fixtures/tcpa_pool.pt``, written by
``tests/reference/regenerate_tcpa.py``), the prompted attention against a hand-written loop in the reference's
layout (and, with every prompt masked out of a masked softmax, equal to the plain blocks), the pool loss and the mask
by hand on a toy, and the reduction: without pools (``depth_vision`` 0) the method is exactly zero-shot CLIP with the
fixed prompts (VPT-deep at depth 0) and its loss the cross-entropy alone (mixup off). The mixup of images and
targets against timm's ``Mixup`` built by the reference's own ``get_mixup_fn`` on fixed draws
(``tests/reference/fixtures/tcpa_mixup.pt``, written by the same script), and a run with mixup resumed after a kill
equal to the uninterrupted run.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from vlprompt.clip import attention_mask, deep_prompts
from vlprompt.methods.base import MethodContext, MethodError, TrainConfig, normalize, register
from vlprompt.methods.vpt_deep import VPTDeep


@dataclasses.dataclass(frozen=True)
class TCPAConfig(TrainConfig):
    epochs: int = 100
    batch_size: int = 128
    lr: float = 0.01
    optimizer: str = "adamw"
    weight_decay: float = 0.1
    warmup_epochs: int = 20  # the reference warms up over the first fifth of the steps
    warmup_lr: float = 0.005  # assumption: the reference's linear warm-up from 0 as a constant at its mean, lr / 2
    lr_schedule: str = "step"  # cosine per step, as the reference's cosine_lr
    depth_vision: int = 12  # blocks with pools, capped at the tower's (the reference: all)
    pool_size_cls: int = 18
    pool_size_image: int = 18
    topk_cls: int = 10
    topk_image: int = 10
    length_cls: int = 1  # prompts per pool entry
    length_image: int = 1
    pool_weight: float = 0.01  # λ_pool
    random_epochs: int = 10  # the first epochs choose pool entries at random
    prompt_dropout: float = 0.1
    fourier: bool = True  # VFPT's Re FFT₂ of the prompts, as the released scripts; False: plain prompts
    after_softmax: bool = True  # the reference's mask multiplies the softmax; False: a masked softmax
    template: str | None = "vpt"  # fixed text prompt, as VPT-deep's; None: the dataset's (CoOp's)
    mixup: bool = True  # the reference's --mixup=mixup (every released script); False: plain CE, no smoothing
    mixup_alpha: float = 0.8  # λ ~ Beta(α, α) (get_mixup_fn's mixup_alpha)
    mixup_prob: float = 0.5  # the share of batches mixed (get_mixup_fn's prob)
    label_smoothing: float = 0.1  # of every training target while mixup is on (get_mixup_fn's label_smoothing)


class PromptPool(nn.Module):
    """One kind of pool (CLS or image) for J blocks: keys (J, S, d) and prompts (J, S, ℓ, d), both ~ U(−1, 1)."""

    def __init__(self, depth: int, size: int, length: int, width: int, topk: int, generator: torch.Generator):
        super().__init__()
        if not 0 < topk <= size:
            raise MethodError(f"tcpa: top-k must be in 1..pool size {size}, got {topk}")
        self.topk = topk
        self.keys = nn.Parameter(torch.rand(depth, size, width, generator=generator) * 2 - 1)
        self.prompts = nn.Parameter(torch.rand(depth, size, length, width, generator=generator) * 2 - 1)

    def select(self, tokens: torch.Tensor, layer: int, random: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean of 1 − cos over the chosen entries, (N, k) chosen entries) for ``tokens`` (N, d)."""
        sim = F.normalize(tokens, dim=-1) @ F.normalize(self.keys[layer].to(tokens.dtype), dim=-1).T  # (N, S)
        if random:  # a uniform permutation per token, its first k (the reference's rand().argsort())
            index = torch.rand(sim.shape, device=sim.device).argsort(dim=1)[:, : self.topk]
        else:
            index = sim.topk(self.topk, dim=1).indices
        return (1 - sim.gather(1, index)).mean(), index

    def entries(self, index: torch.Tensor) -> torch.Tensor:
        """(N, S · ℓ) 1 at the prompts of the chosen entries ``index`` (N, k)."""
        size, length = self.prompts.shape[1], self.prompts.shape[2]
        chosen = torch.zeros(index.shape[0], size, device=index.device).scatter_(1, index, 1.0)
        return chosen.repeat_interleave(length, dim=1)


def mixup_draw(prob: float, alpha: float) -> float:
    """λ of one batch from torch's generator: 1 (no mixing) with probability 1 − ``prob``, else ~ Beta(α, α) (the
    order of timm's ``Mixup._params_per_batch``: whether to mix, then λ)."""
    if float(torch.rand(())) >= prob:
        return 1.0
    return float(torch.distributions.Beta(torch.tensor(alpha), torch.tensor(alpha)).sample())


def mixup_batch(
    images: torch.Tensor, labels: torch.Tensor, classes: int, lam: float, smoothing: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mixed images (B, ...), soft targets (B, C)): each image and its smoothed one-hot target mixed with its mirror
    in the batch (b with B − 1 − b) at weight ``lam``; B must be even (timm's batch-mode ``Mixup``)."""
    if images.shape[0] % 2:
        raise MethodError(f"tcpa: mixup pairs the batch with its mirror and needs an even batch, got {len(images)}")
    off = smoothing / classes
    target = torch.full((len(labels), classes), off, device=images.device).scatter_(
        1, labels.view(-1, 1), 1.0 - smoothing + off
    )
    if lam == 1.0:
        return images, target
    return lam * images + (1 - lam) * images.flip(0), lam * target + (1 - lam) * target.flip(0)


def tcpa_mask(chosen_cls: torch.Tensor, chosen_image: torch.Tensor) -> torch.Tensor:
    """(B, L, L + m_c + m_i) from the CLS token's chosen prompts (B, m_c) and the patches' (B, L − 1, m_i): keys
    are the L tokens, then the CLS prompts, then the image prompts. The CLS token (row 0) sees the tokens and its CLS
    prompts; patch rows see the tokens and their image prompts."""
    b, patches, m_i = chosen_image.shape
    length, m_c = patches + 1, chosen_cls.shape[1]
    mask = torch.ones(b, length, length + m_c + m_i, device=chosen_cls.device)
    mask[:, 0, length : length + m_c] = chosen_cls
    mask[:, 0, length + m_c :] = 0
    mask[:, 1:, length : length + m_c] = 0
    mask[:, 1:, length + m_c :] = chosen_image
    return mask


@register
class TCPA(VPTDeep):
    name = "tcpa"
    paper = "Liu et al., Token Coordinated Prompt Attention is Needed for Visual Prompting, ICML 2025"
    description = (
        "per-token prompts from a CLS pool and an image pool chosen by key matching, seen through an attention "
        "mask at every image block; fixed hand-crafted text prompts"
    )
    Config = TCPAConfig
    epochs_done: torch.Tensor  # () the training epochs finished (the random-selection clock)

    def build_prompts(self, config, ctx: MethodContext, gen: torch.Generator) -> None:
        model = self.frozen.model
        depth = deep_prompts.cap_depth(config.depth_vision, deep_prompts.vision_layers(model), "vision")
        width = deep_prompts.vision_width(model)
        device = next(model.parameters()).device
        self.vision_ctx = None  # no prompt tokens in the sequence
        self.pool_cls = PromptPool(depth, config.pool_size_cls, config.length_cls, width, config.topk_cls, gen)
        self.pool_image = PromptPool(depth, config.pool_size_image, config.length_image, width, config.topk_image, gen)
        self.pool_cls.to(device)
        self.pool_image.to(device)
        self.prompt_dropout = nn.Dropout(config.prompt_dropout)
        self.depth = depth
        self.register_buffer("epochs_done", torch.zeros((), dtype=torch.long), persistent=False)
        self._pool_terms: list[torch.Tensor] = []

    def random_selection(self) -> bool:
        return self.training and int(self.epochs_done) < self.config.random_epochs

    def layer_prompts(self, layer: int, like: torch.Tensor) -> torch.Tensor:
        """(B, m_c + m_i, d) block ``layer``'s prompts for a batch ``like`` (B, L, d): every CLS prompt, then every
        image prompt, dropped out per image, through Re FFT₂ when ``fourier``."""
        prompts = torch.cat([self.pool_cls.prompts[layer].flatten(0, 1), self.pool_image.prompts[layer].flatten(0, 1)])
        prompts = self.prompt_dropout(prompts.to(like.dtype).expand(like.shape[0], -1, -1))
        if self.config.fourier:
            # in fp32 whatever the autocast: cuFFT takes half precision only at power-of-two sizes
            prompts = torch.fft.fft(torch.fft.fft(prompts.float(), dim=-1), dim=-2).real.to(prompts.dtype)
        return prompts

    def plan(self, layer: int):
        """Block ``layer``'s prompts and mask from its input x (B, L, d), L_pool's term recorded."""

        def plan(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            b, length, width = x.shape
            random = self.random_selection()
            dist_cls, index_cls = self.pool_cls.select(x[:, 0], layer, random)
            dist_image, index_image = self.pool_image.select(x[:, 1:].reshape(-1, width), layer, random)
            self._pool_terms.append(dist_cls + dist_image)
            chosen_image = self.pool_image.entries(index_image).view(b, length - 1, -1)
            mask = tcpa_mask(self.pool_cls.entries(index_cls), chosen_image).to(x.dtype)
            return self.layer_prompts(layer, x), mask

        return plan

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(normalised image features (B, D), L_pool)."""
        self._pool_terms = []
        plans = [self.plan(j) for j in range(self.depth)]
        with attention_mask.prompt_attention(self.frozen.model, plans, "vision", self.config.after_softmax):
            features = normalize(self.frozen.model.encode_image(images))
        pool = torch.stack(self._pool_terms).sum() if self._pool_terms else features.new_zeros(())
        self._pool_terms = []
        return features, pool

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode(images)[0]

    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict]:
        cfg = self.config
        lam = 1.0
        if cfg.mixup and self.training:
            if len(images) % 2:  # the reference drops the last image of an odd batch
                images, labels = images[:-1], labels[:-1]
            if len(images) == 0:
                raise MethodError("tcpa: mixup needs at least two images per batch; set batch_size >= 2")
            lam = mixup_draw(cfg.mixup_prob, cfg.mixup_alpha)
            images, target = mixup_batch(images, labels, len(self.classnames), lam, cfg.label_smoothing)
        features, pool = self.encode(images)
        logits = self.logit_scale * features @ self.classifier().T
        if cfg.mixup and self.training:  # timm's SoftTargetCrossEntropy
            ce = torch.sum(-target.to(logits.dtype) * F.log_softmax(logits, dim=-1), dim=-1).mean()
        else:
            ce = F.cross_entropy(logits, labels)
        total = ce + cfg.pool_weight * pool
        return total, {"ce": ce.item(), "pool": pool.item(), "mixup_lambda": lam}

    def epoch_end(self, epoch: int) -> None:
        self.epochs_done.fill_(epoch + 1)

    def loop_state(self) -> dict:
        return {"epochs_done": int(self.epochs_done)}

    def load_loop_state(self, state: dict) -> None:
        self.epochs_done.fill_(int(state["epochs_done"]))

    def run_info(self) -> dict:
        info = {**super().run_info(), "random_epochs": min(self.config.random_epochs, self.config.epochs)}
        if self.config.mixup:
            c = self.config
            info["mixup"] = {"alpha": c.mixup_alpha, "prob": c.mixup_prob, "label_smoothing": c.label_smoothing}
        return info
