"""LAPT: label-driven automated prompt tuning for OOD detection (Zhang et al., ECCV 2024).

Paper: "LAPT: Label-driven Automated Prompt Tuning for OOD Detection with Vision-Language Models". Reference code:
YBZh/LAPT (df5bc81) points to YBZh/OpenOOD-VLM (804f331; read, not copied): ``scripts/ood/lapt/train.sh`` and
``test.sh``, ``openood/trainers/oodmixup_trainer.py`` (``OodMixupTrainer_idood`` with ``mix_strategy=wccm``,
``loss_components=multice``; ``mixup_data``), ``openood/losses/sce.py`` (``soft_cross_entropy``) and
``openood/postprocessors/oneoodprompt_postprocessor.py`` (the score). ``tests/test_ood.py`` checks the mixing, the
loss and the score against fixtures written by those functions (``tests/reference/ood_fixtures.py``).

A CoOp prompt (shared context) over the ID class names followed by M negative labels mined as NegLabel mines them
(:mod:`vlprompt.methods.neglabel`), trained on images *synthesised* for every label, with within-class cross-modal
mixing (wccm) and cross-entropy over ID + negative classes:

    λ ~ Beta(α, α) once per batch;  r_i ~ U{templates}
    x̃_i = normalize(λ · f(x_i) + (1 − λ) · t_{y_i, r_i})         t: the frozen hand-crafted text features of class y_i
    loss = CE(s · x̃ · W(ctx)ᵀ, y)                                   W over ID + negative classes, s CLIP's logit scale
    score(x) = mean_g Σ_{c ≤ C} softmax([s·cos(x, W_ID), s·cos(x, W_neg∈g)])_c

Synthesis: the pocket renderer is an exact text-to-image model of its world. An ID class "red circle" is drawn as
itself; a negative colour word ("brown") as that colour on a random shape of the world, a negative shape word as that
shape in a random colour; texture phrases (no object) are dropped, the renderer draws objects. Images are drawn in
the ID dataset's style from ``ctx.seed``, then encoded by the frozen image encoder. For real data (or any dataset
whose ``generated_images.<dataset>.by_label`` the config names) the images come from that folder of generated or
retrieved images, one sub-folder per label (:mod:`vlprompt.data.generated_images`): ``synth_per_label`` images per
label drawn by ``ctx.seed``, read and encoded as the rendered ones are; every ID class needs a folder, the negatives
are mined among the vocabulary's labels that have one (as they are among the labels the renderer can draw), and the
folder's key enters the run's hash and its record. A non-pocket dataset without a folder stops with one line.

Defaults are the released scripts' (SGD lr 0.01, weight decay 1e-5, 10 epochs, batch 32, α = 1, one wccm term);
deviations: N_CTX is 4 with CoOp's "a photo of a" (the scripts train with 2 and test with 4), the negatives
are the pocket vocabulary's (``negatives``; M at most 1000 as at training), 16 images per label (``synth_per_label``),
one template (the dataset's), a cosine schedule without warm-up, and the training data never include the
shots' real images: the run's shots only name it, its seed draws the synthesis, the mixing and the SGD order.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
import torch.nn.functional as F

from vlprompt.clip.prompting import text_classifier
from vlprompt.data import generated_images, pocket
from vlprompt.data.negative_labels import negative_labels
from vlprompt.data.registry import get_dataset
from vlprompt.methods.base import MethodContext, MethodError, normalize, register
from vlprompt.methods.coop import CoOp, CoOpConfig
from vlprompt.methods.neglabel import grouped_id_score, mine_negatives


def wccm_mix(image: torch.Tensor, text: torch.Tensor, labels: torch.Tensor, lam: float, which: torch.Tensor):
    """Within-class cross-modal mixing: normalize(λ·image + (1 − λ)·text[labels, which]); ``text`` (C, P, D) holds
    P prompt features per class, ``which`` (B,) picks one per image."""
    return normalize(lam * image + (1 - lam) * text[labels, which])


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of −Σ_c target_c · log softmax(logits)_c (OpenOOD's ``soft_cross_entropy``)."""
    return -(targets * F.log_softmax(logits, dim=-1)).sum(-1).mean()


