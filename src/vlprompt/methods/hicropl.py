"""HiCroPL: hierarchical cross-modal prompts, text → image in the lower blocks and image → text in the upper ones.

Zheng et al., "Hierarchical Cross-modal Prompt Learning for Vision-Language Models", ICCV 2025. Reference:
zzeoZheng/HiCroPL at 2c2b2f2 (``trainers/hicropl.py``: ``CrossModalPromptLearner``, ``AttentionPooling``,
``CrossPromptAttention``, ``CustomCLIP``; ``clip/model.py``: ``ResidualAttentionBlock_HiCroPL``; ``configs/trainers/
HiCroPL/vit_b16_c2_ep50_batch32_16ctx.yaml``; read, not copied).

Deep prompts of n tokens in the first J blocks of both towers, placed as IVLP's (:mod:`vlprompt.clip.deep_prompts`):
text T_0 = c (the prompt learner's context, from ``ctx_init`` when n <= its tokens), T_j ~ N(0, 0.02²), vision
P_j ~ N(0, 0.02²). With L the cross layer (1 <= L < J), before every forward:

    layer-specific knowledge proxies  π_j = LN₂(τ + MHA(LN₁(τ), LN₁(T_j), LN₁(T_j)))      j < L   (text side)
                                      ρ_j = LN₂(υ + MHA(LN₁(υ), LN₁(P'_j), LN₁(P'_j)))    j >= L  (vision side)
    knowledge mapper  M(Q; K) = q + FFN(LN₂(q)),  q = Q W_q + MHA(LN₁(Q W_q), LN₁(K W_k), LN₁(K W_v))
    text → image:     [P'_0 .. P'_{L-1}] = M_t→v([P_0 .. P_{L-1}]; [π_0 .. π_{L-1}])       (all L·n tokens at once)
    image → text:     [T'_L .. T'_{J-1}] = M_v→t([T_L .. T_{J-1}]; [ρ_L .. ρ_{J-1}])
    x̂ = normalize(normalize(f(x; P')) + x₀),   x₀ = normalize(f₀(x))           (f₀: the frozen CLIP)
    ŵ_c = normalize(normalize(g(prompt_c; T')) + d_c),  d_c = normalize(mean_k normalize(g₀(desc_{k,c})))
    logits = s · x̂ · ŵᵀ
    L = CE(logits, y) + λ · [(1 − mean_c cos(ŵ_c, d_c)) + (1 − mean_i cos(x̂_i, x₀_i))]

with FFN = Linear(D, 4D) → QuickGELU → Linear(4D, D), every attention 8-headed (``mapper_heads``), the residual mix
with the frozen features at training and test time (so the consistency terms compare the already mixed features,
as the reference does), and d_c the frozen CLIP's mean description embedding (the reference reads CoPrompt's
``gpt_file/<dataset>_prompt.json``, the description store's ``coprompt`` source; the pocket rule on the pocket world).
Preset (the shipped YAML, which wins over ``train.py``'s defaults): 16 tokens (so ``ctx_init`` is not used: random
context), depth 12, cross layer 6, λ 12, Adam lr 0.0025 with eps 1e-3 and weight decay 5e-4, batch 32, 50 epochs,
cosine with one constant warm-up epoch at 1e-5, random resized crop and flip. On a shallower tower the depth is capped
and the cross layer scaled with it (6 of 12 → 2 of 4 on the pocket CLIP), and the run records both.

**The reference's mapping (``mapping``; default ``"reference"``).** The official code writes the mapped prompts back
into the stored parameters with ``param.data.copy_(...)`` at every call of its prompt learner, in training and in
evaluation. Three things follow, all reproduced under ``mapping="reference"``:

* the write-back is outside autograd: the mappers, the proxy pooling and the proxy tokens get no gradient and keep
  their random initial values (they stay in the optimiser with no gradient, so Adam leaves them alone); the stored
  prompts are re-mapped from their current values at every forward, so each step and each evaluation batch applies
  the random maps once more (an evaluation is therefore not a pure function of the trained state: here the
  new-class evaluation continues from the state the base evaluation left, where the reference reloads the saved
  checkpoint for it);
* its J vision prompts are J Parameters made from one tensor, so they share one storage: every write and every
  optimiser update (one Adam state per alias) lands on the same values, and after the text → image write-back all J
  vision blocks carry P'_{L-1};
* the proxy tokens τ of the L text layers (and υ of the upper vision layers) alias one storage in the same way.

``mapping="autograd"`` is the method as the paper describes it: the mapped prompts P', T' are computed in the graph
from independent parameters at every forward, nothing is written back, and the mappers, poolings and (independent)
proxy tokens train. The default is the reference's because that code produced the published numbers (README:
base 85.89, new 77.99, HM 81.75 on the 11 datasets with ViT-B/16), and ``tests/test_hicropl.py`` checks it against
that code's own ``CustomCLIP`` and trainer on the tiny CLIP (features, logits, each loss term and one Adam step at
1e-5, the gradient within 5e-5 of its largest element, measured 2.6e-5 as λ = 12 and s = 100 amplify fp32 rounding;
the stored prompts after a forward; no gradient for the mapper). Other known differences:

* fp32 here; the reference casts the prompts (``.half()`` inside the blocks) and the description embeddings
  (``fixed_embeddings.half()``, also under fp32) to fp16, which only rounds.
* With n > 4 the reference ignores ``ctx_init`` and builds the prompt "X X … {class}."; here ``ctx_init``
  initialises the context whenever it has at least n tokens (IVLP's rule), which is the same for the default
  "a photo of a" (4 tokens).
* The mapper and pooling weights are drawn from the run's seed with PyTorch's default initialisations.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from vlprompt.clip import deep_prompts
from vlprompt.clip.backbone import encode_prompts
from vlprompt.data.descriptions import descriptions_for, source_record
from vlprompt.methods.base import MethodContext, MethodError, normalize, register
from vlprompt.methods.ivlp import IVLP
from vlprompt.methods.maple import MaPLeConfig

log = logging.getLogger(__name__)
MAPPINGS = ("reference", "autograd")


@dataclasses.dataclass(frozen=True)
class HiCroPLConfig(MaPLeConfig):
    epochs: int = 50
    batch_size: int = 32
    lr: float = 0.0025
    optimizer: str = "adam"
    adam_eps: float = 1e-3  # the shipped YAML's OPTIM.EPS
    n_ctx: int = 16  # tokens per prompted block, both towers
    depth: int = 12  # prompted blocks in both towers, capped at the shallower tower
    cross_layer: int = 6  # L: text -> image below it, image -> text from it on; scaled when the depth is capped
    distill_weight: float = 12.0  # λ (LAMBD)
    mapper_heads: int = 8  # heads of every pooling and mapper attention
    mapping: str = "reference"  # reference: the official write-back outside autograd | autograd (see the docstring)
    descriptions: str = "coprompt"  # the description store's source: CoPrompt's gpt_file (what the reference reads)


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class ProxyPooling(nn.Module):
    """A layer-specific knowledge proxy: one query token attends over the n prompts of a layer."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1, self.ln_2 = nn.LayerNorm(width), nn.LayerNorm(width)

    def forward(self, query: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:  # (1, d), (n, d) -> (1, d)
        kv = self.ln_1(prompts)
        return self.ln_2(query + self.attn(self.ln_1(query), kv, kv, need_weights=False)[0])


class KnowledgeMapper(nn.Module):
    """Cross-attention of one tower's prompts (queries) over the other tower's proxies, then an FFN; residual."""

    def __init__(self, width: int, source_width: int, heads: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.linear_q = nn.Linear(width, width)
        self.linear_k = nn.Linear(source_width, width)
        self.linear_v = nn.Linear(source_width, width)
        self.ln_1 = nn.LayerNorm(width)
        self.ffn = nn.Sequential(
            OrderedDict(
                [("c_fc", nn.Linear(width, 4 * width)), ("gelu", QuickGELU()), ("c_proj", nn.Linear(4 * width, width))]
            )
        )
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, prompts: torch.Tensor, proxies: torch.Tensor) -> torch.Tensor:  # (m, d), (k, d_src) -> (m, d)
        q = self.linear_q(prompts)
        k, v = self.ln_1(self.linear_k(proxies)), self.ln_1(self.linear_v(proxies))
        q = q + self.attn(self.ln_1(q), k, v, need_weights=False)[0]
        return q + self.ffn(self.ln_2(q))


def seeded_init(module: nn.Module, gen: torch.Generator) -> nn.Module:
    """PyTorch's default initialisation of every Linear and attention in ``module``, drawn from ``gen``."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.MultiheadAttention):
                nn.init.xavier_uniform_(m.in_proj_weight, generator=gen)
                nn.init.zeros_(m.in_proj_bias)
            if isinstance(m, nn.Linear):
                nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=gen)
                if m.bias is not None:
                    bound = 1 / math.sqrt(m.weight.shape[1])
                    nn.init.uniform_(m.bias, -bound, bound, generator=gen)
        for m in module.modules():
            if isinstance(m, nn.MultiheadAttention):
                nn.init.zeros_(m.out_proj.bias)
    return module


def tokens(n: int, count: int, width: int, std: float, gen: torch.Generator, shared: bool) -> nn.ParameterList:
    """``count`` (n, width) Parameters ~ N(0, std²): made from one tensor, sharing its storage (``shared``, the
    reference's construction), or independent."""
    if shared:
        one = torch.randn(n, width, generator=gen) * std
        return nn.ParameterList([nn.Parameter(one) for _ in range(count)])
    return nn.ParameterList([nn.Parameter(torch.randn(n, width, generator=gen) * std) for _ in range(count)])


def cross_layer_for(depth: int, capped: int, cross: int) -> int:
    """L for a depth capped from ``depth`` to ``capped`` blocks: scaled in proportion, kept within 1 .. capped - 1."""
    if capped == depth:
        return cross
    return max(1, min(capped - 1, round(cross * capped / depth)))


@register
class HiCroPL(IVLP):
    name = "hicropl"
    paper = "Zheng et al., Hierarchical Cross-modal Prompt Learning for Vision-Language Models, ICCV 2025"
    description = (
        "deep prompts in both towers mapped text→image in the lower blocks and image→text in the upper ones; "
        "features mixed with the frozen CLIP's and its description classifier"
    )
    Config = HiCroPLConfig
    description_features: torch.Tensor  # (C, D) d_c of the current classes (a buffer)
    vision_ctx: nn.ParameterList  # type: ignore[assignment]  # one Parameter per block (VPT-deep's: one stacked)

    def __init__(self, config: HiCroPLConfig, ctx: MethodContext):
        if config.mapping not in MAPPINGS:
            raise MethodError(f"hicropl: mapping must be one of {MAPPINGS}, got {config.mapping!r}")
        self.given_descriptions, self.description_dataset = ctx.descriptions, ctx.dataset
        super().__init__(config, ctx)
        self.description_source = source_record(ctx.descriptions, ctx.dataset, config.descriptions)

    def build_prompts(self, config: HiCroPLConfig, ctx: MethodContext, gen: torch.Generator) -> None:
        model = self.frozen.model
        depth = min(
            deep_prompts.cap_depth(config.depth, deep_prompts.text_layers(model), "text"),
            deep_prompts.cap_depth(config.depth, deep_prompts.vision_layers(model), "vision"),
        )
        self.cross_layer = cross_layer_for(config.depth, depth, config.cross_layer)
        if depth < 2 or config.n_ctx < 1 or not 1 <= self.cross_layer < depth:
            raise MethodError(
                f"hicropl needs n_ctx >= 1 and 1 <= cross_layer < depth (both towers); got n_ctx {config.n_ctx}, "
                f"cross_layer {self.cross_layer}, depth {depth}: choose depth >= 2 and a cross layer below it"
            )
        if self.cross_layer != config.cross_layer:
            log.info("hicropl: cross layer %d scaled to %d for depth %d", config.cross_layer, self.cross_layer, depth)
        d_t, d_v, heads = deep_prompts.text_width(model), deep_prompts.vision_width(model), config.mapper_heads
        if d_t % heads or d_v % heads:
            raise MethodError(f"hicropl: mapper_heads {heads} must divide both widths ({d_t}, {d_v})")
        self.make_text_prompts(config.n_ctx, depth, config.ctx_init, config.init_std, gen, ctx.classnames)
        self.depth, n, shared = depth, config.n_ctx, config.mapping == "reference"
        self.vision_ctx = tokens(n, depth, d_v, config.init_std, gen, shared)
        self.text_proxies = tokens(1, self.cross_layer, d_t, 1.0, gen, shared)  # torch.randn, as the reference
        self.vision_proxies = tokens(1, depth - self.cross_layer, d_v, 1.0, gen, shared)
        self.text_pooling = nn.ModuleList(ProxyPooling(d_t, heads) for _ in range(self.cross_layer))
        self.vision_pooling = nn.ModuleList(ProxyPooling(d_v, heads) for _ in range(depth - self.cross_layer))
        if shared:  # the reference deep-copies one pooling network per layer: identical initial weights
            for pooling in (self.text_pooling, self.vision_pooling):
                seeded_init(pooling[0], gen)
                for p in pooling[1:]:
                    p.load_state_dict(pooling[0].state_dict())
        else:
            seeded_init(self.text_pooling, gen)
            seeded_init(self.vision_pooling, gen)
        self.text_to_vision = seeded_init(KnowledgeMapper(d_v, d_t, heads), gen)
        self.vision_to_text = seeded_init(KnowledgeMapper(d_t, d_v, heads), gen)
        self.to(next(model.parameters()).device)

    def set_classes(self, classnames: list[str]) -> None:
        super().set_classes(classnames)
        given = descriptions_for(
            self.given_descriptions, self.description_dataset, classnames, self.config.descriptions
        )
        d = []
        for c in classnames:  # d_c: the mean of the normalised frozen embeddings of c's descriptions, normalised
            d.append(normalize(encode_prompts(self.frozen.backbone, given[c]).mean(0)))
        self.register_buffer("description_features", torch.stack(d), persistent=False)

    # -- the prompts --------------------------------------------------------------------------
    def map_prompts(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(T'_0 .. T'_{J-1}, P'_0 .. P'_{J-1}): the prompts of every block after both mappings. Under
        ``mapping="reference"`` the mapped prompts are written into the stored ones (no gradient through the maps)
        and the stored ones are returned, as the reference's prompt learner does at every call."""
        cross, reference = self.cross_layer, self.config.mapping == "reference"
        text, vision = self.text_prompts(), list(self.vision_ctx)
        n, d_v = vision[0].shape
        with torch.set_grad_enabled(torch.is_grad_enabled() and not reference):
            proxies = torch.cat(
                [pool(t, p) for pool, t, p in zip(self.text_pooling, self.text_proxies, text, strict=False)]
            )
            low = self.text_to_vision(torch.cat(vision[:cross]), proxies).view(cross, n, d_v)
            if reference:
                for j in range(cross):  # one storage: every vision prompt ends as low[cross - 1]
                    self.vision_ctx[j].copy_(low[j])
                vision = list(self.vision_ctx)
            else:
                vision = list(low.unbind(0)) + vision[cross:]
            upper = zip(self.vision_pooling, self.vision_proxies, vision[cross:], strict=True)
            proxies = torch.cat([pool(u, p) for pool, u, p in upper])
            high = self.vision_to_text(torch.cat(text[cross:]), proxies).view(self.depth - cross, n, -1)
            if reference:
                assert self.text_deep is not None  # depth >= 2 (checked above): the deep text prompts exist
                self.text_deep[cross - 1 :].copy_(high)  # text_deep[j - 1] holds T_j
            else:
                text = text[:cross] + list(high.unbind(0))
        return (self.text_prompts() if reference else text), vision  # the stored ones in the graph

    # -- the model ----------------------------------------------------------------------------
    def mixed_text(self, text: list[torch.Tensor]) -> torch.Tensor:
        """ŵ: the prompted class embeddings mixed with the description classifier."""
        pl = self.prompt_learner
        assert pl is not None  # build_prompts refuses depth < 2
        w = normalize(deep_prompts.encode_text(pl.encoder, pl.prompts(), pl.eot, text[1:]))
        return normalize(w + self.description_features)

    def mixed_image(self, images: torch.Tensor, vision: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(x̂, x₀): the prompted image features mixed with the frozen ones, and the frozen ones."""
        with torch.no_grad():
            frozen = normalize(self.frozen.model.encode_image(images))
        x = normalize(deep_prompts.encode_image(self.frozen.model, images, vision))
        return normalize(x + frozen), frozen

    def text_features(self) -> torch.Tensor:
        return self.mixed_text(self.map_prompts()[0])

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.mixed_image(images, self.map_prompts()[1])[0]

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # one mapping per forward, as the reference
        text, vision = self.map_prompts()
        return self.logit_scale * self.mixed_image(images, vision)[0] @ self.mixed_text(text).T

    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict]:
        text, vision = self.map_prompts()
        x, frozen = self.mixed_image(images, vision)
        w = self.mixed_text(text)
        ce = F.cross_entropy(self.logit_scale * x @ w.T, labels)
        text_term = 1.0 - F.cosine_similarity(w, self.description_features, dim=1, eps=1e-7).mean()
        image_term = 1.0 - F.cosine_similarity(x, frozen, dim=1, eps=1e-7).mean()
        loss = ce + self.config.distill_weight * (text_term + image_term)
        return loss, {"ce": ce.item(), "text": text_term.item(), "image": image_term.item()}

    def run_info(self) -> dict:
        return {
            "descriptions": self.description_source,
            "depth": self.depth,
            "cross_layer": self.cross_layer,
            "mapping": self.config.mapping,
        }
