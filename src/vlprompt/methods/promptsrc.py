"""PromptSRC: IVLP prompts regularised by the frozen CLIP (self-regulating constraints).

Khattak et al., "Self-regulating Prompts: Foundational Model Adaptation without Forgetting",
ICCV 2023. Reference implementation followed: muzairkhattak/PromptSRC, trainers/promptsrc.py
(read, not copied).

Prompts as IVLP (4 + 4 tokens, depth 9, text context initialised from "a photo of a"). With the
prompted features w̃_c, x̃ (L2-normalised), the frozen CLIP's image feature x̂ = normalize(f(x)),
and the frozen class embeddings averaged over K templates (textual diversity)

    ŵ_c = normalize((1/K) Σ_k g(template_k(c)))     (average of unnormalised features, as the reference)
    z̃ = s · x̃ w̃ᵀ,   ẑ = s · x̂ ŵᵀ                  (student and zero-shot logits)

the loss of a batch of B images is

    L = CE(z̃, y) + λ_t · mean|w̃ − ŵ| + λ_i · mean|x̃ − x̂| + λ_z · (1/(B·C)) Σ_b KL(softmax ẑ_b ‖ softmax z̃_b)

with λ_t = 25, λ_i = 10, λ_z = 1 (the means are over all entries, as ``F.l1_loss``; the KL is summed
and divided by the number of logits, as the reference's ``F.kl_div(..., reduction="sum") / numel``).

Gaussian prompt aggregation (GPA): after epoch e (1-based) of E the prompts θ_e are accumulated with
weight g_e ∝ exp(−(e − μ)² / 2σ²), Σ g_e = 1, and the final model is θ = Σ_e g_e θ_e. The preset
μ = 15, σ = 1 is defined for 20 epochs; with E epochs both scale by E / 20 (``gpa_epochs``), so the
aggregate covers the same fraction of training. Preset: configs/trainers/PromptSRC/
vit_b16_c2_ep20_batch4_4+4ctx.yaml (lr 0.0025, batch 4, 20 epochs). The few-shot setting uses 50
epochs and μ = 30, σ = 30 or μ = 45, σ = 5 (override with ``gpa_epochs`` equal to ``epochs``).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from vlprompt.clip.prompting import class_prompts
from vlprompt.methods.base import MethodContext, MethodError, normalize, register
from vlprompt.methods.ivlp import IVLP, IVLPConfig

# The 60 ImageNet prompts of CLIP's prompt-engineering notebook, which the reference averages over.
IMAGENET_TEMPLATES = (
    "a photo of a {}.",
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
)


@dataclasses.dataclass(frozen=True)
class PromptSRCConfig(IVLPConfig):
    epochs: int = 20
    lr: float = 0.0025
    n_ctx_vision: int = 4
    n_ctx_text: int = 4
    depth_vision: int = 9
    depth_text: int = 9
    text_loss_weight: float = 25.0  # λ_t, L1 between prompted and frozen (template-averaged) text features
    image_loss_weight: float = 10.0  # λ_i, L1 between prompted and frozen image features
    logit_loss_weight: float = 1.0  # λ_z, KL(zero-shot ‖ prompted logits)
    gpa_mean: float = 15.0  # Gaussian prompt aggregation, in epochs of a gpa_epochs-long schedule
    gpa_std: float = 1.0
    gpa_epochs: int = 20  # the schedule length gpa_mean/gpa_std refer to; both scale by epochs / gpa_epochs
    teacher_templates: str = "imagenet"  # imagenet (the reference's 60) | dataset | imagenet+dataset


def gaussian_weights(epochs: int, mean: float, std: float) -> list[float]:
    """GPA weights g_1..g_E ∝ N(e; mean, std²) over the 1-based epochs, summing to 1."""
    if epochs < 1 or std <= 0:
        raise MethodError(f"GPA needs epochs >= 1 and std > 0, got {epochs}, {std}")
    logw = torch.tensor([-0.5 * ((e - mean) / std) ** 2 for e in range(1, epochs + 1)], dtype=torch.float64)
    return torch.softmax(logw, dim=0).tolist()  # the normalising constant cancels; softmax avoids underflow


def promptsrc_losses(
    logits: torch.Tensor,
    labels: torch.Tensor,
    text: torch.Tensor,
    frozen_text: torch.Tensor,
    image: torch.Tensor,
    frozen_image: torch.Tensor,
    zs_logits: torch.Tensor,
    text_weight: float,
    image_weight: float,
    logit_weight: float,
) -> dict[str, torch.Tensor]:
    """The terms of PromptSRC's loss (see the module docstring); ``total`` is their sum."""
    out = {
        "ce": F.cross_entropy(logits, labels),
        "text": text_weight * F.l1_loss(text, frozen_text),
        "image": image_weight * F.l1_loss(image, frozen_image),
        "logits": logit_weight
        * F.kl_div(
            F.log_softmax(logits.float(), -1), F.log_softmax(zs_logits.float(), -1), reduction="sum", log_target=True
        )
        / logits.numel(),
    }
    out["total"] = out["ce"] + out["text"] + out["image"] + out["logits"]
    return out


