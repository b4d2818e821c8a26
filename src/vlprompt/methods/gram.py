"""GRAM: Gradient-Regulated Meta-Prompt Learning (Li et al., "Gradient-Regulated Meta-Prompt Learning for
Generalizable Vision-Language Models", ICCV 2023, arXiv 2303.06571), on CoOp.

No official code was found (docs/reference_fidelity.md): this is a reading of the paper's abstract and method
outline, and every part below marked "assumption" is a choice the paper leaves open or that could not be read.

Two stages:

1. meta stage, once per backbone and meta settings (rule ``train_meta_prompt``,
   vlprompt.training.meta_prompt.train_meta_prompt; shared by every experiment that asks for the same one):
   on *unlabelled image-text pairs* (on the pocket world: the pocket CLIP's own pretraining pool, images with
   their captions; no class label is read) meta-learn jointly

   - a soft-prompt initialisation θ (CoOp's context, started from CoOp's own initialisation), and
   - a gradient regulating function R_φ that maps a raw fine-tuning gradient to a "domain-consistent" one.

   Tasks come from a cross-modal clustering of the pairs: agglomerative (Ward) clustering of
   [normalize(f(image)), normalize(g(caption))] into ``meta_clusters`` groups (assumption: one cut of the
   hierarchy, not the paper's multi-level tree). Each meta step draws a support set from one cluster and a query
   set from another (assumption: the paper's cross-domain split), ``meta_batch`` pairs each, and with the
   image-to-caption contrastive loss L (cross-entropy of each image over the prompted captions of its set, the
   same caption once; the prompt is "[ctx] caption")

       g   = ∇_θ L_support(θ)                         (detached: first order, assumption)
       θ'  = θ − α · R_φ(g)                           (one regulated inner step, α = ``meta_inner_lr``)
       min_{θ, φ}  L_query(θ')                        (Adam, ``meta_lr``; θ first order, φ exact)

   R_φ acts on each context token's gradient row g_i (assumption: the paper's "lightweight" function, form not
   read): R_φ(g)_i = g_i ⊙ 2σ(W₂ ReLU(W₁ ĝ_i + b₁) + b₂), ĝ_i = g_i / |g_i|, W₂ = b₂ = 0 at the start, so R_φ
   starts as the identity and only rescales coordinates (never flips a sign).

2. target stage, every run: CoOp on the few-shot data, the context initialised from θ (``init="meta"``) and
   every gradient of the context passed through the frozen R_φ before the optimiser's step (``regulator="meta"``,
   the training loop's ``adjust_gradients`` hook; weight decay is added by the optimiser after it).

Exact reduction: ``init="coop"`` and ``regulator="identity"`` read no meta stage and train CoOp's arithmetic
step for step (same context initialisation, same batches, same gradients): model.pt and metrics equal ``coop``'s
with the same settings (tests/test_gram.py).

Assumptions besides those above: CoOp's settings for the target stage (4 tokens from "a photo of a", the paper's
CoOp numbers were not read); the meta settings (steps, batch, learning rates, clusters, pool size) are this
project's choices on the pocket world, not the paper's, and were not tuned; only the text-prompt variant (GRAM on
CoOp) is built, not VPT or UNIGRAM.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vlprompt.clip.prompting import PromptLearner
from vlprompt.methods.base import MethodContext, MethodError, normalize, register
from vlprompt.methods.coop import CoOp, CoOpConfig

INITS = ("meta", "coop")
REGULATORS = ("meta", "identity")
# The Config fields that define the meta stage (its artefact's key): what it starts from and how it learns.
META_FIELDS = (
    "n_ctx",
    "ctx_init",
    "meta_steps",
    "meta_batch",
    "meta_inner_lr",
    "meta_lr",
    "meta_clusters",
    "meta_pool_size",
    "meta_hidden",
    "meta_seed",
)


@dataclasses.dataclass(frozen=True)
class GRAMConfig(CoOpConfig):
    init: str = "meta"  # meta: the meta stage's context | coop: CoOp's initialisation (ctx_init or random)
    regulator: str = "meta"  # meta: the meta-learned regulating function | identity: raw gradients (CoOp)
    meta_steps: int = 300  # meta updates (assumption: the pocket pool is small; not tuned)
    meta_batch: int = 32  # image-text pairs in a support set and in a query set (assumption)
    meta_inner_lr: float = 1.0  # α of the one regulated inner step (assumption; context gradients are small)
    meta_lr: float = 1e-3  # Adam's learning rate for θ and φ (assumption)
    meta_clusters: int = 8  # tasks (domains) cut from the cross-modal hierarchy (assumption)
    meta_pool_size: int = 2000  # image-text pairs drawn by the pretraining recipe (assumption)
    meta_hidden: int = 32  # hidden width of the regulating function's MLP (assumption: "lightweight")
    meta_seed: int = 0  # the meta stage's seed (pool, task draws), one stage shared by every run's seed


class GradientRegulator(nn.Module):
    """R_φ(g)_i = g_i ⊙ 2σ(W₂ ReLU(W₁ g_i/|g_i| + b₁) + b₂) on each row g_i of a (n_ctx, width) gradient; the
    identity while W₂ and b₂ are zero (their initial value)."""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.hidden = nn.Linear(width, hidden)
        self.out = nn.Linear(hidden, width)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def gate(self, grad: torch.Tensor) -> torch.Tensor:
        """(n_ctx, width) factors in (0, 2) for ``grad`` (n_ctx, width)."""
        unit = grad.float() / grad.float().norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return 2 * torch.sigmoid(self.out(F.relu(self.hidden(unit))))

    def forward(self, grad: torch.Tensor) -> torch.Tensor:
        return grad * self.gate(grad).to(grad.dtype)


def cluster_pairs(image_features: torch.Tensor, text_features: torch.Tensor, n_clusters: int) -> np.ndarray:
    """Cluster labels (N,) of image-text pairs: Ward agglomerative clustering of the concatenated normalised
    image and text features (deterministic: no random start)."""
    from sklearn.cluster import AgglomerativeClustering

    if len(image_features) < n_clusters:
        raise MethodError(f"gram: {len(image_features)} image-text pairs cannot form {n_clusters} clusters")
    joint = torch.cat([normalize(image_features), normalize(text_features)], dim=-1).cpu().numpy().astype(np.float64)
    return AgglomerativeClustering(n_clusters=n_clusters, linkage="ward").fit_predict(joint)


def contrastive_loss(
    learner: PromptLearner, ctx: torch.Tensor, image_features: torch.Tensor, captions: list[str], scale: float
) -> torch.Tensor:
    """Cross-entropy of each image over the prompted captions of its set (each distinct caption once)."""
    unique = list(dict.fromkeys(captions))
    learner.set_classes(unique)
    labels = torch.tensor([unique.index(c) for c in captions], device=image_features.device)
    text = normalize(learner(ctx))  # (n_unique, D)
    return F.cross_entropy(scale * normalize(image_features) @ text.T, labels)


def meta_learn(
    ctx: MethodContext, config: GRAMConfig, image_features: torch.Tensor, captions: list[str], clusters: np.ndarray
) -> dict:
    """The meta stage on N image-text pairs (``image_features`` (N, D), ``captions``, their ``clusters`` (N,)):
    returns ``{"state": {"prompt_learner.ctx", "regulator.*"}, "history": [query loss per step]}``."""
    if config.csc:
        raise MethodError("gram: the meta-learned context is shared by all classes; set csc: false")
    gen = torch.Generator().manual_seed(config.meta_seed)
    learner = PromptLearner(
        ctx.encoder,
        ctx.backbone.tokenizer,
        ["x"],
        n_ctx=config.n_ctx,
        ctx_init=config.ctx_init,
        generator=torch.Generator().manual_seed(config.meta_seed),
    ).to(ctx.device)
    regulator = GradientRegulator(ctx.encoder.width, config.meta_hidden).to(ctx.device)
    theta = learner.ctx
    opt = torch.optim.Adam([theta, *regulator.parameters()], lr=config.meta_lr)
    groups = [np.flatnonzero(clusters == c) for c in np.unique(clusters)]
    groups = [g for g in groups if len(g) > 0]
    if len(groups) < 2:
        raise MethodError("gram: the meta stage needs at least two clusters (support and query domains)")
    feats = image_features.to(ctx.device)
    history = []

    def draw(group: np.ndarray) -> tuple[torch.Tensor, list[str]]:
        pick = group[torch.randint(len(group), (config.meta_batch,), generator=gen).numpy()]
        return feats[pick], [captions[i] for i in pick]

    for _ in range(config.meta_steps):
        s, q = torch.randperm(len(groups), generator=gen)[:2].tolist()
        (xs, ts), (xq, tq) = draw(groups[s]), draw(groups[q])
        support = contrastive_loss(learner, theta, xs, ts, ctx.logit_scale)
        (grad,) = torch.autograd.grad(support, theta)
        adapted = theta - config.meta_inner_lr * regulator(grad.detach())
        query = contrastive_loss(learner, adapted, xq, tq, ctx.logit_scale)
        opt.zero_grad(set_to_none=True)
        query.backward()
        opt.step()
        history.append(float(query.item()))
    state = {"prompt_learner.ctx": theta.detach().cpu()}
    state |= {f"regulator.{k}": v.detach().cpu() for k, v in regulator.state_dict().items()}
    return {"state": state, "history": history}


@register
class GRAM(CoOp):
    name = "gram"
    paper = "Li et al., Gradient-Regulated Meta-Prompt Learning for Generalizable Vision-Language Models, ICCV 2023"
    description = "CoOp from a meta-learned context, its gradients passed through a meta-learned regulating function"
    Config = GRAMConfig
    prompt_learner: PromptLearner
    reads_meta_prompt = True
    batchable = True  # its loss draws no randomness; the regulator acts in the gradient hook, per run

    def __init__(self, config: GRAMConfig, ctx: MethodContext):
        super().__init__(config, ctx)
        if config.init not in INITS or config.regulator not in REGULATORS:
            raise MethodError(
                f"gram: init must be one of {INITS} and regulator one of {REGULATORS}, got {config.init!r}, "
                f"{config.regulator!r}"
            )
        self.initialised_from = "CoOp's initialisation"
        self.regulator: GradientRegulator | None = None
        state = ctx.meta_prompt
        if config.regulator == "meta":
            self.regulator = GradientRegulator(ctx.encoder.width, config.meta_hidden)
            if state is not None:
                self.regulator.load_state_dict(
                    {k.removeprefix("regulator."): v for k, v in state.items() if k.startswith("regulator.")}
                )
            self.regulator.requires_grad_(False)  # frozen: learned by the meta stage, never by a run
        if config.init == "meta" and state is not None:
            if state["prompt_learner.ctx"].shape != self.prompt_learner.ctx.shape:
                raise MethodError(
                    f"gram: the meta-learned context has shape {tuple(state['prompt_learner.ctx'].shape)}, this "
                    f"run's {tuple(self.prompt_learner.ctx.shape)} (n_ctx or csc changed?)"
                )
            with torch.no_grad():
                self.prompt_learner.ctx.copy_(state["prompt_learner.ctx"])
            self.initialised_from = state.get("source", "the meta-learned context given")

    @classmethod
    def needs_meta_stage(cls, config: GRAMConfig) -> bool:
        """Whether a run with ``config`` reads the meta stage (not with CoOp's init and the identity)."""
        return config.init == "meta" or config.regulator == "meta"

    @classmethod
    def meta_train(
        cls, ctx: MethodContext, config: GRAMConfig, image_features: torch.Tensor, captions: list[str], clusters
    ) -> dict:
        """The meta stage's procedure (:func:`meta_learn`), called by vlprompt.training.meta_prompt."""
        return meta_learn(ctx, config, image_features, captions, clusters)

    @classmethod
    def meta_settings(cls, config: GRAMConfig) -> dict:
        """The settings that define the meta stage (its artefact's key)."""
        return {k: getattr(config, k) for k in META_FIELDS}

    def adjust_gradients(self, image_features: torch.Tensor, labels: torch.Tensor) -> None:
        grad = self.prompt_learner.ctx.grad
        if self.regulator is not None and grad is not None:
            with torch.no_grad():
                self.prompt_learner.ctx.grad = self.regulator(grad)

    def run_info(self) -> dict:
        return {"initialised_from": self.initialised_from, "regulator": self.config.regulator}
