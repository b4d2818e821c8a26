"""PromptKD: a student CLIP's deep vision prompts distilled from a prompt-tuned bigger teacher on unlabelled images.

Li et al., "PromptKD: Unsupervised Prompt Distillation for Vision-Language Models", CVPR 2024. Reference
implementation followed: zhengli97/PromptKD at ec244f783c8b9b2503ad5a838a3fd97365686ddb, ``trainers/promptkd.py``
(``CustomCLIP``, ``CustomCLIP_teacher``, ``forward_backward``, ``test``), its preset
``configs/trainers/PromptKD/vit_b16_c2_ep20_batch8_4+4ctx.yaml`` and ``scripts/promptkd/base2new_train.sh`` (read,
not copied). It is the released form of the first stage of CasPL (``methods/caspl.py``).

The teacher is a bigger CLIP prompt-tuned with labels (PromptSRC on ViT-L/14 in the paper; here the config's
``teacher``: :class:`Teacher`). Its class text features t_c (normalised) are computed once and shared: the student
has no text branch of its own. With the student's deep vision prompts P (VPT-deep, ``methods/vpt_deep.py``) and
a projector h from the student's embedding to the teacher's (1x1 conv, BatchNorm, ReLU, 1x1 conv in the reference:
Linear, BatchNorm1d, ReLU, Linear here, the same computation on (B, D) features)

    x̂ = normalize(h(f(x; P))),   z_s = s · x̂ tᵀ,   z_t = the teacher's logits on the same image
    L = λ · T² · KL(softmax(z_t / T) ‖ softmax(z_s / T)) / (B · C)       (the KL summed, divided by numel)

with s the student's logit scale, T = 1 and λ = 1000 (the script's weight for most datasets; 200 for
FGVCAircraft, Flowers and DTD). No label is read: the reference trains on every training image of the dataset
(``SHOTS=0``, base and new classes) with CE weight 0. Prediction uses the teacher's text features of whatever
classes are evaluated (base and new), as the reference's ``test``. P and h train; h's BatchNorm statistics are
stored with them. Preset: 4 vision tokens, depth 9, SGD lr 0.005, batch 8, 20 epochs, constant warm-up 1e-5.

Deviation (an option, off by default): the reference runs the teacher on each freshly augmented batch, and so does a
run here unless the config's ``teacher.logits`` is ``bank``: then the teacher's logits are read from a cached bank
over V fixed views of each training image (:class:`CachedTeacher`, ``vlprompt.training.teacher_logits``, rule
``teacher_logits``) and the student sees, each epoch, one of those V views of each image instead of a fresh crop.
The teacher is frozen, so the two differ only in which views are seen: with the views forced equal
(``teacher.logits: fixed_views``) the bank trains the same student (``tests/test_teacher_logits.py``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vlprompt.clip import deep_prompts
from vlprompt.methods.base import Method, MethodContext, MethodError, normalize, register
from vlprompt.methods.vpt_deep import VPTDeep, VPTDeepConfig


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T² · KL(softmax(teacher / T) ‖ softmax(student / T)), summed over the batch and classes, divided by their
    number (the reference's ``F.kl_div(..., reduction="sum") * T * T / numel``)."""
    t = temperature
    kl = F.kl_div(F.log_softmax(student.float() / t, -1), F.softmax(teacher.float() / t, -1), reduction="sum")
    return kl * t * t / student.numel()


class Teacher:
    """A prompt-tuned teacher: a trained method on the teacher backbone (PromptSRC), frozen, out of the student's
    module tree. ``text_features(classnames)``: its normalised class embeddings; ``logits(images)``: its logits."""

    source: dict = {"logits": "per_batch"}  # what a run records of where its teacher logits came from

    def __init__(self, method: Method):
        self.method: Any = method.eval().requires_grad_(False)  # a VPTDeep-family method (classnames, text_features)

    @property
    def embed_dim(self) -> int:
        return int(self.text_features(self.method.classnames[:1]).shape[1])

    @torch.no_grad()
    def text_features(self, classnames: list[str]) -> torch.Tensor:
        if list(classnames) != list(self.method.classnames):
            self.method.set_classes(list(classnames))
        return self.method.text_features().float()

    @torch.no_grad()
    def logits(self, images: torch.Tensor, classnames: list[str]) -> torch.Tensor:
        self.text_features(classnames)
        return self.method(images).float()


