"""Contrastive pretraining of the tiny pocket CLIP (rule ``pretrain_pocket_clip``).

The pocket world's stand-in for CLIP's web-scale pretraining: captioned images of every class in
every style, captions naming the style ("a sketch of a red circle.", "a red circle, pixelated
photo."). Most images are clean photos; the other styles appear at half strength, so the
downstream pocket datasets (full-strength styles) are a real domain shift for the frozen model.

Loss: CLIP's symmetric cross-entropy over the batch's image-text similarities, with targets that
treat every pair of the same class and style as a positive (a batch of 128 drawn from 512
class-style pairs has duplicates; plain CLIP targets would push those apart).

One preset per pocket world (:data:`PRESETS`; ``python -m vlprompt pretrain-pocket --world v1|v2``,
rule ``pretrain_pocket_clip``), each the recipe of a shipped checkpoint (``backbone.POCKET_ASSETS``):

- ``v1``: 2000 steps on the 8 x 8 world. Its pool draws class labels in the seeded shuffled order the
  world had when the checkpoint was made (``label_order="shuffled"``), so the rule re-draws the same
  images and captions.
- ``v2``: the 12 x 12 world, textured backgrounds; half of the captions of a textured image name the
  texture ("... on a striped background."); 18 compositions are never shown
  (:func:`vlprompt.data.pocket.held_out_in_pretraining`), while every colour and shape word is.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vlprompt.data import pocket
from vlprompt.io import atomic_torch_save, atomic_write_json, provenance

log = logging.getLogger(__name__)

CAPTIONS = {
    "photo": ["a photo of a {}.", "a {}.", "an image of a {}.", "a picture of a {}.", "a photo of the {}."],
    "_styled": [
        "a {s} photo of a {c}.",
        "a {s} image of a {c}.",
        "a {c}, {s} photo.",
        "a {s} picture of the {c}.",
        "a photo of a {c}, {s}.",
    ],
    "sketch": ["a sketch of a {}.", "a drawing of a {}.", "a {}, pencil sketch.", "a line drawing of a {}."],
}


TEACHER_MODEL = "PocketCLIP-ViT-S8"  # 6 + 6 blocks of width 192, embedding 96 (the tiny one: 4 + 4, 128, 64)
TEACHER_STEPS = 3000  # the v2 recipe's steps: a like-for-like comparison (cost measured in docs/distillation.md)


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
    steps: int = 1000
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup: int = 50
    pool_size: int = 24000  # distinct rendered images; augmentation makes each step's batch new
    photo_fraction: float = 0.4  # the rest is spread over the other styles
    style_strength: float = 0.5  # downstream datasets use 1.0
    seed: int = 0
    texture_caption_p: float = 0.0  # v2: how often the caption of a textured image names the texture
    model: str = ""  # an open_clip model config (src/vlprompt/model_configs/); "": the tiny pocket CLIP


PRESETS: dict[str, tuple[PretrainConfig, pocket.World]] = {
    "v1": (PretrainConfig(steps=2000), pocket.World(label_order="shuffled")),
    "v2": (PretrainConfig(steps=3000, pool_size=36000, texture_caption_p=0.5), pocket.world("v2")),
    # the teacher of the distillation methods (docs/distillation.md): a bigger pocket CLIP on the v2 world's pool
    "v2_teacher": (
        PretrainConfig(steps=TEACHER_STEPS, pool_size=36000, texture_caption_p=0.5, model=TEACHER_MODEL),
        pocket.world("v2"),
    ),
}


def pretraining_classes(world: pocket.World) -> list[tuple[str, str]]:
    """The compositions the captions show: every class of a v1 world (in its label order); in v2 the
    colour-major grid without the held-out compositions."""
    if world.version == 1:
        return world.classes
    return [cs for cs in world.grid if not pocket.held_out_in_pretraining(*cs)]


def caption(classname: str, style: str, rng: np.random.Generator) -> str:
    if style in ("photo", "sketch"):
        options = CAPTIONS[style]
        return options[rng.integers(len(options))].format(classname)
    adj = pocket.STYLES[style][0]
    options = CAPTIONS["_styled"]
    return options[rng.integers(len(options))].format(s=adj, c=classname)


def name_texture(text: str, texture: str) -> str:
    """ "a photo of a red circle." -> "a photo of a red circle on a striped background." """
    return f"{text.rstrip('.')} on a {texture} background."


def _render_pool(world: pocket.World, cfg: PretrainConfig):
    """``pool_size`` images with their class index (into :func:`pretraining_classes`), style and texture."""
    rng = np.random.default_rng(cfg.seed)
    others = [s for s in pocket.STYLES if s != "photo"]
    styles = np.where(rng.random(cfg.pool_size) < cfg.photo_fraction, "photo", rng.choice(others, size=cfg.pool_size))
    classes = pretraining_classes(world)
    labels = rng.integers(len(classes), size=cfg.pool_size)
    textures = (
        rng.integers(len(pocket.TEXTURES), size=cfg.pool_size) if world.version > 1 else np.zeros(cfg.pool_size, int)
    )  # index into pocket.TEXTURES (v1: all plain)
    images = np.empty((cfg.pool_size, world.image_size, world.image_size, 3), np.uint8)
    from tqdm import tqdm

    for i in tqdm(range(cfg.pool_size), desc="render pretraining pool", unit="img", mininterval=5):
        c, s = classes[labels[i]]
        extra = {} if world.version == 1 else {"version": world.version, "texture": pocket.TEXTURES[textures[i]]}
        images[i] = np.asarray(
            pocket.render(
                c, s, styles[i], pocket._rng(world.seed, "pretrain", i), world.image_size, cfg.style_strength, **extra
            )
        )
    return images, labels, styles, textures


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random resized crop (scale 0.6-1) and horizontal flip on a uint8 batch, as float in [0,1]."""
    n, _, h, w = x.shape
    x = x.float() / 255
    scale = torch.empty(n).uniform_(0.6, 1.0, generator=gen).sqrt()
    shift = (torch.rand(n, 2, generator=gen) * 2 - 1) * (1 - scale[:, None])
    theta = torch.zeros(n, 2, 3)
    flip = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
    theta[:, 0, 0] = scale * flip
    theta[:, 1, 1] = scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def pretrain(out: Path, cfg: PretrainConfig | None = None, world: pocket.World | None = None):
    """Pretrain a pocket CLIP on ``world`` with ``cfg`` (default: the v1 preset) and save it as fp16."""
    from tqdm import tqdm

    from vlprompt.clip.backbone import POCKET_MODEL, open_clip

    cfg, world = cfg or PRESETS["v1"][0], world or PRESETS["v1"][1]
    torch.manual_seed(cfg.seed)
    oc = open_clip()
    name = cfg.model or POCKET_MODEL
    model, _, _ = oc.create_model_and_transforms(name, pretrained=None)
    tokenizer = oc.get_tokenizer(name)
    mean = torch.tensor(model.visual.image_mean or (0.48145466, 0.4578275, 0.40821073)).view(1, 3, 1, 1)
    std = torch.tensor(model.visual.image_std or (0.26862954, 0.26130258, 0.27577711)).view(1, 3, 1, 1)
    t0 = time.time()
    images, labels, styles, textures = _render_pool(world, cfg)
    pool_seconds = time.time() - t0
    images = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    style_ids = np.unique(styles, return_inverse=True)[1]
    names = [f"{c} {s}" for c, s in pretraining_classes(world)]
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / cfg.warmup) * 0.5 * (1 + math.cos(math.pi * min(s, cfg.steps) / cfg.steps))
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed + 1)
    model.train()
    start = time.time()
    bar = tqdm(range(cfg.steps), desc="pretrain pocket CLIP", mininterval=5)
    for step in bar:
        idx = torch.randint(len(images), (cfg.batch_size,), generator=gen).numpy()
        x = (_augment(images[idx], gen) - mean) / std
        texts = [caption(names[labels[i]], styles[i], rng) for i in idx]
        named = np.zeros(len(idx), int)  # 1 + the texture a caption names, 0 if none
        if cfg.texture_caption_p > 0:
            for j, i in enumerate(idx):
                if textures[i] > 0 and rng.random() < cfg.texture_caption_p:
                    texts[j], named[j] = name_texture(texts[j], pocket.TEXTURES[textures[i]]), 1 + textures[i]
        # positives: same class, style and named texture (v1: class and style, as shipped)
        key = torch.as_tensor((labels[idx] * 100 + style_ids[idx]) * 10 + named)
        target = (key[:, None] == key[None, :]).float()
        target = target / target.sum(1, keepdim=True)
        img_f = F.normalize(model.encode_image(x), dim=-1)
        txt_f = F.normalize(model.encode_text(tokenizer(texts)), dim=-1)
        logits = model.logit_scale.exp() * img_f @ txt_f.T
        loss = 0.5 * (
            torch.sum(-target * F.log_softmax(logits, 1), 1).mean()
            + torch.sum(-target * F.log_softmax(logits.T, 1), 1).mean()
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}", scale=f"{model.logit_scale.exp().item():.1f}")
    model.eval()
    state = {k: v.half() for k, v in model.state_dict().items()}
    atomic_torch_save(out, state)  # the same weights give the same file, sha256 included
    atomic_write_json(
        Path(out).with_suffix(".json"),
        provenance(
            config=dataclasses.asdict(cfg),
            world=dataclasses.asdict(world),
            model=name,
            compositions=len(pretraining_classes(world)),
            threads=torch.get_num_threads(),
            seconds=round(time.time() - start, 1),
            pool_seconds=round(pool_seconds, 1),
        ),
    )
    log.info("saved %s after %.0f s", out, time.time() - start)
    return out
