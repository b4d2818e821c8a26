"""OGEN: a class-conditional feature generator and adaptive self-distillation on CoOp (Zang et al., "Overcoming the
Pitfalls of Vision-Language Model Finetuning for OOD Generalization", ICLR 2024, arXiv 2401.15914).

Reference implementation read (not copied): apple/ml-ogen, trainers/ogen.py (``PromptLearner`` with the
generator's ``multihead_attn`` and ``ffn``, ``CustomCLIP.feature_generator`` and ``forward``,
``OGEN.forward_backward``), configs/trainers/OGEN/vit_b16_ep50_ctxv1.yaml and scripts/ogen/base2new_train_ep50.sh
(4 tokens from "a photo of a", batch 32, 50 epochs, SGD lr 0.002, cosine, 1 constant warm-up epoch).

Text features W = normalize(g(t)) (CoOp). The generator synthesises image features of a class from its text
feature and examples of related classes: G(Q, K, V) = normalize(FFN(Q) + MHA(Q, K, V)) (4 heads, dropout 0.1;
FFN = Linear → ReLU → Linear, width D). Per training class c: μ_c, σ_c the mean and per-dimension standard
deviation of its normalised training features (assumption: the reference loads them from files it does not
ship), and N(c) its k = 3 nearest training classes by cos(μ_c, μ_c'). For a batch (x̂_b, y_b), u ~ U[0, 1)^D
drawn once per batch (as the reference):

    w_b = W[y_b] (detached), K_b = W[N(y_b)] (detached), V_b = μ_N(y_b) + u ⊙ σ_N(y_b)     (k rows each)
    z_b  = G(w_b, K_b, V_b)          class y_b's feature "extrapolated" from its neighbours' features
    z'_b = G(K_b, w_b, x̂_b)          the neighbours' features from the real image (k rows)
    L_gen = D·MSE(z, x̂) + D·MSE(z', V)                                        (D = feature width; 512 in the reference)
    L_syn = ¼ CE(s·zWᵀ, y) + ¼ CE(s·z'Wᵀ, N(y)) / k + ¼ CE(s·x̂Wᵀ, y)          (the real-image CE is CoOp's)

(the reference writes L_gen's factor as the constant 512, ViT-B/16's D, which makes each term a squared distance
per feature summed over the dimensions; here it is the backbone's D, ``gen_loss_scale`` sets another value);

and the unseen-class term, which the reference always adds (``CustomCLIP`` is built with ``classnames_new``, the
dataset's new classes): with the prompted features W_u of the names of classes without images, the k unseen
classes nearest to w_b and z''_b = G(W_u[those], w_b, x̂_b), it adds ½ CE(s·z''W_uᵀ, those) / k. OGEN declares
``reads_new_classnames``: under base-to-new the run gives it the new classes' names from classes.json
(``MethodContext.unseen_classnames``; never their images or labels), unless the config sets
``new_class_names: false``; every run records how many names it had (``new_class_names`` in metrics.json) and
whether the term was on (``method_info``). Without names (other protocols, refused) the term is off. The first 20%
of the epochs train L_gen alone (the reference's schedule: the prompt receives no gradient then), afterwards
L_gen + L_syn (+ the unseen term).

Adaptive self-distillation is on by default because the paper makes it half of the method (its abstract:
"Equally important is our adaptive self-distillation mechanism to regularize our feature generation model during
joint optimization"); the released code builds a teacher model but the code that uses it is not in the
repository, so its form here is an assumption (``distill_weight: 0`` turns it off): a local mean teacher. After
each epoch e the context is stored; the teacher's context is the mean of the last m_e = ⌈``teacher_window`` · e⌉
stored contexts (a window growing with training), and after the warm phase the student's logits on the real images
are distilled from the teacher's:
L_sd = λ_sd · KL(softmax(teacher) ‖ softmax(student)). Only the context and the generator train; prediction is
CoOp's with the trained context (the generator and the teacher are training aids). The step counter and the stored
contexts are part of the trained state, so a resumed run continues exactly.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from vlprompt.clip.prompting import PromptLearner
from vlprompt.methods.base import MethodContext, normalize, register
from vlprompt.methods.coop import CoOp, CoOpConfig


@dataclasses.dataclass(frozen=True)
class OGENConfig(CoOpConfig):
    epochs: int = 50
    neighbours: int = 3  # k nearest training classes (and unseen classes) per class
    heads: int = 4  # generator attention heads
    dropout: float = 0.1  # generator attention dropout
    warm_fraction: float = 0.2  # share of the epochs training the generator alone
    distill_weight: float = 1.0  # λ_sd (assumption)
    teacher_window: float = 0.5  # local mean teacher over the last ⌈window · epoch⌉ epochs (assumption)
    use_unseen_names: bool = True  # use the new classes' names when the run gives them (the reference: always)
    gen_loss_scale: float | None = None  # weight of each MSE term of L_gen; None: the feature width D (see below)


class FeatureGenerator(nn.Module):
    """G(Q, K, V) = normalize(FFN(Q) + MHA(Q, K, V)); (B, q, D), (B, n, D), (B, n, D) -> (B·q, D)."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out = self.ffn(q) + self.attn(q, k, v, need_weights=False)[0]
        return normalize(out).flatten(0, 1)


