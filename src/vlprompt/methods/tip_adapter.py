"""Tip-Adapter and Tip-Adapter-F (Zhang et al., "Tip-Adapter: Training-free Adaption of CLIP for Few-shot
Classification", ECCV 2022, arXiv 2207.09519).

Reference implementation read (not copied): gaopengcuhk/Tip-Adapter, main.py, main_imagenet.py and utils.py
(``build_cache_model``, ``search_hp``, ``run_tip_adapter``, ``run_tip_adapter_F``), configs/*.yaml,
datasets/*.py (templates).

Cache model: keys K (N, D) = normalize(mean over ``cache_views`` augmented views of f(x_n)) — the reference
averages 10 augmented passes (``augment_epoch``) over the few-shot set, random resized crop with scale
(0.5, 1) and flip, before normalising; values V (N, C) = one_hot(y_n). The views here are the feature
bank's cached training views (the first ``cache_views``), made with the experiment's
``features.crop_scale_min``: when that is not the reference's 0.5 (CoOp's 0.08 is the real configs'
default), or the bank holds fewer views, the run records the deviation in ``method_info``.
With f̂ = normalize(f(x)) and the zero-shot classifier W (C, D) of Tip-Adapter's templates (``template=
"tip_adapter"``: CoOp's hand-crafted template per dataset, and on ImageNet the ensemble of the 7 templates
CLIP's notebook selected; data/method_templates.json):

    A = f̂ · Kᵀ                                  (N affinities, cosine similarities)
    logits(x) = s · f̂ · Wᵀ + α · exp(−β (1 − A)) · V

α (residual ratio) and β (sharpness) are searched over the reference's grid β_i = 0.1 + i (β_max − 0.1) / n_β,
α_j = 0.1 + j (α_max − 0.1) / n_α (i < n_β = 200, j < n_α = 20; the first best in row-major order wins, as
``search_hp`` does), on the whole validation split as the reference (``search_split="val"``; when the feature
bank does not hold it, on the run's few-shot validation subset, recorded), or on the test split
(``search_split="test"``: the reference on ImageNet, main_imagenet.py, whose validation set is its test set;
the run's ``method_info.tuned_on_test`` flags it for the report). The reference sets (β_max, α_max),
``init_alpha`` and Tip-Adapter-F's epochs per dataset (configs/*.yaml); the presets are ImageNet's and the
experiment configs set the others per dataset (``method_overrides.<method>.by_dataset``).

Tip-Adapter-F makes K a parameter initialised from the cache and trains it with CE on the logits above,
α, β fixed at their initial values (``init_alpha``, ``init_beta``), AdamW lr 1e-3 with eps 1e-4, cosine to
zero stepped per iteration (CosineAnnealingLR over epochs × iterations), 20 epochs, batch 256 with the last
batch of an epoch smaller (drop_last False), each batch a fresh augmented view (here: a random cached view);
K is not renormalised. After training α, β are searched again with the trained keys (``after_training``).
Deviation: the reference keeps the epoch with the best *test* accuracy; we keep the last epoch.

New classes: the cache holds entries of training classes only, so the cache logits of a class without
entries are zero and its logits reduce to zero-shot CLIP's. ``set_classes`` keeps the value columns of
trained classes that reappear and zero columns for unseen ones; on a disjoint set of new classes the
method is exactly zero-shot CLIP with the same template.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from vlprompt.clip.prompting import text_classifier
from vlprompt.methods.base import Method, MethodContext, MethodError, TrainConfig, normalize, register

SEARCH_SPLITS = ("val", "test")


@dataclasses.dataclass(frozen=True)
class TipAdapterConfig:
    template: str | None = "tip_adapter"  # zero-shot classifier: Tip-Adapter's templates; None: CoOp's
    init_alpha: float = 1.17  # the reference's ImageNet value; used when there is no validation set
    init_beta: float = 1.0
    search: bool = True  # search alpha, beta (on search_split)
    search_split: str = "val"  # val: the whole validation split (few-shot subset without it) | test
    beta_max: float = 7.0  # reference search_scale[0] (ImageNet's; per dataset in the reference configs)
    alpha_max: float = 3.0  # reference search_scale[1]
    beta_steps: int = 200
    alpha_steps: int = 20
    cache_views: int = 10  # augmented views averaged into each key (the reference's augment_epoch)
    # the reference hard-codes CLIP's logit scale as 100 (main.py, utils.py: `100. * features @ clip_weights`);
    # None: the model's exp(logit_scale) (100.03 for OpenAI's fp16-stored ln 100)
    logit_scale: float | None = 100.0


def cache_logits(f_hat: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, beta: float) -> torch.Tensor:
    """exp(−β(1 − f̂·Kᵀ))·V: (B, D), (N, D), (N, C) -> (B, C)."""
    affinity = f_hat @ keys.T  # (B, N)
    return torch.exp(-beta * (1 - affinity)) @ values


def search_grid(cfg) -> tuple[list[float], list[float]]:
    betas = [0.1 + i * (cfg.beta_max - 0.1) / cfg.beta_steps for i in range(cfg.beta_steps)]
    alphas = [0.1 + j * (cfg.alpha_max - 0.1) / cfg.alpha_steps for j in range(cfg.alpha_steps)]
    return betas, alphas


@register
class TipAdapter(Method):
    name = "tip_adapter"
    family = "adapter"
    paper = "Zhang et al., Tip-Adapter: Training-free Adaption of CLIP for Few-shot Classification, ECCV 2022"
    description = "training-free key-value cache of the few-shot features added to zero-shot logits"
    Config = TipAdapterConfig
    train_keys = False
    cache_crop_scale_min = 0.5  # the reference's random resized crop scale for the cache (and training) views

    cache_values: torch.Tensor  # the cache's one-hot labels
    weights: torch.Tensor  # (C, D) normalised text features of the current classes
    class_map: torch.Tensor  # the cache's columns for the current classes

    def __init__(self, config, ctx: MethodContext):
        super().__init__(config, ctx)
        if config.search_split not in SEARCH_SPLITS:
            raise MethodError(f"{self.name}: search_split must be one of {SEARCH_SPLITS}, got {config.search_split!r}")
        self.backbone = ctx.backbone
        self.templates = ctx.templates(config.template)
        self.trained_classes = list(ctx.classnames)
        self.alpha, self.beta = config.init_alpha, config.init_beta
        if config.logit_scale is not None:
            self.logit_scale = config.logit_scale
        self.info: dict = {"deviations": []}
        if ctx.train_features is not None and ctx.train_labels is not None:  # (V, N, D) -> keys (N, D), values (N, C)
            keys = normalize(ctx.train_features[: config.cache_views].float().mean(dim=0))
            values = F.one_hot(ctx.train_labels.long(), len(ctx.classnames)).float()
            self.check_views(ctx)
        else:  # shapes come from the saved state (load_trainable_state)
            keys = torch.zeros(0, ctx.backbone.embed_dim)
            values = torch.zeros(0, len(ctx.classnames))
        self.cache_keys = nn.Parameter(keys.to(ctx.device), requires_grad=self.train_keys)
        self.register_buffer("cache_values", values.to(ctx.device))
        self.set_classes(ctx.classnames)

    def check_views(self, ctx: MethodContext) -> None:
        """Record where the cached views differ from the reference's (crop scale, number of views)."""
        views, scale = ctx.training_data()[0].shape[0], ctx.train_crop_scale_min
        self.info.update(cache_views=min(views, self.config.cache_views), views_crop_scale_min=scale)
        if views < self.config.cache_views:
            self.info["deviations"].append(
                f"cache keys average {views} views, not {self.config.cache_views}: "
                "the feature bank holds fewer (features.train_views)"
            )
        if scale is not None and scale != self.cache_crop_scale_min:
            self.info["deviations"].append(
                f"views cropped with scale ({scale}, 1), the reference's is "
                f"({self.cache_crop_scale_min}, 1) (features.crop_scale_min)"
            )

    def set_classes(self, classnames: list[str]) -> None:
        self.register_buffer("weights", text_classifier(self.backbone, self.templates, classnames), persistent=False)
        cols = torch.zeros(len(self.trained_classes), len(classnames))  # trained class -> current class
        for j, c in enumerate(classnames):
            if c in self.trained_classes:
                cols[self.trained_classes.index(c), j] = 1
        self.register_buffer("class_map", cols.to(self.weights.device), persistent=False)

    def logits(self, image_features: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
        f_hat = normalize(image_features)
        values = self.cache_values @ self.class_map  # (N, C_current): zero columns for unseen classes
        return self.logit_scale * f_hat @ self.weights.T + alpha * cache_logits(f_hat, self.cache_keys, values, beta)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        return self.logits(image_features, self.alpha, self.beta)

    def search_set(self, ctx: MethodContext) -> tuple[torch.Tensor, torch.Tensor, str] | None:
        """(features, labels, name) of the split alpha, beta are searched on (``search_split``): the test split,
        or the whole validation split, falling back to the run's few-shot validation subset."""
        if self.config.search_split == "test":
            got = ctx.split("test")
            if got is not None:
                return (*got, "test")
            self.info["deviations"].append("no test features in the context: searched on the few-shot val subset")
        else:
            got = ctx.split("val_full")
            if got is not None:
                return (*got, "val")
            self.info["deviations"].append(
                "searched on the few-shot validation subset: the feature bank does not hold the whole validation split"
            )
        if ctx.val_features is None or ctx.val_labels is None or len(ctx.val_features) == 0:
            return None
        return ctx.val_features, ctx.val_labels, "val (few-shot subset)"

    @torch.no_grad()
    def search_alpha_beta(self, ctx: MethodContext) -> None:
        """The reference's grid search (first best wins) on ``search_split``."""
        found = self.search_set(ctx) if self.config.search else None
        if found is None:
            return
        f, y, name = found
        self.info.update(searched_on=name, tuned_on_test=name == "test", search_images=len(y))
        f, y = f.to(self.weights.device), y.to(self.weights.device)
        f_hat = normalize(f)
        clip_logits = self.logit_scale * f_hat @ self.weights.T
        affinity = f_hat @ self.cache_keys.T
        values = self.cache_values @ self.class_map
        best = -1.0
        betas, alphas = search_grid(self.config)
        for beta in betas:
            cache = torch.exp(-beta * (1 - affinity)) @ values
            for alpha in alphas:
                acc = ((clip_logits + alpha * cache).argmax(-1) == y).float().mean().item()
                if acc > best:
                    best, self.alpha, self.beta = acc, alpha, beta
        self.info["search_acc"] = round(100 * best, 4)

    def run_info(self) -> dict:
        return {**self.info, "alpha": self.alpha, "beta": self.beta}

    def fit(self, ctx: MethodContext) -> bool:
        self.search_alpha_beta(ctx)
        return True

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The cache (keys, values) and the chosen alpha, beta: all a trained artefact needs."""
        return {
            "cache_keys": self.cache_keys.detach().cpu(),
            "cache_values": self.cache_values.detach().cpu(),
            "alpha": torch.tensor(self.alpha),
            "beta": torch.tensor(self.beta),
        }

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(self.trainable_state()) - set(state)
        if missing:
            raise MethodError(f"checkpoint lacks {sorted(missing)} for method {self.name!r}")
        device = self.weights.device
        keys = state["cache_keys"].to(device)
        with torch.no_grad():
            if keys.shape == self.cache_keys.shape:  # in place: an optimizer holding the keys stays valid (resume)
                self.cache_keys.copy_(keys)
            else:
                self.cache_keys = nn.Parameter(keys, requires_grad=self.train_keys)
        self.cache_values = state["cache_values"].to(device)
        self.alpha, self.beta = float(state["alpha"]), float(state["beta"])


@dataclasses.dataclass(frozen=True)
class TipAdapterFConfig(TrainConfig, TipAdapterConfig):
    epochs: int = 20
    batch_size: int = 256
    lr: float = 0.001
    optimizer: str = "adamw"
    adam_eps: float = 1e-4  # the reference's AdamW(..., eps=1e-4)
    weight_decay: float = 0.01  # torch's AdamW default, which the reference uses
    warmup_epochs: int = 0  # the reference anneals from the first step (CosineAnnealingLR, no warm-up)
    lr_schedule: str = "step"  # CosineAnnealingLR(T_max = epochs × iterations), stepped every iteration
    drop_last: bool = False  # the reference's DataLoader keeps the last, smaller batch


@register
class TipAdapterF(TipAdapter):
    name = "tip_adapter_f"
    description = "Tip-Adapter with the cache keys fine-tuned (AdamW, 20 epochs), alpha/beta searched after"
    Config = TipAdapterFConfig
    train_keys = True

    def fit(self, ctx: MethodContext) -> bool:
        return False  # the shared loop trains the keys; after_training searches alpha, beta

    def loss(self, image_features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict]:
        loss = F.cross_entropy(self.logits(image_features, self.config.init_alpha, self.config.init_beta), labels)
        return loss, {"ce": loss.item()}

    def after_training(self, ctx: MethodContext) -> None:
        self.search_alpha_beta(ctx)
