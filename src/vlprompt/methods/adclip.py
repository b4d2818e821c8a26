"""AD-CLIP: domain-adaptive prompts from the image tower's layer statistics (Singha et al., "AD-CLIP: Adapting
Domains in Prompt Space Using CLIP", ICCV 2023 workshops), for unsupervised domain adaptation.

Reference read (not copied): mainaksingha01/AD-CLIP at c82d861, ``trainers/adclip_vitB16.py`` (``PromptLearner``,
``CustomCLIP.forward``, ``entropy_loss``, ``ADCLIPB16.forward_backward``), ``clip/model.py`` (``Transformer.forward``
returns every block's tokens) and ``configs/trainer/vitB16.yaml``. The projectors and loss terms are
:mod:`vlprompt.methods.adclip_parts` (their equations and quirks are there).

Per image, block l of the frozen ViT (L blocks, width W) gives the mean μ_l and std σ_l of its tokens. A step pairs
source image i (labelled) with target image i (unlabelled, the target's training split) and builds each image's
prompts for every class c as

    [SOS] [d_1(s_i) … d_L(s_i)] [d_1(t_i) … d_L(t_i)] [m(x) × n_img] [CLASS_c] [.] [EOS]

with d the domain tokens of the source and the target image, m the image tokens of the image x itself (s_i for
the source prompts, t_i for the target's): B × C prompts through the text encoder, twice per step. With the
source logits z, the target probabilities p = softmax(s · t̂_i · ŵ(t_i)) and the text features of both sets of
prompts, the loss is CE(z, y) + 0.1 · MSE(d(s), style(s)) + 0.01 · H(p) + KL (``adclip_parts.loss_terms``). The
projectors train (Adam, lr 0.01, 50 epochs, 16 + 16 images per step in the reference); the encoders stay frozen.

**Layer statistics, cached.** The method declares ``reads_layer_statistics``: every feature row it sees (training
views, validation images, the target's unlabelled and test images) is the feature bank's row followed by its image's
(and view's) statistics from the layer-statistics bank (:mod:`vlprompt.clip.layer_statistics`, rules
``layer_statistics`` and ``layer_statistics_fewshot``), so the image encoder never runs in the loop. What it costs
and saves (``benchmarks/layer_statistics_cost.py``, docs/domain_adaptation.md): 2·L·W fp16 values per view (2 KiB on
the pocket CLIP, 36 KiB at ViT-B/16) and one more encoder pass over the feature bank's views and the target's
images; the reference encodes 2 × 16 images at every step instead. The price is the feature bank's: a fixed set
of V augmented views per source image, and target images un-augmented (the reference augments them too).

Deviations and choices, each stated:

- **Test time (a choice; the reference cannot test).** Its ``test()`` calls the two-image ``forward`` with one
  argument. Here an image x to classify (a target test image, or a source validation image) gets the prompts
  [d(s̄), d(x), m(x)], where d(s̄) are the domain tokens of the mean statistics of the source's training views (the
  domain projector is affine, so this equals the mean of the source images' domain tokens).
- **Target batches.** The reference iterates a target loader beside the source's; here each step draws as many
  target images as its source batch holds, uniformly without replacement, from a generator seeded by the run's
  seed (resuming from a checkpoint restarts that generator: a resumed run's target batches differ).
- **Schedule.** The reference warms up linearly from 1e-5 for one epoch; the shared loop's warm-up is constant
  (Dassl's ConstantWarmupScheduler) at 1e-5 for one epoch, then the same cosine.
- **Precision.** The reference runs under amp (fp16 on a GPU); here fp32. The statistics are stored in fp16.
- **Context length.** 2L + n_img context tokens: 28 at ViT-B/16 (the reference's 24 + 4), 12 on the 4-block pocket
  CLIP, whose 20-token text context would not hold 28.
- **Quirks reproduced** (docs/domain_adaptation.md lists them): the n_img image tokens are one token repeated; the
  style mapper pools adjacent values of [μ, σ]; the entropy normalises p over the batch (``entropy_over_batch``:
  False gives the usual entropy of each image's p, an assumption of what was meant); the KL runs over the class
  axis of the text features (``kl_over_classes``: False takes it over the embedding axis of each class's feature,
  likewise an assumption).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from vlprompt.clip.layer_statistics import image_blocks, split_row
from vlprompt.clip.prompting import PromptLearner
from vlprompt.methods import adclip_parts as parts
from vlprompt.methods.base import Method, MethodContext, MethodError, TrainConfig, normalize, register


@dataclasses.dataclass(frozen=True)
class ADCLIPConfig(TrainConfig):
    epochs: int = 50
    batch_size: int = 16  # source images per step; as many target images (the reference's 16 + 16)
    lr: float = 0.01
    optimizer: str = "adam"
    weight_decay: float = 5e-4  # Dassl's default, which the reference's config keeps
    warmup_epochs: int = 1
    warmup_lr: float = 1e-5
    n_image_tokens: int = 4  # the reference's n_imgctx
    smn_weight: float = 0.1  # MSE of the domain tokens to the style-mapping tokens
    entropy_weight: float = 0.01  # entropy of the target probabilities
    kl_weight: float = 1.0  # KL between the target's and the source's text features
    entropy_over_batch: bool = True  # the reference's quirk: p L2-normalised over the batch (dim 0)
    kl_over_classes: bool = True  # the reference's quirk: softmax over the class axis of the text features
    max_prompts_per_pass: int = 4096  # images × classes encoded at once (memory bound, not a hyperparameter)


@register
class ADCLIP(Method):
    name = "adclip"
    family = "text prompt"
    paper = "Singha et al., AD-CLIP: Adapting Domains in Prompt Space Using CLIP, ICCV 2023 workshops"
    description = "per-image prompts from domain and image tokens projected from the image tower's layer statistics"
    Config = ADCLIPConfig
    reads_unlabelled = True
    reads_layer_statistics = True
    source_statistics: torch.Tensor  # (2·L·W,) the mean statistics of the source's training views
    unlabelled: torch.Tensor | None

    def __init__(self, config: ADCLIPConfig, ctx: MethodContext):
        super().__init__(config, ctx)
        model = ctx.backbone.model
        self.layers = len(image_blocks(model))
        self.width = int(model.visual.transformer.width)
        self.layout = {"blocks": self.layers, "width": self.width}
        self.dim = ctx.backbone.embed_dim
        n_ctx = 2 * self.layers + config.n_image_tokens
        gen = torch.Generator().manual_seed(ctx.seed)
        self.prompt_learner = PromptLearner(
            ctx.encoder, ctx.backbone.tokenizer, ctx.classnames, n_ctx=n_ctx, ctx_init=None, generator=gen
        )
        self.prompt_learner.ctx.requires_grad_(False)  # the context is the projectors' output, never this tensor
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(ctx.seed)
            self.tokens = parts.PromptTokens(self.layers, self.width, ctx.encoder.width, config.n_image_tokens)
        self.tokens.to(ctx.device)
        pool = None if ctx.unlabelled is None else self.rows(ctx.unlabelled().float()).to(ctx.device)
        self.register_buffer("unlabelled", pool, persistent=False)  # (N_t, D + 2LW) the target's images, no label
        features, _ = ctx.training_data()  # (V, N, D + 2LW)
        mean = self.rows(features).flatten(0, -2)[:, self.dim :].mean(0)
        self.register_buffer("source_statistics", mean.to(ctx.device), persistent=False)
        self.generator = torch.Generator().manual_seed(ctx.seed)

    def rows(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` checked: feature rows followed by their layer statistics (…, D + 2·L·W)."""
        expected = self.dim + 2 * self.layers * self.width
        if x.shape[-1] != expected:
            raise MethodError(
                f"adclip needs each image's layer statistics after its features ({expected} values per row, got "
                f"{x.shape[-1]}); run it under protocol domain_adaptation, which reads the layer-statistics bank"
            )
        return x

    def statistics(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, D + 2LW) rows -> normalised features (B, D) and μ, σ (L, B, W)."""
        x = self.rows(x)
        mu, sigma = split_row(x[:, self.dim :], self.layout)
        return normalize(x[:, : self.dim]), mu, sigma

    def set_classes(self, classnames: list[str]) -> None:
        self.prompt_learner.set_classes(classnames)

    def text_features(self, context: torch.Tensor) -> torch.Tensor:
        """(B, n_ctx, width) per-image context -> (B, C, D) normalised text features of its prompts."""
        pl = self.prompt_learner
        b, n_cls = context.shape[0], pl.token_prefix.shape[0]
        prefix = pl.token_prefix.unsqueeze(0).expand(b, -1, -1, -1)  # (B, C, 1, width)  SOS
        suffix = pl.token_suffix.unsqueeze(0).expand(b, -1, -1, -1)  # (B, C, *, width)  class . EOS
        ctx = context.unsqueeze(1).expand(-1, n_cls, -1, -1).to(prefix.dtype)  # (B, C, n_ctx, width)
        prompts = torch.cat([prefix, ctx, suffix], dim=2).flatten(0, 1)  # (B·C, length, width)
        return normalize(pl.encoder(prompts, pl.eot.repeat(b))).view(b, n_cls, -1)

    def logits(self, x_hat: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return self.logit_scale * torch.einsum("bd,bcd->bc", x_hat, text.to(x_hat.dtype))

    def step_outputs(self, source: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """A step's quantities for source rows and target rows (B each), paired by index, as ``CustomCLIP.forward``."""
        xs, mu_s, sigma_s = self.statistics(source)
        xt, mu_t, sigma_t = self.statistics(target)
        tokens = self.tokens((mu_s, sigma_s), (mu_t, sigma_t))
        source_text = self.text_features(tokens["source_context"])
        target_text = self.text_features(tokens["target_context"])
        return {
            "source_logits": self.logits(xs, source_text),
            "target_probs": F.softmax(self.logits(xt, target_text), dim=1),
            "source_domain": tokens["source_domain"],
            "source_style": tokens["source_style"],
            "source_text": source_text,
            "target_text": target_text,
        }

    def loss_terms(self, out: dict[str, torch.Tensor], labels: torch.Tensor) -> dict[str, torch.Tensor]:
        cfg = self.config
        p = out["target_probs"]
        source_text, target_text = out["source_text"], out["target_text"]
        terms = {
            "ce": F.cross_entropy(out["source_logits"], labels),
            "smn": F.mse_loss(out["source_domain"], out["source_style"]),
            "entropy": parts.batch_normalised_entropy(p)
            if cfg.entropy_over_batch
            else -(p * torch.log(p + parts.EPS_LOG)).sum(1).mean(),
            "kl": parts.text_kl(source_text, target_text)
            if cfg.kl_over_classes
            else parts.text_kl(source_text.transpose(1, 2), target_text.transpose(1, 2)),
        }
        weights = {"ce": 1.0, "smn": cfg.smn_weight, "entropy": cfg.entropy_weight, "kl": cfg.kl_weight}
        terms["loss"] = torch.stack([weights[k] * v for k, v in terms.items()]).sum()
        return terms

    def target_batch(self, size: int) -> torch.Tensor:
        if self.unlabelled is None or not len(self.unlabelled):
            raise MethodError("adclip needs the target's unlabelled images: set the config's `unlabelled: train`")
        idx = torch.randperm(len(self.unlabelled), generator=self.generator)[:size]
        if len(idx) < size:  # fewer target images than a batch: draw the rest again
            idx = idx.repeat(-(-size // len(idx)))[:size]
        return self.unlabelled[idx.to(self.unlabelled.device)]

    def loss(self, image_features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict]:
        out = self.step_outputs(image_features, self.target_batch(len(image_features)))
        terms = self.loss_terms(out, labels)
        return terms["loss"], {k: v.item() for k, v in terms.items() if k != "loss"}

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        """Logits of images (rows with their statistics) with the prompts [d(source mean), d(x), m(x)]."""
        x_hat, mu, sigma = self.statistics(image_features)
        mean_mu, mean_sigma = split_row(self.source_statistics.unsqueeze(0), self.layout)  # (L, 1, W)
        d_source = self.tokens.domain(mean_mu, mean_sigma)  # (1, L, width)
        n_cls = self.prompt_learner.token_prefix.shape[0]
        chunk = max(1, self.config.max_prompts_per_pass // n_cls)
        out = []
        for i in range(0, len(x_hat), chunk):
            m, s = mu[:, i : i + chunk], sigma[:, i : i + chunk]
            own = self.tokens.domain(m, s)  # (b, L, width)
            image = self.tokens.image(m, self.config.n_image_tokens)  # (b, n_img, width)
            context = torch.cat([d_source.expand(len(own), -1, -1), own, image], dim=1)
            out.append(self.logits(x_hat[i : i + chunk], self.text_features(context)))
        return torch.cat(out)

    def run_info(self) -> dict:
        return {
            "unlabelled_images": 0 if self.unlabelled is None else len(self.unlabelled),
            "layers": self.layers,
            "context_tokens": 2 * self.layers + self.config.n_image_tokens,
            "test_prompts": "source domain tokens of the source's mean statistics, the image's own domain tokens",
        }