@register
class OGEN(CoOp):
    name = "ogen"
    paper = "Zang et al., Overcoming the Pitfalls of Vision-Language Model Finetuning for OOD Generalization, ICLR 2024"
    description = "CoOp + a class-conditional image-feature generator (synthetic classes in the CE) + mean-teacher"
    Config = OGENConfig
    reads_new_classnames = True
    prompt_learner: PromptLearner  # CoOp's, whose context this method reads

    ogen_step: torch.Tensor  # () the optimisation steps taken
    ogen_snapshots: torch.Tensor  # (epochs, *ctx.shape) the context after each epoch
    class_mean: torch.Tensor  # per-class feature statistics of the training classes
    class_std: torch.Tensor
    neighbours: torch.Tensor  # (C, k) each class's nearest classes

    def __init__(self, config: OGENConfig, ctx: MethodContext):
        super().__init__(config, ctx)
        dim = ctx.backbone.embed_dim
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(ctx.seed)
            self.generator = FeatureGenerator(dim, config.heads, config.dropout).to(ctx.device)
        pl = self.prompt_learner
        self.register_buffer("ogen_step", torch.zeros((), dtype=torch.long, device=ctx.device))
        self.register_buffer("ogen_snapshots", torch.zeros(config.epochs, *pl.ctx.shape, device=ctx.device))
        self.unseen = None
        if config.use_unseen_names and ctx.unseen_classnames:
            self.unseen = PromptLearner(
                ctx.encoder, ctx.backbone.tokenizer, ctx.unseen_classnames, n_ctx=pl.n_ctx, ctx_init=config.ctx_init
            )
            self.unseen.ctx = pl.ctx  # one context, the unseen classes' own token buffers
        self.steps_per_epoch = 1
        if ctx.train_features is not None and ctx.train_labels is not None:
            self.set_class_statistics(ctx.train_features, ctx.train_labels, len(ctx.classnames))
            n = ctx.train_features.shape[1]  # as the shared loop: N // batch size steps, at least one
            self.steps_per_epoch = max(
                config.min_steps_per_epoch, n // config.batch_size if n >= config.batch_size else 1
            )

    def run_info(self) -> dict:
        return {**super().run_info(), "unseen_class_term": self.unseen is not None}

    def set_class_statistics(self, features: torch.Tensor, labels: torch.Tensor, n_cls: int) -> None:
        """μ_c, σ_c over every view of the class's normalised training features and its k nearest classes."""
        feats = normalize(features.flatten(0, 1))
        y = labels.repeat(features.shape[0])
        means = torch.stack([feats[y == c].mean(0) for c in range(n_cls)])
        stds = torch.stack([feats[y == c].std(0, unbiased=False) for c in range(n_cls)])
        sim = means @ means.T
        sim.fill_diagonal_(-float("inf"))
        k = min(self.config.neighbours, n_cls - 1)
        self.register_buffer("class_mean", means, persistent=False)
        self.register_buffer("class_std", stds, persistent=False)
        self.register_buffer("neighbours", sim.topk(k, dim=1).indices, persistent=False)  # (C, k)

    # -- the trained state includes the epoch clock and the stored contexts (resumable) --------------------
    def trainable_state(self) -> dict[str, torch.Tensor]:
        state = super().trainable_state()
        state.update(
            ogen_step=self.ogen_step.detach().cpu().clone(), ogen_snapshots=self.ogen_snapshots.detach().cpu().clone()
        )
        return state

    def epoch(self) -> int:
        return int(self.ogen_step) // self.steps_per_epoch

    def teacher_context(self, epoch: int) -> torch.Tensor | None:
        """Mean of the contexts stored after the last ⌈window · epoch⌉ epochs (None before the first)."""
        if epoch < 1:
            return None
        m = max(1, math.ceil(self.config.teacher_window * epoch))
        return self.ogen_snapshots[epoch - m : epoch].mean(0)

    def generator_losses(self, x_hat: torch.Tensor, labels: torch.Tensor, text: torch.Tensor):
        """The synthetic features and L_gen (see the module docstring); text W (C, D) of the training classes."""
        nb = self.neighbours[labels]  # (B, k)
        w = text[labels].detach().unsqueeze(1)  # (B, 1, D)
        keys = text[nb].detach()  # (B, k, D)
        u = torch.rand(1, x_hat.shape[1], device=x_hat.device)
        values = self.class_mean[nb] + u * self.class_std[nb]  # (B, k, D)
        z = self.generator(w, keys, values)  # (B, D)
        z_nb = self.generator(keys, w, x_hat.unsqueeze(1))  # (B·k, D)
        scale = x_hat.shape[1] if self.config.gen_loss_scale is None else self.config.gen_loss_scale
        gen = scale * F.mse_loss(z, x_hat) + scale * F.mse_loss(z_nb, values.flatten(0, 1))
        return z, z_nb, nb, w, gen

    def loss(self, image_features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict]:
        epoch = self.epoch()
        if self.training:
            if epoch > 0 and int(self.ogen_step) % self.steps_per_epoch == 0:  # first step of an epoch: store the
                self.ogen_snapshots[epoch - 1] = self.prompt_learner.ctx.detach()  # context the last one ended with
            self.ogen_step += 1
        x_hat = normalize(image_features)
        text = self.text_features()  # (C, D)
        z, z_nb, nb, w, gen = self.generator_losses(x_hat, labels, text)
        parts = {"gen": gen.item()}
        if epoch < int(self.config.epochs * self.config.warm_fraction):
            return gen, parts
        k = nb.shape[1]
        s = self.logit_scale
        logits = s * x_hat @ text.T
        syn = (
            0.25 * F.cross_entropy(s * z @ text.T, labels)
            + 0.25 / k * F.cross_entropy(s * z_nb @ text.T, nb.flatten())
            + 0.25 * F.cross_entropy(logits, labels)
        )
        total = gen + syn
        parts["syn"] = syn.item()
        if self.unseen is not None:
            unseen = normalize(self.unseen())  # (U, D)
            near = (w.squeeze(1) @ unseen.T).topk(min(k, len(unseen)), dim=1).indices  # (B, k')
            z_u = self.generator(unseen[near], w, x_hat.unsqueeze(1))
            new = 0.5 / near.shape[1] * F.cross_entropy(s * z_u @ unseen.T, near.flatten())
            total, parts["unseen"] = total + new, new.item()
        teacher_ctx = self.teacher_context(epoch)
        if teacher_ctx is not None and self.config.distill_weight > 0:
            with torch.no_grad():
                teacher = s * x_hat @ normalize(self.prompt_learner(teacher_ctx)).T
            sd = self.config.distill_weight * F.kl_div(
                F.log_softmax(logits, -1), F.log_softmax(teacher, -1), reduction="batchmean", log_target=True
            )
            total, parts["distill"] = total + sd, sd.item()
        return total, parts