class CachedTeacher(Teacher):
    """A teacher whose logits are read from a bank over V fixed views of the training images (``logits`` (V, N, C)
    over ``classnames``) instead of computed: the training loop names the batch's (image, view) pairs with
    :meth:`select` before the loss asks for them. Its class text features are still the teacher's."""

    def __init__(self, method: Method, logits: torch.Tensor, classnames: list[str], source: dict):
        super().__init__(method)
        self.bank, self.bank_classnames, self.source = logits, list(classnames), source
        self.rows: tuple[torch.Tensor, torch.Tensor] | None = None

    def select(self, images: torch.Tensor, views: torch.Tensor) -> None:
        """The next batch holds view ``views[k]`` of training image ``images[k]``."""
        self.rows = (images, views)

    @torch.no_grad()
    def logits(self, images: torch.Tensor, classnames: list[str]) -> torch.Tensor:
        if self.rows is None or len(self.rows[0]) != len(images) or list(classnames) != self.bank_classnames:
            raise MethodError("the teacher-logits bank was read without the batch's views: train with fixed views")
        index, view = self.rows
        self.rows = None  # one batch's rows answer one call
        return self.bank[view, index].to(images.device)


@dataclasses.dataclass(frozen=True)
class PromptKDConfig(VPTDeepConfig):
    epochs: int = 20
    batch_size: int = 8
    lr: float = 0.005
    n_ctx_vision: int = 4
    depth_vision: int = 9
    temperature: float = 1.0  # T of the KD loss (scripts/promptkd/base2new_train.sh)
    kd_weight: float = 1000.0  # λ: the script's 1000 (200 for FGVCAircraft, Flowers, DTD: override per dataset)


@register
class PromptKD(VPTDeep):
    name = "promptkd"
    paper = "Li et al., PromptKD: Unsupervised Prompt Distillation for Vision-Language Models, CVPR 2024"
    description = (
        "deep vision prompts and a projector distilled from a prompt-tuned bigger teacher's logits; the teacher's "
        "class embeddings classify"
    )
    Config = PromptKDConfig
    reads_teacher = True

    teacher_text: torch.Tensor  # (C, D_t) the teacher's normalised class embeddings

    def build_prompts(self, config, ctx: MethodContext, gen: torch.Generator) -> None:
        if ctx.teacher is None:
            raise MethodError("promptkd needs a prompt-tuned teacher: set the config's `teacher`, docs/distillation.md")
        self.teacher: Teacher = ctx.teacher
        super().build_prompts(config, ctx, gen)
        model = self.frozen.model
        d_s, d_t = int(model.text_projection.shape[1]), self.teacher.embed_dim
        first, second = nn.Linear(d_s, d_t), nn.Linear(d_t, d_t)
        with torch.no_grad():  # the 1x1 convolutions' default init (kaiming-uniform, a = √5), from the run's seed
            for layer in (first, second):
                bound = 1 / math.sqrt(layer.weight.shape[1])
                layer.weight.copy_((torch.rand(layer.weight.shape, generator=gen) * 2 - 1) * bound)
                layer.bias.copy_((torch.rand(layer.bias.shape, generator=gen) * 2 - 1) * bound)
        self.projector = nn.Sequential(first, nn.BatchNorm1d(d_t), nn.ReLU(), second)
        self.projector.to(next(model.parameters()).device)

    def set_classes(self, classnames: list[str]) -> None:
        super().set_classes(classnames)
        self.register_buffer("teacher_text", self.teacher.text_features(classnames), persistent=False)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, D_t): the prompted student's image features, projected to the teacher's space and normalised."""
        features = deep_prompts.encode_image(self.frozen.model, images, self.vision_prompts())
        return normalize(self.projector(features.float()))

    def text_features(self) -> torch.Tensor:
        return self.teacher_text

    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """The KD loss against the teacher's logits on the same images (``labels`` is not read)."""
        teacher = self.teacher.logits(images, self.classnames)
        return self.distill(self(images), teacher)

    def distill(self, student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, dict]:
        loss = self.config.kd_weight * kd_loss(student, teacher, self.config.temperature)
        return loss, {"kd": loss.item()}

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The prompts and the projector, with its BatchNorm statistics (evaluation normalises with them)."""
        buffers = {f"projector.{k}": v.detach().cpu() for k, v in self.projector.named_buffers()}
        return {**super().trainable_state(), **buffers}
