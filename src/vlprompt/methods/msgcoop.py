"""MSGCoOp: multiple semantic-guided context optimisation (Wang et al., "MSGCoOp: Multiple Semantic-Guided Context
Optimization for Few-Shot Learning", arXiv 2507.21786). KgCoOp with N parallel contexts, anchored to class
descriptions instead of the hand-crafted prompt, plus a diversity term.

Reference implementation read (not copied): Rain-Bus/MSGCoOp, MSGCoOp/trainers/msgcoop.py (``PromptLearner``,
``CustomCLIP.compute_diversity_loss``, ``forward``, ``MSGCoOp.forward_backward``), MSGCoOp/scripts/
base2new_train.sh and MSGCoOp/README.md (``base2new_all.sh MSGCoOp 8.0 1.0``: N = 4 contexts of 4 tokens from
"a photo of a", semantic weight 8.0, diversity weight 1.0), configs/trainers/MSGCoOp/vit_b16_ep100_ctxv1.yaml
(batch 128, 100 epochs, SGD lr 0.002, cosine, 1 constant warm-up epoch).

N contexts v^1 … v^N, each CoOp's shared context; w^i_c = g(t^i_c) (unnormalised) and ŵ^i_c its normalisation.
The anchor of class c averages its M descriptions d_{c,m} (the description store, CuPL's format):

    a_c = (1/M) Σ_m normalize(E_text("a photo of {class_c}, {d_{c,m}}"))
    logits(x) = (1/N) Σ_i s · x̂ · Ŵ^iᵀ
    L_sg  = 1 − (1/C) Σ_c cos((1/N) Σ_i w^i_c, a_c)                     (the mean of the unnormalised features)
    L_div = (1/C) Σ_c mean_{i<j} cos(w^i_c, w^j_c)²                      (0 when N = 1)
    L = CE(logits(x), y) + λ_sg L_sg + λ_div L_div,    λ_sg = 8, λ_div = 1

Only the contexts train (the reference builds a meta-net, an adapter and a bias vector that never train and are
never used).

A property of the reference worth knowing: it initialises all N contexts to the same words. That point is
stationary for this loss (identical contexts get identical gradients from CE and L_sg, and cos² has zero gradient
at cos = 1) but unstable (cos² is at its maximum there), so only round-off (gradient differences of about 1e-8 in
float32 on the pocket CLIP) starts the contexts apart; they do separate over training (max difference 0.13 after
100 epochs on pocket_dark), at a pace set by floating-point details rather than by the method. ``init_noise``
(0 = the reference) adds N(0, σ²) to each context at initialisation to break the symmetry explicitly.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from vlprompt.clip.backbone import encode_prompts
from vlprompt.clip.prompting import PromptLearner, prompt_name
from vlprompt.data.descriptions import descriptions_for
from vlprompt.methods.base import MethodContext, normalize, register
from vlprompt.methods.kgcoop import KgCoOp, KgCoOpConfig, knowledge_loss


@dataclasses.dataclass(frozen=True)
class MSGCoOpConfig(KgCoOpConfig):
    n_prompts: int = 4  # N parallel contexts
    diversity_weight: float = 1.0  # λ_div
    kg_weight: float = 8.0  # λ_sg, weight of the semantic guidance (KgCoOp's term with description anchors)
    anchor_format: str = "a photo of {}, {}"  # class name, description (the reference's)
    init_noise: float = 0.0  # σ of noise added to each context at init (0: identical contexts, the reference)


def diversity_loss(features: torch.Tensor) -> torch.Tensor:
    """mean over classes of the mean over prompt pairs i < j of cos(f_i, f_j)²; features (N, C, D)."""
    n = features.shape[0]
    if n < 2:
        return features.new_zeros(())
    f = F.normalize(features.float(), dim=-1)
    sim = torch.einsum("icd,jcd->cij", f, f)  # (C, N, N)
    i, j = torch.triu_indices(n, n, offset=1)
    return sim[:, i, j].pow(2).mean()


@register
class MSGCoOp(KgCoOp):
    name = "msgcoop"
    paper = (
        "Wang et al., MSGCoOp: Multiple Semantic-Guided Context Optimization for Few-Shot Learning, arXiv 2507.21786"
    )
    description = "N parallel CoOp contexts, anchored to class descriptions (KgCoOp's term), with a diversity term"
    Config = MSGCoOpConfig
    prompt_learner: PromptLearner  # CoOp's, whose context this method reads

    def __init__(self, config: MSGCoOpConfig, ctx: MethodContext):
        if config.csc or config.class_token_position != "end" or config.n_prompts < 1:
            raise ValueError("msgcoop: n_prompts >= 1 shared contexts with the class at the end (as the reference)")
        self.descriptions = ctx.descriptions
        self.dataset = ctx.dataset
        super().__init__(config, ctx)
        pl = self.prompt_learner
        ctxs = pl.ctx.detach().unsqueeze(0).repeat(config.n_prompts, 1, 1)  # (N, M, d)
        if config.init_noise > 0:
            gen = torch.Generator().manual_seed(ctx.seed)
            ctxs = ctxs + config.init_noise * torch.randn(ctxs.shape, generator=gen).to(ctxs)
        pl.ctx = nn.Parameter(ctxs)

    def set_anchors(self, classnames: list[str]) -> None:
        """a_c from the class descriptions; at evaluation (other classes) the anchors are not needed."""
        if hasattr(self, "anchors") and list(classnames) != getattr(self, "anchor_classes", None):
            self.register_buffer("anchors", None, persistent=False)
            return
        descs = descriptions_for(self.descriptions, self.dataset, classnames)
        rows = []
        for c in classnames:
            feats = encode_prompts(
                self.backbone, [self.config.anchor_format.format(prompt_name(c), d) for d in descs[c]]
            )
            rows.append(feats.mean(0))
        self.anchor_classes = list(classnames)
        self.register_buffer("anchors", torch.stack(rows), persistent=False)  # (C, D)

    def prompt_features(self) -> torch.Tensor:
        """(N, C, D) unnormalised text features of the N prompts, in one pass of the text encoder."""
        pl = self.prompt_learner
        n = pl.ctx.shape[0]
        prompts = torch.cat([pl.prompts(c) for c in pl.ctx])  # (N·C, L, d)
        return pl.encoder(prompts, pl.eot.repeat(n)).view(n, len(pl.eot), -1)

    def text_features(self) -> torch.Tensor:
        """(C, D) the mean of the N normalised classifiers: s · x̂ · thisᵀ is the mean of the N prompts' logits."""
        return normalize(self.prompt_features()).mean(0)

    def loss(self, image_features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict]:
        if self.anchors is None:
            raise RuntimeError("msgcoop: loss() on classes without anchors (set_classes to the training classes)")
        feats = self.prompt_features()  # (N, C, D)
        ce = F.cross_entropy(self.logit_scale * normalize(image_features) @ normalize(feats).mean(0).T, labels)
        sg = knowledge_loss(feats.mean(0), self.anchors)
        div = diversity_loss(feats)
        c = self.config
        return ce + c.kg_weight * sg + c.diversity_weight * div, {"ce": ce.item(), "sg": sg.item(), "div": div.item()}