@dataclasses.dataclass(frozen=True)
class LAPTConfig(CoOpConfig):
    negatives: str = "pocket:words"  # the vocabulary (vlprompt.data.negative_labels); texture phrases are dropped
    n_negatives: int = 1000  # M at training (train.sh OOD_NUM)
    percentile: float = 0.05  # η of NegMining
    groups: int = 1  # the score's groups (test.sh: 100 over 10 000 WordNet labels; the pocket vocabulary has tens)
    synth_per_label: int = 16  # images rendered per label
    mix_alpha: float = 1.0  # α of λ ~ Beta(α, α) (train.sh alpha)
    lr: float = 0.01
    weight_decay: float = 1e-5
    epochs: int = 10
    batch_size: int = 32
    momentum: float = 0.9


@register
class LAPT(CoOp):
    name = "lapt"
    family = "text prompt"
    paper = "Zhang et al., LAPT: Label-driven Automated Prompt Tuning for OOD Detection with VLMs, ECCV 2024"
    description = "CoOp over ID and mined negative labels, trained on synthesised images with wccm mixing"
    Config = LAPTConfig
    batchable = False  # its own loop draws the synthesis and the mixing
    reads_label_images = True  # a folder of images per label replaces the renderer where the config names one

    negative_names: list[str]
    class_text: torch.Tensor  # (C_ID + M, 1, D) frozen hand-crafted text features, the wccm partners

    def __init__(self, config: LAPTConfig, ctx: MethodContext):
        id_names = list(ctx.classnames)
        templates = [ctx.template]
        id_text = text_classifier(ctx.backbone, templates, id_names)
        vocabulary = negative_labels(config.negatives, id_names)
        if ctx.label_images:  # the labels with images in the folder, as the renderer's are those it can draw
            present = generated_images.labels_present(ctx.label_images)
            candidates = [c for c in vocabulary if generated_images.label_key(c) in present]
            if not candidates:
                raise MethodError(
                    f"lapt: no label of the vocabulary {config.negatives!r} has a folder of images in "
                    f"{ctx.label_images}; add images for negative labels (one folder per label)"
                )
        else:
            candidates = [c for c in vocabulary if self._drawable(c)]
            if not candidates:
                raise MethodError(
                    f"lapt: the vocabulary {config.negatives!r} has no label the pocket renderer can draw"
                )
        cand = text_classifier(ctx.backbone, templates, candidates)
        keep = mine_negatives(id_text, cand, config.n_negatives, config.percentile).tolist()
        negatives = [candidates[i] for i in keep]
        super().__init__(config, dataclasses.replace(ctx, classnames=id_names + negatives))
        self.id_names = id_names
        self.negative_names = negatives
        all_text = torch.cat([id_text, cand[keep]])
        self.register_buffer("class_text", all_text[:, None, :], persistent=False)

    @staticmethod
    def _drawable(label: str) -> bool:
        words = label.split()
        return len(words) in (1, 2) and all(w in pocket.COLOURS or w in pocket.SHAPES for w in words)

    @property
    def n_id(self) -> int:
        return len(self.id_names)

    def set_classes(self, classnames: list[str]) -> None:
        self.id_names = list(classnames)
        super().set_classes(self.id_names + self.negative_names)

    def all_logits(self, image_features: torch.Tensor) -> torch.Tensor:
        return self.logit_scale * normalize(image_features) @ self.text_features().T  # (B, C_ID + M)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        return self.all_logits(image_features)[:, : self.n_id]  # classification: the ID classes only

    @torch.no_grad()
    def ood_score(self, image_features: torch.Tensor) -> torch.Tensor:
        logits = self.all_logits(image_features)
        return grouped_id_score(logits[:, : self.n_id], logits[:, self.n_id :], self.config.groups)

    # ---- synthesis and training ------------------------------------------------------------------------------

    def synthesise(self, ctx: MethodContext) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, D) image features of ``synth_per_label`` images per label, (N,) their labels: read from the folder of
        images per label where the context names one, else rendered by the pocket renderer."""
        images, labels = self.folder_images(ctx) if ctx.label_images else self.rendered_images(ctx)
        batch = torch.stack(images)
        model = ctx.backbone.model
        with torch.no_grad():
            feats = torch.cat(
                [model.encode_image(batch[i : i + 256].to(ctx.device)) for i in range(0, len(batch), 256)]
            )
        return feats.float(), torch.tensor(labels, device=ctx.device)

    def folder_images(self, ctx: MethodContext) -> tuple[list[torch.Tensor], list[int]]:
        """The preprocessed images of every label, ``synth_per_label`` each, from the folder ``ctx.label_images``."""
        root = str(ctx.label_images)
        names = self.id_names + self.negative_names
        drawn = generated_images.label_images(root, names, self.config.synth_per_label, ctx.seed)
        images = [ctx.backbone.preprocess(generated_images.read_image(root, rel)) for rel, _ in drawn]
        return images, [label for _, label in drawn]

    def rendered_images(self, ctx: MethodContext) -> tuple[list[torch.Tensor], list[int]]:
        """The preprocessed images of every label, ``synth_per_label`` each, drawn by the pocket renderer."""
        spec = get_dataset(ctx.dataset) if ctx.dataset else None
        if spec is None or spec.style is None:
            raise MethodError(
                f"lapt synthesises its training images with the pocket renderer; {ctx.dataset} is not a pocket "
                f"dataset: name a folder of images per label in the config's generated_images.{ctx.dataset}.by_label"
            )
        rng = np.random.default_rng(ctx.seed)
        colours, shapes = list(pocket.COLOURS), list(pocket.SHAPES)
        images, labels = [], []
        for label, name in enumerate(self.id_names + self.negative_names):
            words = name.split()
            for _ in range(self.config.synth_per_label):
                if len(words) == 2:
                    colour, shape = words
                elif words[0] in pocket.COLOURS:
                    colour, shape = words[0], shapes[int(rng.integers(len(shapes)))]
                else:
                    colour, shape = colours[int(rng.integers(len(colours)))], words[0]
                texture = pocket.TEXTURES[int(rng.integers(len(pocket.TEXTURES)))]
                img = pocket.render(
                    colour, shape, spec.style, rng, size=ctx.backbone.image_size, version=2, texture=texture
                )
                images.append(ctx.backbone.preprocess(img))
                labels.append(label)
        return images, labels

    def fit(self, ctx: MethodContext) -> bool:
        cfg = self.config
        feats, labels = self.synthesise(ctx)
        gen = torch.Generator().manual_seed(ctx.seed)
        np_rng = np.random.default_rng(ctx.seed)
        params = [p for p in self.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        steps_per_epoch = math.ceil(len(feats) / cfg.batch_size)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.epochs * steps_per_epoch)
        n_cls = self.class_text.shape[0]
        self.train()
        losses = []
        for _ in range(cfg.epochs):
            order = torch.randperm(len(feats), generator=gen)
            for i in range(0, len(feats), cfg.batch_size):
                idx = order[i : i + cfg.batch_size].to(feats.device)
                y = labels[idx]
                lam = float(np_rng.beta(cfg.mix_alpha, cfg.mix_alpha)) if cfg.mix_alpha > 0 else 1.0
                which = torch.randint(0, self.class_text.shape[1], (len(idx),), generator=gen).to(feats.device)
                mixed = wccm_mix(normalize(feats[idx]), self.class_text, y, lam, which)
                logits = self.logit_scale * mixed @ self.text_features().T
                loss = soft_cross_entropy(logits, F.one_hot(y, n_cls).float())
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                losses.append(loss.item())
        self.eval()
        self.fit_info: dict[str, object] = {
            "synthesised_images": len(feats),
            "final_loss": float(np.mean(losses[-steps_per_epoch:])),
        }
        if ctx.label_images:
            self.fit_info["image_folder"] = generated_images.provenance(ctx.label_images)
        return True

    def run_info(self) -> dict:
        info = getattr(self, "fit_info", {})
        source = (
            "read from a folder of images per label (generated or retrieved elsewhere; image_folder)"
            if "image_folder" in info
            else "synthesised by the pocket renderer (exact text-to-image stand-in)"
        )
        return {"negative_labels": self.negative_names, "training_images": source, **info}
