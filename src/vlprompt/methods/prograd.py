"""ProGrad: Prompt-aligned Gradient (Zhu et al., "Prompt-aligned Gradient for Prompt Tuning", ICCV 2023,
arXiv 2205.14865). CoOp whose update never conflicts with the zero-shot prediction.

Reference implementation read (not copied): BeierZhu/Prompt-align, ProGrad.public/trainers/prograd.py
(``ProGradLoss``, ``PromptLearner``), Dassl.ProGrad.pytorch/dassl/engine/trainer.py
(``prograd_backward_and_update``), configs/trainers/ProGrad/*.yaml, scripts and README (16 tokens, class at
the end, batch 32, SGD lr 0.002, cosine, 1 constant warm-up epoch; λ = 1, 0.8 for 8/16 shots on Flowers, DTD,
EuroSAT; T = 1; few-shot epochs 50/100/100/200/200 for 1/2/4/8/16 shots, base-to-new 100 (ImageNet 50): set
per shots and dataset in the experiment's config; RN50 only in the repository).

Templates: ProGrad's own table (``teacher_template="prograd"``: the reference's ``CUSTOM_TEMPLATES``, in
data/method_templates.json), which differs from CoOp's ("a type of pet, a photo of a {}." for OxfordPets,
"a texture of {}." for DTD, ...), for the teacher and the context initialisation.

Teacher: zero-shot CLIP with that template, z^zs = s · x̂ · W_clipᵀ (frozen).
Student: CoOp's logits z = s · x̂ · Wᵀ. Losses (the reference's ``ProGradLoss``, a cross-entropy against the
teacher's soft labels, whose gradient equals the KL divergence's):

    L_ce = CE(z, y)
    L_kl = −T² · (1/B) Σ_i Σ_c softmax(z^zs_i / T)_c · log softmax(z_i / T)_c
    g_ce = ∇_v L_ce,   g_kl = ∇_v L_kl          (per trained parameter tensor v, flattened)
    g = g_ce                                     if g_ce · g_kl ≥ 0
    g = g_ce − λ · (g_ce · g_kl / |g_kl|²) · g_kl  otherwise

and the optimiser steps with g. The reference does *not* mix the two losses: L_kl only supplies the
direction g_kl and the update is the (projected) CE gradient; the logged loss is L_ce.

Context init as the reference (``ctx_init="template"``): the template without its " {}." gives the words
(e.g. "a type of pet, a photo of a"); with w of them (split at spaces), the context is n_ctx − w zeros then the
embeddings of the words' first w tokens, and any further tokens of the words stay fixed text before the class
name (the reference tokenizes "X … X <words> <class>." and replaces its first n_ctx tokens: for OxfordPets the
comma makes 9 tokens of 8 words, so the last "a" stays fixed). ``ctx_init=None`` is random N(0, 0.02²).

Implementation: ``loss`` returns L_ce and keeps g_kl (``torch.autograd.grad`` with the graph retained, the
same two backward passes as the reference); the shared loop calls ``adjust_gradients`` after the backward
of L_ce (and after unscaling under fp16), which applies the projection to ``.grad``.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from vlprompt.clip.prompting import PLACEHOLDER, PromptLearner, prompt_name, text_classifier
from vlprompt.methods.base import MethodContext, normalize, register
from vlprompt.methods.coop import CoOp, CoOpConfig


@dataclasses.dataclass(frozen=True)
class ProGradConfig(CoOpConfig):
    n_ctx: int = 16
    ctx_init: str | None = "template"  # "template": the teacher template's words before " {}."; a phrase; None
    prograd_lambda: float = 1.0  # λ
    kd_temperature: float = 1.0  # T
    teacher_template: str | None = "prograd"  # ProGrad's table (method_templates.json), a template; None: CoOp's


def project_conflicting(g: torch.Tensor, g_ref: torch.Tensor, lam: float = 1.0) -> torch.Tensor:
    """g if g·g_ref ≥ 0, else g − λ (g·g_ref / |g_ref|²) g_ref (any shape, flattened for the products)."""
    dot = torch.dot(g.flatten().float(), g_ref.flatten().float())
    if dot >= 0:
        return g
    return g - (lam * dot / g_ref.float().pow(2).sum()).to(g.dtype) * g_ref.to(g.dtype)


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """−T² · mean_i Σ_c softmax(teacher/T) · log_softmax(student/T)."""
    t = temperature
    return -(F.softmax(teacher.float() / t, -1) * F.log_softmax(student.float() / t, -1)).sum(-1).mean() * t * t


def init_words(ctx_init: str | None, template: str) -> str | None:
    """The context words: with ``"template"``, the template's text before a final "{}." (the reference's
    ``template.replace(" {}.", "")``; "a photo of a" when the class is not at the end); else ``ctx_init``."""
    if ctx_init != "template":
        return ctx_init
    head, _, tail = template.partition("{}")
    return head.strip() if head.strip() and tail.strip() in (".", "") else "a photo of a"


@register
class ProGrad(CoOp):
    name = "prograd"
    paper = "Zhu et al., Prompt-aligned Gradient for Prompt Tuning, ICCV 2023"
    description = "CoOp whose CE gradient loses its component against the zero-shot (KL) gradient on conflict"
    Config = ProGradConfig
    batchable = True  # its loss draws no randomness: seeds train together (vlprompt.training.batched)
    prompt_learner: PromptLearner  # CoOp's, whose context this method reads
    teacher_weights: torch.Tensor  # (C, D) the zero-shot teacher's normalised text features

    def __init__(self, config: ProGradConfig, ctx: MethodContext):
        super().__init__(dataclasses.replace(config, ctx_init=None), ctx)  # random init, replaced below
        self.config = config
        self.backbone, self.teacher_templates = ctx.backbone, ctx.templates(config.teacher_template)
        words = init_words(config.ctx_init, self.teacher_templates[0])
        if words:
            self.init_context(ctx, prompt_name(words))
        self.set_teacher(ctx.classnames)
        self._g_kl: list[torch.Tensor] | None = None

    def init_context(self, ctx: MethodContext, words: str) -> None:
        """The reference's initialisation from ``words`` (w of them): n_ctx − w zeros, then the embeddings of
        the words' first w tokens; the prompt text is "X … X <words>", its first n_ctx tokens the context."""
        pl = self.prompt_learner
        w = len(words.split(" "))
        if w > pl.n_ctx:
            raise ValueError(f"prograd: ctx_init {words!r} has {w} words, more than n_ctx={pl.n_ctx}")
        tokens = ctx.backbone.tokenizer([words]).to(pl.ctx.device)
        with torch.no_grad():
            emb = pl.encoder.embed(tokens)[0, 1 : 1 + w].float()  # (w, width)
            pl.ctx.zero_()
            pl.ctx[..., pl.n_ctx - w :, :] = emb
        pl.placeholder = " ".join([PLACEHOLDER] * (pl.n_ctx - w) + [words])
        pl.set_classes(pl.classnames)

    def set_classes(self, classnames: list[str]) -> None:
        super().set_classes(classnames)
        if hasattr(self, "teacher_templates"):
            self.set_teacher(classnames)

    def set_teacher(self, classnames: list[str]) -> None:
        weights = text_classifier(self.backbone, self.teacher_templates, classnames)
        self.register_buffer("teacher_weights", weights, persistent=False)

    def loss(self, image_features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict]:
        x_hat = normalize(image_features)
        logits = self.logit_scale * x_hat @ self.text_features().T
        with torch.no_grad():
            teacher = self.logit_scale * x_hat @ self.teacher_weights.T
        ce = F.cross_entropy(logits.float(), labels)
        kl = distillation_loss(logits, teacher, self.config.kd_temperature)
        params = [p for p in self.parameters() if p.requires_grad]
        self._g_kl = list(torch.autograd.grad(kl, params, retain_graph=True))
        return ce, {"ce": ce.item(), "kl": kl.item()}

    def adjust_gradients(self, image_features: torch.Tensor, labels: torch.Tensor) -> None:
        params = [p for p in self.parameters() if p.requires_grad]
        assert self._g_kl is not None and len(self._g_kl) == len(params), "adjust_gradients before loss"
        for p, g_kl in zip(params, self._g_kl, strict=True):
            if p.grad is not None:
                p.grad = project_conflicting(p.grad, g_kl, self.config.prograd_lambda)
        self._g_kl = None