@register
class PromptSRC(IVLP):
    name = "promptsrc"
    paper = "Khattak et al., Self-regulating Prompts: Foundational Model Adaptation without Forgetting, ICCV 2023"
    description = (
        "IVLP prompts kept close to the frozen CLIP (L1 on features, KL on logits) and averaged over "
        "epochs with Gaussian weights"
    )
    Config = PromptSRCConfig

    def __init__(self, config: PromptSRCConfig, ctx: MethodContext):
        if config.teacher_templates not in ("imagenet", "dataset", "imagenet+dataset"):
            raise MethodError(
                f"teacher_templates must be imagenet, dataset or imagenet+dataset, got {config.teacher_templates!r}"
            )
        super().__init__(config, ctx)
        scale = config.epochs / config.gpa_epochs
        self.gpa_weights = gaussian_weights(config.epochs, config.gpa_mean * scale, config.gpa_std * scale)
        self._gpa: dict[str, torch.Tensor] | None = None

    def set_classes(self, classnames: list[str]) -> None:
        super().set_classes(classnames)
        self._teacher_text: torch.Tensor | None = None  # computed when a loss needs it (training classes only)

    def teacher_templates(self) -> list[str]:
        mode = self.config.teacher_templates
        return (list(IMAGENET_TEMPLATES) if "imagenet" in mode else []) + (
            list(self.templates) if "dataset" in mode else []
        )

    @torch.no_grad()
    def teacher_text(self) -> torch.Tensor:
        """(n_cls, D) frozen class embeddings averaged over the templates, then L2-normalised."""
        if self._teacher_text is None:
            encoder, tokenizer = self.frozen.encoder, self.frozen.tokenizer
            device = self.fixed_text.device
            total: torch.Tensor | None = None
            for template in self.teacher_templates():
                tokens = tokenizer(class_prompts(template, self.classnames)).to(device)
                features = encoder.encode(tokens).float()
                total = features if total is None else total + features
            assert total is not None, "PromptSRC's teacher needs at least one template"
            self._teacher_text = normalize(total / len(self.teacher_templates()))
        return self._teacher_text

    def regulated(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[dict, dict]:
        """(the loss terms, the features they came from: prompted ``text``/``image``, frozen ``frozen_image``)."""
        text = self.text_features()  # (n_cls, D)
        image = self.image_features(images)  # (B, D)
        logits = self.logit_scale * image @ text.T
        with torch.no_grad():
            frozen_image = normalize(self.frozen.model.encode_image(images))
            frozen_text = self.teacher_text()
            zs_logits = self.logit_scale * frozen_image @ frozen_text.T
        c = self.config
        parts = promptsrc_losses(
            logits,
            labels,
            text,
            frozen_text,
            image,
            frozen_image,
            zs_logits,
            c.text_loss_weight,
            c.image_loss_weight,
            c.logit_loss_weight,
        )
        return parts, {"text": text, "image": image, "frozen_image": frozen_image}

    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict]:
        parts, _ = self.regulated(images, labels)
        return parts["total"], {k: v.item() for k, v in parts.items() if k != "total"}

    # -- Gaussian prompt aggregation, driven by the training loop ----------------------------
    def epoch_end(self, epoch: int) -> None:
        """Accumulate the prompts after (0-based) ``epoch`` with its Gaussian weight."""
        w = self.gpa_weights[epoch]
        state = self.trainable_state()
        if self._gpa is None:
            self._gpa = {k: w * v.double() for k, v in state.items()}
        else:
            for k, v in state.items():
                self._gpa[k] += w * v.double()

    def train_end(self) -> None:
        """Replace the prompts by their Gaussian-weighted average over the epochs."""
        if self._gpa is not None:
            current = self.trainable_state()
            self.load_trainable_state({k: v.to(current[k].dtype) for k, v in self._gpa.items()})
            self._gpa = None

    def loop_state(self) -> dict:
        return {"gpa": self._gpa}

    def load_loop_state(self, state: dict) -> None:
        self._gpa = state["gpa"]
