"""Regenerate the reference-equivalence fixtures from the official code of each method.

    python tests/reference/regenerate.py --refs DIR [--only coop,kgcoop,...] [--new-weights]

DIR holds checkouts of the repositories in ``REFERENCES`` (folder names as given there, e.g. ``DIR/CoOp``), at the
commits listed; nothing of them is copied into vlprompt: this script imports them from DIR. The reference
trainers import ``dassl`` (shipped as a folder next to their code or from ``Dassl.pytorch``), ``yacs`` and
scikit-learn; install those two into the interpreter that runs this script (not a vlprompt dependency otherwise).
Each method runs in its own child process, because every repository ships its own ``clip``, ``trainers`` and
``dassl`` packages under the same names.

What runs is the reference's own code: its config files (``cfg.merge_from_file``), ``extend_cfg`` from its
``train.py``, its trainer's ``build_model`` and ``forward_backward`` (or, for Tip-Adapter and the linear probe,
its functions and script). Stubbed, and why the numbers do not depend on it:

* ``clip._download`` returns the tiny CLIP's weights file (``tiny_clip.py``) instead of downloading OpenAI's; the
  reference loads it with its own ``clip.build_model``.
* fp32 throughout: ``clip.model.convert_weights`` (the fp16 cast in ``build_model``) is a no-op and
  ``Tensor.half``/``Module.half`` return fp32. The references train in fp16 or fp32 depending on the trainer's
  PREC, and some keep a frozen fp16 CLIP beside the fp32 one (KgCoOp's anchors, PromptSRC's frozen image encoder)
  or cast prompts to fp16 inside the blocks (MaPLe, IVLP, VPT). Those casts only round; removing them makes the
  reference an fp32 computation that vlprompt can be compared with at 1e-5. The weights are fp16 values, so the
  rounding of ``convert_weights`` would not change them anyway.
* No GPU: ``.cuda()`` and ``.to("cuda")`` leave tensors and modules on the CPU.
* ``torch.utils.tensorboard`` (Dassl's training log writer), ``gdown`` and ``wilds`` (its dataset downloads and
  WILDS datasets) are empty modules: none is used here. Dassl passes ``verbose`` to torch's LRScheduler, which
  newer torch releases dropped; it only printed, and is ignored.
* Dassl's trainer is built without its data manager: ``object.__new__`` + ``TrainerBase.__init__``, then the
  reference's ``build_model`` with ``self.dm.dataset.classnames`` set to the fixture's class names (with
  underscores, which the references replace by spaces). ``batch_idx``/``num_batches`` are set so that
  ``forward_backward`` does one optimiser step and no end-of-epoch work (lr update, PromptSRC's GPA).
* Hard-coded ViT-B/RN50 widths are replaced by the tiny model's: MaPLe's ``nn.Linear(ctx_dim, 768)`` coupling
  layers and ``torch.empty(n_ctx, 512)`` deep text prompts (rebuilt right after its prompt learner's
  ``__init__``, before the optimiser is made, so the optimiser holds them), CLIP-Adapter's ``Adapter(1024, 4)``
  (the RN50 width; rebuilt with the reference's own ``Adapter`` class). Their initial values come from the
  fixture's seed and are copied into vlprompt, like every random initialisation.
* NumPy 2 refuses ``float()`` of a one-element array, which Tip-Adapter's ``utils.cls_acc`` relies on; a module
  global ``float`` in ``utils`` takes the element, as NumPy 1 did.
* The input size check (``cfg.INPUT.SIZE``) is set to the tiny model's 32 px; depths and token counts are set
  where the reference presets exceed a 3-block model (recorded in each fixture's ``settings``).

Each fixture (``fixtures/<name>.pt``, loaded with ``torch.load(weights_only=True)``) records the reference
repository and commit, the settings, the reference's initial trainable parameters (named as in vlprompt), its
text features, logits, loss terms, gradients and parameters after one optimiser step.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import math
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import tiny_clip  # noqa: E402

REFERENCES = {  # folder under --refs: (repository, commit the fixtures were generated from)
    "CoOp": ("KaiyangZhou/CoOp", "ff61507c790454bce7c5052c3ac39e60772f1f89"),
    "Dassl.pytorch": ("KaiyangZhou/Dassl.pytorch", "c61a1b570ac6333bd50fb5ae06aea59002fb20bb"),
    "KgCoOp": ("htyao89/KgCoOp", "c43ccc32c8739f64b165cfa205fcc6c0f5bb5b17"),
    "Prompt-align": ("BeierZhu/Prompt-align", "1b762036cbe97ecf504e17bb94d89191679e4e6e"),
    "CLIP-Adapter": ("gaopengcuhk/CLIP-Adapter", "08d07f8b2ecafc6f1479fe636b26d464d7a5574e"),
    "Tip-Adapter": ("gaopengcuhk/Tip-Adapter", "d0e2d6f8c5feb8b6ce937b757810761f7155d4d5"),
    "multimodal-prompt-learning": (
        "muzairkhattak/multimodal-prompt-learning",
        "69bce21ae8eda80ad6187534b2dce09cf6c59e17",
    ),
    "PromptSRC": ("muzairkhattak/PromptSRC", "bb95c77b634d63488f2cad81ff4a72d53bdd06d5"),
    "CLIP-LoRA": ("MaxZanella/CLIP-LoRA", "358f0d7361f59e66c0b2d0b672a3dafb143a759b"),
    "CoPrompt": ("ShuvenduRoy/CoPrompt", "a2a6c12e3622cfe4b3a127f4ba0c4f3eb841418c"),
    "HiCroPL": ("zzeoZheng/HiCroPL", "2c2b2f2cd39a27e4f9862a202c402e31484b0ef3"),  # ships its own dassl
}

# Each fixture: the code folders it puts on sys.path (first wins) and the references it records.
FIXTURES = {
    "zeroshot": (["CoOp", "Dassl.pytorch"], ["CoOp", "Dassl.pytorch"]),
    "coop": (["CoOp", "Dassl.pytorch"], ["CoOp", "Dassl.pytorch"]),
    "coop_csc_middle": (["CoOp", "Dassl.pytorch"], ["CoOp", "Dassl.pytorch"]),
    "cocoop": (["CoOp", "Dassl.pytorch"], ["CoOp", "Dassl.pytorch"]),
    "kgcoop": (["KgCoOp/KgCoOp", "KgCoOp/Dassl.ProGrad.pytorch"], ["KgCoOp"]),
    "kgcoop_dtd": (["KgCoOp/KgCoOp", "KgCoOp/Dassl.ProGrad.pytorch"], ["KgCoOp"]),
    "prograd": (["Prompt-align/ProGrad.public", "Prompt-align/Dassl.ProGrad.pytorch"], ["Prompt-align"]),
    "prograd_pets": (["Prompt-align/ProGrad.public", "Prompt-align/Dassl.ProGrad.pytorch"], ["Prompt-align"]),
    "clip_adapter": (["CLIP-Adapter", "CoOp", "Dassl.pytorch"], ["CLIP-Adapter", "CoOp", "Dassl.pytorch"]),
    "tip_adapter": (["Tip-Adapter"], ["Tip-Adapter"]),
    "linear_probe": (["CoOp/lpclip"], ["CoOp"]),
    "ivlp": (["multimodal-prompt-learning", "Dassl.pytorch"], ["multimodal-prompt-learning", "Dassl.pytorch"]),
    "maple": (["multimodal-prompt-learning", "Dassl.pytorch"], ["multimodal-prompt-learning", "Dassl.pytorch"]),
    "vpt": (["multimodal-prompt-learning", "Dassl.pytorch"], ["multimodal-prompt-learning", "Dassl.pytorch"]),
    "promptsrc": (["PromptSRC", "Dassl.pytorch"], ["PromptSRC", "Dassl.pytorch"]),
    "clip_lora": (["CLIP-LoRA"], ["CLIP-LoRA"]),
    "clip_lora_dropout0": (["CLIP-LoRA"], ["CLIP-LoRA"]),
    "coprompt": (["CoPrompt", "Dassl.pytorch"], ["CoPrompt", "Dassl.pytorch"]),
    "hicropl": (["HiCroPL"], ["HiCroPL"]),
}

CLASSNAMES = ["car_side", "sea_lion", "water_lily", "ant"]  # underscores: the references replace them by spaces
LABELS = [0, 1, 2, 3, 2, 1]  # the training batch (6 images)


# ------------------------------------------------------------------------------------------ the tiny CLIP


def make_weights(refs: Path) -> None:
    """Build the tiny CLIP with CoOp's ``clip.model.CLIP`` (its own initialisation, seed 0), perturb the
    LayerNorm and bias terms (OpenAI's init sets them to 1 and 0, which would hide a misplaced LayerNorm), set
    the logit scale to ln 100 and store every tensor but the token embedding in fp16, with the fixed inputs."""
    sys.path[:0] = [str(refs / "CoOp")]
    from clip.model import CLIP

    t = tiny_clip
    torch.manual_seed(0)
    model = CLIP(
        t.EMBED_DIM,
        t.IMAGE,
        t.LAYERS,
        t.VISION_WIDTH,
        t.PATCH,
        t.CONTEXT,
        t.VOCAB,
        t.TEXT_WIDTH,
        t.TEXT_WIDTH // 64,
        t.LAYERS,
    )
    gen = torch.Generator().manual_seed(1)
    weights = {}
    for key, value in model.state_dict().items():
        if key == "token_embedding.weight":
            continue
        value = value.clone().float()
        if key.endswith(("ln_1.weight", "ln_2.weight", "ln_pre.weight", "ln_post.weight", "ln_final.weight")):
            value = 1 + 0.1 * torch.randn(value.shape, generator=gen)
        elif key.endswith("bias"):
            value = 0.02 * torch.randn(value.shape, generator=gen)
        if key == "logit_scale":
            value = torch.tensor(math.log(100.0))
        weights[key] = value.half()
    images = torch.randn(len(LABELS), 3, t.IMAGE, t.IMAGE, generator=gen).half()
    views = (images.float() + 0.3 * torch.randn(3, *images.shape, generator=gen)).half()  # Tip-Adapter's views
    # validation images: two more noisy views of each training image, so that Tip-Adapter's cache can help
    val_images = (
        images.float().repeat(2, 1, 1, 1) + 0.5 * torch.randn(2 * len(LABELS), *images.shape[1:], generator=gen)
    ).half()
    torch.save(
        {
            "weights": weights,
            "images": images,
            "labels": torch.tensor(LABELS),
            "classnames": CLASSNAMES,
            "views": views,
            "val_images": val_images,
            "val_labels": torch.tensor(LABELS).repeat(2),
            "made_with": dict(zip(("repo", "commit"), REFERENCES["CoOp"], strict=True)),
        },
        t.WEIGHTS,
    )
    print(f"wrote {t.WEIGHTS} ({t.WEIGHTS.stat().st_size / 1e6:.2f} MB)")


# ------------------------------------------------------------------------------------------ stubs


def install_stubs(weights_file: str, half_is_float: bool = True) -> None:
    """No GPU, fp32 throughout, the tiny CLIP instead of a download (see the module docstring)."""
    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.nn.Module.cuda = lambda self, *a, **k: self
    to = torch.Tensor.to

    def cpu_to(self, *args, **kwargs):
        args = tuple("cpu" if isinstance(a, str) and a.startswith("cuda") else a for a in args)
        if isinstance(kwargs.get("device"), str) and kwargs["device"].startswith("cuda"):
            kwargs["device"] = "cpu"
        return to(self, *args, **kwargs)

    torch.Tensor.to = cpu_to
    # Dassl imports TensorBoard's SummaryWriter for its training logs, which this script never writes
    sys.modules.setdefault("torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=None))
    sched_init = torch.optim.lr_scheduler.LRScheduler.__init__

    def sched_init_verbose(self, optimizer, last_epoch=-1, verbose=False):  # Dassl passes verbose (printing only)
        sched_init(self, optimizer, last_epoch)

    torch.optim.lr_scheduler.LRScheduler.__init__ = sched_init_verbose
    for name in ("gdown", "wilds"):  # dataset downloads and WILDS datasets, never used here
        sys.modules.setdefault(name, types.SimpleNamespace(get_dataset=None))
    if half_is_float:
        torch.Tensor.half = lambda self, *a, **k: self.float()
    import clip.clip
    import clip.model

    clip.model.convert_weights = lambda model: None
    clip.clip._download = lambda url, *a, **k: weights_file
    if hasattr(clip.clip, "_MODELS"):
        clip.clip._MODELS.setdefault("ViT-B/16", "tiny")


def write_weights_file(tmp: Path) -> str:
    path = tmp / "tiny_clip_full.pt"
    torch.save(tiny_clip.state_dict(), path)
    return str(path)


def reference_cfg(repo_dir: Path, config_file: str | None, opts: list) -> object:
    """Dassl's default config + the repository's ``extend_cfg`` + its config file + ``opts``."""
    from dassl.config import get_cfg_default

    train = importlib.import_module("train")  # the repository's train.py (extend_cfg)
    cfg = get_cfg_default()
    train.extend_cfg(cfg)
    if config_file:
        cfg.merge_from_file(str(repo_dir / config_file))
    cfg.merge_from_list(["INPUT.SIZE", (tiny_clip.IMAGE, tiny_clip.IMAGE), *opts])
    return cfg


def dassl_trainer(trainer_cls, cfg, classnames, **dataset):
    """The reference trainer with its own ``build_model``, without Dassl's data manager (see the docstring);
    ``dataset``: further attributes of ``dm.dataset`` that a trainer reads (e.g. OGEN's new class names)."""
    from dassl.engine.trainer import TrainerBase

    trainer = object.__new__(trainer_cls)
    TrainerBase.__init__(trainer)
    trainer.cfg = cfg
    trainer.device = torch.device("cpu")
    trainer.dm = types.SimpleNamespace(dataset=types.SimpleNamespace(classnames=list(classnames), **dataset))
    trainer.check_cfg(cfg)
    with contextlib.redirect_stdout(io.StringIO()):
        trainer.build_model()
    trainer.batch_idx, trainer.num_batches = 0, 2  # one step, mid-epoch: no lr update, no GPA
    return trainer


def step(trainer, images, labels) -> dict:
    """One call of the reference's ``forward_backward`` on the batch; returns its loss summary."""
    trainer.model.train()
    with contextlib.redirect_stdout(io.StringIO()):
        return trainer.forward_backward({"img": images, "label": labels})


def collect(model, names: dict, attr: str | None = None) -> dict:
    """{vlprompt name: tensor} from {vlprompt name: reference parameter name, or a list of names to stack}:
    the parameters (``attr`` None) or their ``.grad``."""
    params = dict(model.named_parameters())

    def get(n):
        p = params[n] if attr is None else getattr(params[n], attr)
        return p.detach().clone()

    return {k: torch.stack([get(n) for n in v]) if isinstance(v, list) else get(v) for k, v in names.items()}


def named(model, names: dict) -> dict:
    return collect(model, names)


def grads(model, names: dict) -> dict:
    return collect(model, names, "grad")


def current_lr(trainer) -> float:
    return float(trainer.optim.param_groups[0]["lr"])


# ------------------------------------------------------------------------------------------ methods


def gen_coop(name: str, data: dict, repo: Path) -> dict:
    from trainers.coop import CoOp

    if name == "coop":
        opts = ["TRAINER.COOP.N_CTX", 4, "TRAINER.COOP.CTX_INIT", "a photo of a"]
    else:  # class-specific random context with the class name in the middle
        opts = [
            "TRAINER.COOP.N_CTX",
            4,
            "TRAINER.COOP.CTX_INIT",
            "",
            "TRAINER.COOP.CSC",
            True,
            "TRAINER.COOP.CLASS_TOKEN_POSITION",
            "middle",
        ]
    torch.manual_seed(0)
    cfg = reference_cfg(
        repo,
        "configs/trainers/CoOp/vit_b16_ep50_ctxv1.yaml",
        ["TRAINER.COOP.PREC", "fp32", "DATASET.NAME", "Caltech101", *opts],
    )
    t = dassl_trainer(CoOp, cfg, data["classnames"])
    m = t.model
    names = {"prompt_learner.ctx": "prompt_learner.ctx"}
    out = {
        "settings": {"config": "configs/trainers/CoOp/vit_b16_ep50_ctxv1.yaml", "opts": opts},
        "init": named(m, names),
    }
    with torch.no_grad():
        out["image_features"] = m.image_encoder(data["images"])
        out["text_features"] = normalize(m.text_encoder(m.prompt_learner(), m.tokenized_prompts))
        out["logits"] = m(data["images"])
        out["tokenized_prompts"] = m.tokenized_prompts
    out["lr"] = current_lr(t)
    summary = step(t, data["images"], data["labels"])
    out["loss"] = {"ce": summary["loss"]}
    out["grad"], out["after"] = grads(m, names), named(m, names)
    return out


def gen_zeroshot(name: str, data: dict, repo: Path) -> dict:
    from trainers.zsclip import CUSTOM_TEMPLATES, ZeroshotCLIP

    cfg = reference_cfg(repo, None, ["DATASET.NAME", "OxfordPets", "MODEL.BACKBONE.NAME", "ViT-B/16"])
    t = object.__new__(ZeroshotCLIP)
    t.cfg, t.device = cfg, torch.device("cpu")
    t.dm = types.SimpleNamespace(dataset=types.SimpleNamespace(classnames=list(data["classnames"])))
    with contextlib.redirect_stdout(io.StringIO()):
        t.build_model()
    with torch.no_grad():
        logits = t.model_inference(data["images"])
    return {
        "settings": {"dataset": "OxfordPets", "template": CUSTOM_TEMPLATES["OxfordPets"]},
        "text_features": t.text_features.clone(),
        "logits": logits,
    }


def gen_cocoop(name: str, data: dict, repo: Path) -> dict:
    from trainers.cocoop import CoCoOp

    config = "configs/trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml"
    cfg = reference_cfg(repo, config, ["TRAINER.COCOOP.PREC", "fp32", "DATASET.NAME", "Caltech101"])
    for seed in range(100):  # the first meta-net init whose 2 hidden units (32 // 16) are not both dead on the batch
        torch.manual_seed(seed)
        t = dassl_trainer(CoCoOp, cfg, data["classnames"])
        m = t.model
        with torch.no_grad():
            hidden = m.prompt_learner.meta_net.linear1(normalize(m.image_encoder(data["images"])))
        if (hidden > 0).any(0).all():
            break
    names = {
        "prompt_learner.ctx": "prompt_learner.ctx",
        "meta_net.0.weight": "prompt_learner.meta_net.linear1.weight",
        "meta_net.0.bias": "prompt_learner.meta_net.linear1.bias",
        "meta_net.2.weight": "prompt_learner.meta_net.linear2.weight",
        "meta_net.2.bias": "prompt_learner.meta_net.linear2.bias",
    }
    out = {"settings": {"config": config, "seed": seed}, "init": named(m, names)}
    m.eval()
    with torch.no_grad():
        feats = m.image_encoder(data["images"])
        out["image_features"] = feats
        x_hat = normalize(feats)
        prompts = m.prompt_learner(x_hat)  # (B, C, L, width)
        out["text_features"] = torch.stack([normalize(m.text_encoder(p, m.tokenized_prompts)) for p in prompts])
        out["logits"] = m(data["images"])
    out["lr"] = current_lr(t)
    summary = step(t, data["images"], data["labels"])
    out["loss"] = {"ce": summary["loss"]}
    out["grad"], out["after"] = grads(m, names), named(m, names)
    assert out["grad"]["meta_net.0.weight"].abs().max() > 0, "the meta-net's hidden units are dead: change the seed"
    return out


def gen_kgcoop(name: str, data: dict, repo: Path) -> dict:
    from trainers.kgcoop import CUSTOM_TEMPLATES, KgCoOp

    dataset = "OxfordPets" if name == "kgcoop" else "DescribableTextures"
    config = "configs/trainers/KgCoOp/vit_b16_ep100_ctxv1.yaml"
    torch.manual_seed(0)
    cfg = reference_cfg(repo, config, ["TRAINER.COOP.PREC", "fp32", "TRAINER.COOP.W", 8.0, "DATASET.NAME", dataset])
    t = dassl_trainer(KgCoOp, cfg, data["classnames"])
    m = t.model
    names = {"prompt_learner.ctx": "prompt_learner.ctx"}
    out = {
        "settings": {"config": config, "dataset": dataset, "W": 8.0, "anchor_template": CUSTOM_TEMPLATES[dataset]},
        "init": named(m, names),
    }
    with torch.no_grad():
        out["image_features"] = m.image_encoder(data["images"])
        out["text_features"] = normalize(m.text_encoder(m.prompt_learner(), m.tokenized_prompts))
        out["anchors"] = normalize(m.ori_embedding)
        logits, score = m(data["images"])
        out["logits"] = logits
    out["lr"] = current_lr(t)
    ce = torch.nn.functional.cross_entropy(logits, data["labels"]).item()
    summary = step(t, data["images"], data["labels"])
    out["loss"] = {"ce": ce, "kg": score.item(), "total": summary["loss"]}
    out["grad"], out["after"] = grads(m, names), named(m, names)
    return out


def gen_prograd(name: str, data: dict, repo: Path) -> dict:
    from trainers.prograd import CUSTOM_TEMPLATES, ProGrad

    dataset = "Caltech101" if name == "prograd" else "OxfordPets"
    config = "configs/trainers/ProGrad/rn50.yaml"
    torch.manual_seed(0)
    cfg = reference_cfg(
        repo,
        config,
        ["TRAINER.COOP.PREC", "fp32", "DATASET.NAME", dataset, "MODEL.BACKBONE.NAME", "ViT-B/16", "LOSS.LAMBDA", 1.0],
    )
    t = dassl_trainer(ProGrad, cfg, data["classnames"])
    m = t.model
    names = {"prompt_learner.ctx": "prompt_learner.ctx"}
    out = {
        "settings": {
            "config": config,
            "dataset": dataset,
            "template": CUSTOM_TEMPLATES[dataset],
            "lambda": 1.0,
            "T": float(cfg.LOSS.T),
            "n_ctx": int(cfg.TRAINER.COOP.N_CTX),
        },
        "init": named(m, names),
    }
    with torch.no_grad():
        out["image_features"] = m.image_encoder(data["images"])
        out["text_features"] = normalize(m.text_encoder(m.prompt_learner(), m.tokenized_prompts))
        out["teacher_features"] = t.zs_clip.text_features.clone()
        out["logits"] = m(data["images"])
        teacher = t.zs_clip(data["images"])
    # labels for which the CE gradient conflicts with the KL one, so that the projection runs (required for the
    # Caltech101 fixture; the OxfordPets one is about the template): against the teacher's prediction first,
    # then draws from a fixed generator, else the batch's labels
    params = list(m.prompt_learner.parameters())
    logits = m(data["images"])
    g_kl = torch.autograd.grad(t.criterion(logits, teacher, teacher.argmax(-1))[1], params, retain_graph=True)[0]
    gen = torch.Generator().manual_seed(0)
    candidates = [teacher.argmin(-1)] + [
        torch.randint(len(data["classnames"]), (len(teacher),), generator=gen) for _ in range(200)
    ]
    for labels in [*candidates, data["labels"]]:
        g_ce = torch.autograd.grad(torch.nn.functional.cross_entropy(logits, labels), params, retain_graph=True)[0]
        out["conflict"] = bool(torch.dot(g_ce.flatten(), g_kl.flatten()) < 0)
        if out["conflict"]:
            break
    assert out["conflict"] or name != "prograd", "no labels make the gradients conflict"
    out["labels"] = labels
    ce, kl = t.criterion(out["logits"], teacher, labels)
    out["loss"] = {"ce": ce.item(), "kl": kl.item()}
    out["grad_ce"] = g_ce.clone()
    out["lr"] = current_lr(t)
    step(t, data["images"], labels)
    out["grad"], out["after"] = grads(m, names), named(m, names)
    return out


def gen_clip_adapter(name: str, data: dict, repo: Path) -> dict:
    import clip_adapter as ref

    original = ref.Adapter.__init__

    def adapter_init(self, c_in, reduction=4):  # the reference's Adapter(1024, 4) is RN50's width
        original(self, tiny_clip.EMBED_DIM if c_in == 1024 else c_in, reduction)

    ref.Adapter.__init__ = adapter_init
    config = "configs/trainers/CoOp/vit_b16_ep50.yaml"
    torch.manual_seed(0)
    cfg = reference_cfg(repo.parent / "CoOp", config, ["DATASET.NAME", "OxfordPets"])
    t = dassl_trainer(ref.CLIP_Adapter, cfg, data["classnames"])
    m = t.model
    names = {"adapter.0.weight": "adapter.fc.0.weight", "adapter.2.weight": "adapter.fc.2.weight"}
    out = {
        "settings": {
            "config": "CoOp/" + config,
            "dataset": "OxfordPets",
            "ratio": 0.2,
            "template": ref.CUSTOM_TEMPLATES["OxfordPets"],
        },
        "init": named(m, names),
    }
    with torch.no_grad():
        out["image_features"] = m.image_encoder(data["images"])
        out["text_features"] = normalize(m.text_encoder())
        out["logits"] = m(data["images"])
    out["lr"] = current_lr(t)
    summary = step(t, data["images"], data["labels"])
    out["loss"] = {"ce": summary["loss"]}
    out["grad"], out["after"] = grads(m, names), named(m, names)
    return out


class Views:
    """A loader whose k-th pass yields the k-th augmented view of the batch (Tip-Adapter's ``augment_epoch``)."""

    def __init__(self, views, labels):
        self.views, self.labels, self.passes = views, labels, 0

    def __iter__(self):
        batch = (self.views[self.passes], self.labels)
        self.passes += 1
        return iter([batch])

    def __len__(self):
        return 1


def gen_tip_adapter(name: str, data: dict, repo: Path) -> dict:
    import yaml

    main = importlib.import_module("main")
    import utils
    from datasets.oxford_pets import template

    # NumPy 2 refuses float() of a one-element array, which utils.cls_acc relies on: take its element, as NumPy 1 did
    utils.float = lambda x: float(x.reshape(-1)[0]) if hasattr(x, "reshape") else float(x)

    import clip

    cfg = yaml.safe_load((repo / "configs/oxford_pets.yaml").read_text())
    clip_model = clip.model.build_model(tiny_clip.state_dict()).float().eval()
    tmp = Path(tempfile.mkdtemp())
    cfg.update(cache_dir=str(tmp), augment_epoch=2, train_epoch=1, load_cache=False)
    with contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        clip_weights = main.clip_classifier(data["classnames"], template, clip_model)  # (D, C)
        keys, values = main.build_cache_model(cfg, clip_model, Views(data["views"][:2], data["labels"]))
        val = clip_model.encode_image(data["val_images"])
        val = val / val.norm(dim=-1, keepdim=True)
        beta, alpha = main.search_hp(cfg, keys, values.float(), val, data["val_labels"], clip_weights)
        batch_f = clip_model.encode_image(data["views"][2])
        batch_f = batch_f / batch_f.norm(dim=-1, keepdim=True)
    out = {
        "settings": {
            "config": "configs/oxford_pets.yaml",
            "template": template,
            "search_scale": cfg["search_scale"],
            "search_step": cfg["search_step"],
            "init_alpha": cfg["init_alpha"],
            "init_beta": cfg["init_beta"],
            "lr": cfg["lr"],
        },
        "text_features": clip_weights.T.clone(),
        "cache_keys": keys.T.clone(),
        "cache_values": values.float(),
        "val_features": val,
        "alpha": alpha,
        "beta": beta,
    }
    with torch.no_grad():  # Tip-Adapter's logits on the validation features with the searched alpha, beta
        cache = ((-1) * (beta - beta * (val @ keys))).exp() @ values.float()
        out["logits"] = 100.0 * val @ clip_weights + cache * alpha
    # Tip-Adapter-F: one epoch of one batch (the third view), test set = that batch; record its loss
    losses = []
    ce = main.F.cross_entropy

    def recording_ce(*args, **kwargs):
        loss = ce(*args, **kwargs)
        losses.append(loss.item())
        return loss

    main.F = types.SimpleNamespace(
        **{k: getattr(torch.nn.functional, k) for k in dir(torch.nn.functional) if not k.startswith("__")}
    )
    main.F.cross_entropy = recording_ce
    with contextlib.redirect_stdout(io.StringIO()) as log:
        main.run_tip_adapter_F(
            cfg,
            keys,
            values.float(),
            val,
            data["val_labels"],
            batch_f,
            data["labels"],
            clip_weights,
            clip_model,
            [(data["views"][2], data["labels"])],
        )
    trained = torch.load(tmp / f"best_F_{cfg['shots']}shots.pt", weights_only=False)
    out["f_loss"] = {"ce": losses[0]}
    out["f_after"] = {"cache_keys": trained.detach().clone()}
    searched = [line for line in log.getvalue().splitlines() if line.startswith("New best setting")]
    out["f_log_last_best"] = searched[-1] if searched else ""
    return out


def gen_linear_probe(name: str, data: dict, repo: Path) -> dict:
    """CoOp's lpclip/linear_probe.py as a script, on a small fixed feature set in its npz layout. With 16
    training and 4 validation features per class its 16-shot run takes every feature (the sampling only
    reorders them), so the result does not depend on its sampler. Its classifiers are recorded through a
    subclass of LogisticRegression that keeps each fit's C and test predictions."""
    import runpy

    import numpy as np
    import sklearn.linear_model

    gen = np.random.default_rng(0)
    n_cls, dim = 5, tiny_clip.EMBED_DIM
    centres = gen.normal(size=(n_cls, dim))

    def split(per_class, noise=1.6):
        y = np.repeat(np.arange(n_cls), per_class)
        return (centres[y] + noise * gen.normal(size=(len(y), dim))).astype(np.float32), y

    feats = {s: split(k) for s, k in (("train", 16), ("val", 4), ("test", 20))}
    root = Path(tempfile.mkdtemp())
    (root / "feat" / "toy").mkdir(parents=True)
    for s, (f, y) in feats.items():
        np.savez(root / "feat" / "toy" / f"{s}.npz", feature_list=f, label_list=y)
    fits = []

    class Recording(sklearn.linear_model.LogisticRegression):
        def fit(self, x, y):
            super().fit(x, y)
            self.n_train = len(x)
            fits.append(self)
            return self

        def predict(self, x):
            pred = super().predict(x)
            if len(x) == len(feats["test"][1]):
                self.test_pred = pred
            return pred

    sklearn.linear_model.LogisticRegression = Recording
    import os

    cwd = os.getcwd()
    os.chdir(root)
    sys.argv = ["linear_probe.py", "--dataset", "toy", "--feature_dir", "feat", "--num_run", "1"]
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            runpy.run_path(str(repo / "linear_probe.py"), run_name="__main__")
        details = (root / "report" / "feat_s8r1_details.txt").read_text().splitlines()
    finally:
        os.chdir(cwd)
    last = [line for line in details if ", 16 shot," in line][-1]  # "toy, seed 1, 16 shot, weight C, test_acc A"
    c_final = float(last.split("weight ")[1].split(",")[0])
    acc = float(last.split("test_acc ")[1])
    final = [f for f in fits if f.n_train == 16 * n_cls and float(f.C) == c_final and hasattr(f, "test_pred")][-1]
    return {
        "settings": {"script": "lpclip/linear_probe.py", "num_step": 8, "shots": 16},
        "train_features": torch.from_numpy(feats["train"][0]),
        "train_labels": torch.from_numpy(feats["train"][1]),
        "val_features": torch.from_numpy(feats["val"][0]),
        "val_labels": torch.from_numpy(feats["val"][1]),
        "test_features": torch.from_numpy(feats["test"][0]),
        "test_labels": torch.from_numpy(feats["test"][1]),
        "C": c_final,
        "test_acc": acc,
        "test_pred": torch.from_numpy(final.test_pred),
    }


def deep_names(model, kind: str, depth: int) -> dict:
    """vlprompt names of the deep prompts -> the reference's parameter names (IVLP/VPT/PromptSRC layout)."""
    names = {}
    if kind in ("ivlp", "promptsrc"):
        names["prompt_learner.ctx"] = "prompt_learner.ctx"
        names["text_deep"] = [f"text_encoder.transformer.resblocks.{i}.VPT_shallow" for i in range(1, depth)]
    names["vision_ctx"] = ["image_encoder.VPT"] + [
        f"image_encoder.transformer.resblocks.{i}.VPT_shallow" for i in range(1, depth)
    ]
    return names


def gen_deep(name: str, data: dict, repo: Path) -> dict:
    """IVLP, VPT-deep, MaPLe (multimodal-prompt-learning) and PromptSRC: the image encoder in the loop."""
    depth, n_ctx = 2, {"ivlp": 2, "maple": 2, "vpt": 4, "promptsrc": 4}[name]
    if name == "ivlp":
        from trainers.independentVL import IVLP as Trainer

        config = "configs/trainers/IVLP/vit_b16_c2_ep5_batch4_2+2ctx.yaml"
        opts = [
            "TRAINER.IVLP.PREC",
            "fp32",
            "TRAINER.IVLP.PROMPT_DEPTH_VISION",
            depth,
            "TRAINER.IVLP.PROMPT_DEPTH_TEXT",
            depth,
            "TRAINER.IVLP.N_CTX_VISION",
            n_ctx,
            "TRAINER.IVLP.N_CTX_TEXT",
            n_ctx,
        ]
    elif name == "vpt":
        from trainers.vpt import VPT as Trainer

        config = "configs/trainers/VPT/vit_b16_c2_ep5_batch4_4.yaml"
        opts = ["TRAINER.VPT.PREC", "fp32", "TRAINER.VPT.PROMPT_DEPTH_VISION", depth, "TRAINER.VPT.N_CTX_VISION", n_ctx]
    elif name == "promptsrc":
        from trainers.promptsrc import PromptSRC as Trainer

        config = "configs/trainers/PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx.yaml"
        opts = [
            "TRAINER.PROMPTSRC.PREC",
            "fp32",
            "TRAINER.PROMPTSRC.PROMPT_DEPTH_VISION",
            depth,
            "TRAINER.PROMPTSRC.PROMPT_DEPTH_TEXT",
            depth,
            "TRAINER.PROMPTSRC.N_CTX_VISION",
            n_ctx,
            "TRAINER.PROMPTSRC.N_CTX_TEXT",
            n_ctx,
        ]
    else:
        import trainers.maple as ref
        from trainers.maple import MaPLe as Trainer

        config = "configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml"
        opts = ["TRAINER.MAPLE.PREC", "fp32", "TRAINER.MAPLE.PROMPT_DEPTH", depth, "TRAINER.MAPLE.N_CTX", n_ctx]
        original = ref.MultiModalPromptLearner.__init__

        def init(self, cfg, classnames, clip_model):  # ViT-B/16's widths 512 -> 768 replaced by the tiny model's
            original(self, cfg, classnames, clip_model)
            d_t, d_v = tiny_clip.TEXT_WIDTH, tiny_clip.VISION_WIDTH
            gen = torch.Generator().manual_seed(2)
            self.proj = torch.nn.Linear(d_t, d_v)
            self.compound_prompts_text = torch.nn.ParameterList(
                [torch.nn.Parameter(0.02 * torch.randn(self.n_ctx, d_t, generator=gen)) for _ in range(depth - 1)]
            )
            self.compound_prompt_projections = torch.nn.ModuleList(torch.nn.Linear(d_t, d_v) for _ in range(depth - 1))

        ref.MultiModalPromptLearner.__init__ = init
    torch.manual_seed(0)
    cfg = reference_cfg(repo, config, ["DATASET.NAME", "OxfordPets", *opts])
    t = dassl_trainer(Trainer, cfg, data["classnames"])
    m = t.model
    if name == "maple":
        names = {
            "prompt_learner.ctx": "prompt_learner.ctx",
            "text_deep": [f"prompt_learner.compound_prompts_text.{i}" for i in range(depth - 1)],
            "couplings.0.weight": "prompt_learner.proj.weight",
            "couplings.0.bias": "prompt_learner.proj.bias",
        }
        for i in range(depth - 1):
            names[f"couplings.{i + 1}.weight"] = f"prompt_learner.compound_prompt_projections.{i}.weight"
            names[f"couplings.{i + 1}.bias"] = f"prompt_learner.compound_prompt_projections.{i}.bias"
    else:
        names = deep_names(m, name, depth)
    trained = sorted(n for n, p in m.named_parameters() if p.requires_grad)
    out = {
        "settings": {"config": config, "opts": opts, "dataset": "OxfordPets", "depth": depth, "n_ctx": n_ctx},
        "init": named(m, names),
        "trained": trained,
    }
    m.eval()
    with torch.no_grad():
        out["logits"] = m(data["images"])
        if name == "maple":
            prompts, shared, deep_text, deep_vision = m.prompt_learner()
            out["text_features"] = normalize(m.text_encoder(prompts, m.tokenized_prompts, deep_text))
            out["image_features"] = normalize(m.image_encoder(data["images"], shared, deep_vision))
        elif name == "vpt":
            out["text_features"] = normalize(m.embeddings.return_fixed_embeddings())
            out["image_features"] = normalize(m.image_encoder(data["images"]))
        else:
            out["text_features"] = normalize(m.text_encoder(m.prompt_learner(), m.tokenized_prompts))
            out["image_features"] = normalize(m.image_encoder(data["images"]))
    if name == "promptsrc":
        out["teacher_text"] = normalize(m.prompt_learner.fixed_embeddings)
        out["gpa_weights"] = torch.tensor(t.gauss)
        m.train()
        with torch.no_grad():
            ce, text, fixed, zs_image, image, zs_logits, logits = m(data["images"], data["labels"])
            f = torch.nn.functional
            out["loss"] = {
                "ce": ce.item(),
                "text": (f.l1_loss(text, fixed) * cfg.TRAINER.PROMPTSRC.TEXT_LOSS_WEIGHT).item(),
                "image": (f.l1_loss(image, zs_image) * cfg.TRAINER.PROMPTSRC.IMAGE_LOSS_WEIGHT).item(),
                "logits": (
                    f.kl_div(f.log_softmax(logits, 1), f.log_softmax(zs_logits, 1), reduction="sum", log_target=True)
                    / logits.numel()
                ).item(),
            }
    else:
        m.train()
        with torch.no_grad():
            out["loss"] = {
                "ce": (
                    m(data["images"], data["labels"], training=True)
                    if name == "vpt"
                    else m(data["images"], data["labels"])
                ).item()
            }
    out["lr"] = current_lr(t)
    summary = step(t, data["images"], data["labels"])
    out["loss"]["total"] = summary["loss"]
    out["grad"], out["after"] = grads(m, names), named(m, names)
    return out


def gen_clip_lora(name: str, data: dict, repo: Path) -> dict:
    """CLIP-LoRA: the reference's own ``run_lora`` for one iteration (``n_iters × shots`` = 1) on the batch, LoRA
    on q, k, v of both towers at rank 2, α 1. ``clip_lora``: the preset's dropout 0.25, which takes the reference's
    dropout path (``LinearLoRA.forward``: base output + adapter on the dropped-out input), with every mask replaced
    by the identity (masks cannot be matched draw for draw). ``clip_lora_dropout0``: dropout 0, which takes its
    merged-weight path instead. Its B matrices start at zero, which would leave every A without gradient:
    ``apply_lora`` is wrapped to set them to seeded values first. Recorded: the adapters' initial values, the text
    and image features and logits of the training step, the loss, every adapter's gradient and value after the
    AdamW step, and the test logits after it."""
    import argparse as ap

    import clip
    import lora
    import utils

    # NumPy 2 refuses float() of a one-element array, which utils.cls_acc relies on: take its element, as NumPy 1 did
    utils.float = lambda x: float(x.reshape(-1)[0]) if hasattr(x, "reshape") else float(x)
    torch.manual_seed(0)
    clip_model = clip.model.build_model(tiny_clip.state_dict()).float().eval()
    dropout = 0.25 if name == "clip_lora" else 0.0

    class Unmasked(torch.nn.Module):  # the dropout path of LinearLoRA (its p > 0) with an identity mask
        p = dropout

        def forward(self, x):
            return x

    args = ap.Namespace(
        encoder="both",
        position="all",
        params=["q", "k", "v"],
        r=2,
        alpha=1,
        dropout_rate=dropout,
        n_iters=1,
        shots=1,
        lr=2e-4,
        eval_only=False,
        save_path=None,
        backbone="ViT-B/16",
    )
    layers: list = []
    original = lora.apply_lora

    def apply_lora(args, model):  # then B ~ N(0, 0.1²), seeded, so that every A has a gradient
        out = original(args, model)
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for layer in out:
                for proj in ("q_proj", "k_proj", "v_proj"):
                    b = getattr(layer, proj).w_lora_B
                    b.copy_(0.1 * torch.randn(b.shape, generator=gen))
                    if dropout:
                        getattr(layer, proj).dropout = Unmasked()
        layers.extend(out)
        return out

    lora.apply_lora = apply_lora
    names = {}
    for i, tower in enumerate(["text"] * tiny_clip.LAYERS + ["vision"] * tiny_clip.LAYERS):
        for t in "qkv":
            for m in "AB":
                names[f"{tower}_{i % tiny_clip.LAYERS}_{t}_{m}"] = (i, f"{t}_proj", f"w_lora_{m}")
    get = lambda what: {k: getattr(getattr(layers[i], proj), p) for k, (i, proj, p) in names.items()}  # noqa: E731
    calls = {"text": [], "image": []}
    for kind, attr in (("text", "encode_text"), ("image", "encode_image")):
        method = getattr(clip_model, attr)

        def recording(x, _method=method, _kind=kind):
            out = _method(x)
            calls[_kind].append((torch.is_grad_enabled(), out.detach().clone()))
            return out

        setattr(clip_model, attr, recording)
    losses = []
    ce = torch.nn.functional.cross_entropy

    def recording_ce(logits, target, *a, **k):
        loss = ce(logits, target, *a, **k)
        losses.append((logits.detach().clone(), loss.detach().clone()))
        return loss

    torch.nn.functional.cross_entropy = recording_ce
    dataset = types.SimpleNamespace(classnames=list(data["classnames"]), template=["a photo of a {}."])
    train = [(data["images"], data["labels"])]
    test = [(data["val_images"], data["val_labels"])]
    init = {}
    original_adamw = torch.optim.AdamW

    def adamw(params, **kwargs):  # the adapters as the optimiser receives them, before the step
        init.update({k: v.detach().clone() for k, v in get("param").items()})
        return original_adamw(params, **kwargs)

    torch.optim.AdamW = adamw
    with contextlib.redirect_stdout(io.StringIO()):
        lora.run_lora(args, clip_model, 100, dataset, train, test, test)
    text_train = [o for grad, o in calls["text"] if grad]
    image_train = [o for grad, o in calls["image"] if grad]
    assert len(text_train) == 1 and len(image_train) == 1 and len(losses) == 1, (len(text_train), len(losses))
    after = get("param")
    test_text = calls["text"][-1][1]
    test_image = calls["image"][-1][1]
    return {
        "settings": {
            "rank": 2,
            "alpha": 1,
            "dropout": dropout,
            "masks": "identity",
            "targets": ["q", "k", "v"],
            "lr": 2e-4,
            "weight_decay": 1e-2,
            "logit_scale": 100,
            "template": "a photo of a {}.",
        },
        "init": init,
        "text_features": normalize(text_train[0]),
        "image_features": normalize(image_train[0]),
        "logits": losses[0][0],
        "loss": losses[0][1],
        "grad": {k: v.grad.detach().clone() for k, v in after.items()},
        "after": {k: v.detach().clone() for k, v in after.items()},
        "test_logits": 100 * normalize(test_image) @ normalize(test_text).t(),
    }


COPROMPT_DESCRIPTIONS = ("seen from the side", "in bright light", "on a plain background")


def gpt_file_descriptions(classnames: list[str]) -> dict:
    """Three descriptions per class written as CoPrompt's ``gpt_file/oxford_pets_prompt.json`` (which HiCroPL reads
    too) in a new temporary folder, made the working folder (the references read the file relative to it)."""
    import json as _json
    import os

    sentences = {
        c.replace("_", " "): [f"a photo of a {c.replace('_', ' ')}, {s}." for s in COPROMPT_DESCRIPTIONS]
        for c in classnames
    }
    work = Path(tempfile.mkdtemp())
    (work / "gpt_file").mkdir()
    (work / "gpt_file" / "oxford_pets_prompt.json").write_text(_json.dumps(sentences))
    os.chdir(work)
    return sentences


def gen_coprompt(name: str, data: dict, repo: Path) -> dict:
    """CoPrompt: the reference's ``CustomCLIP`` and trainer (``trainers/coprompt.py``) at depth 2 with 2 tokens,
    fp32, W 1 and cosine consistency (its config file), both views fed explicitly (``data["images"]`` and the first
    of ``data["views"]``), the description index k fixed at 1 (``random.randint`` patched), and three descriptions
    per class written to a temporary ``gpt_file/oxford_pets_prompt.json`` (the file it reads from the working
    folder). The hard-coded ViT-B/16 widths (512-d deep text prompts, 768-d couplings, 512-d adapters) are rebuilt
    at the tiny model's widths with the reference's own classes; their initial values are recorded."""
    import random

    import trainers.coprompt as ref

    depth, n_ctx, k = 2, 2, 1
    sentences = gpt_file_descriptions(data["classnames"])
    original = ref.MultiModalPromptLearner.__init__

    def init(self, cfg, classnames, clip_model, clip_model_distill=None):
        original(self, cfg, classnames, clip_model, clip_model_distill)
        d_t, d_v = tiny_clip.TEXT_WIDTH, tiny_clip.VISION_WIDTH
        gen = torch.Generator().manual_seed(2)
        self.proj = torch.nn.Linear(d_t, d_v)
        self.compound_prompts_text = torch.nn.ParameterList(
            [torch.nn.Parameter(0.02 * torch.randn(self.n_ctx, d_t, generator=gen)) for _ in range(depth - 1)]
        )
        self.compound_prompt_projections = torch.nn.ModuleList(torch.nn.Linear(d_t, d_v) for _ in range(depth - 1))

    ref.MultiModalPromptLearner.__init__ = init
    custom = ref.CustomCLIP.__init__

    def custom_init(self, *args, **kwargs):
        custom(self, *args, **kwargs)
        self.adapter_image = ref.Adapter(tiny_clip.EMBED_DIM, 4)
        self.adapter_text = ref.Adapter(tiny_clip.EMBED_DIM, 4)

    ref.CustomCLIP.__init__ = custom_init
    random.randint = lambda a, b: k
    opts = ["TRAINER.CoPrompt.PREC", "fp32", "TRAINER.CoPrompt.PROMPT_DEPTH", depth, "TRAINER.CoPrompt.N_CTX", n_ctx]
    torch.manual_seed(0)
    cfg = reference_cfg(repo, "configs/trainers/coprompt.yaml", ["DATASET.NAME", "OxfordPets", *opts])
    t = dassl_trainer(ref.CoPrompt, cfg, data["classnames"])
    m = t.model
    names = {
        "prompt_learner.ctx": "prompt_learner.ctx",
        "text_deep": [f"prompt_learner.compound_prompts_text.{i}" for i in range(depth - 1)],
        "couplings.0.weight": "prompt_learner.proj.weight",
        "couplings.0.bias": "prompt_learner.proj.bias",
    }
    for i in range(depth - 1):
        names[f"couplings.{i + 1}.weight"] = f"prompt_learner.compound_prompt_projections.{i}.weight"
        names[f"couplings.{i + 1}.bias"] = f"prompt_learner.compound_prompt_projections.{i}.bias"
    for side in ("image", "text"):
        for j in (0, 2):
            names[f"adapter_{side}.{j}.weight"] = f"adapter_{side}.fc.{j}.weight"
    image1, image2, labels = data["images"], data["views"][0], data["labels"]
    out = {
        "settings": {
            "config": "configs/trainers/coprompt.yaml",
            "opts": opts,
            "dataset": "OxfordPets",
            "depth": depth,
            "n_ctx": n_ctx,
            "k": k,
            "W": float(cfg.TRAINER.W),
        },
        "descriptions": sentences,
        "description_features": m.ori_embedding.detach().clone(),
        "init": named(m, names),
        "trained": sorted(n for n, p in m.named_parameters() if p.requires_grad),
        "views": image2,
    }
    f = torch.nn.functional
    m.eval()
    with torch.no_grad():
        out["logits"] = m(image1)
        prompts, shared, deep_text, deep_vision = m.prompt_learner()
        text = m.text_encoder(prompts, m.tokenized_prompts, deep_text)
        text = normalize(m.text_adapter_m * m.adapter_text(text) + (1 - m.text_adapter_m) * text)
        image = m.image_encoder(image1, shared, deep_vision)
        image = normalize(m.image_adapter_m * m.adapter_image(image) + (1 - m.image_adapter_m) * image)
        out["text_features"], out["image_features"] = text, image
        m.train()
        desc = normalize(m.ori_embedding[k])
        frozen = normalize(m.model_distill.encode_image(image2))
        cos = torch.nn.CosineSimilarity(dim=1, eps=1e-07)
        out["loss"] = {
            "ce": f.cross_entropy(m.logit_scale.exp() * image @ text.t(), labels).item(),
            "text": (1.0 - cos(text, desc).mean()).item(),
            "image": (1.0 - cos(image, frozen).mean()).item(),
            "total": m(image1, image2, labels).item(),
        }
    assert abs(out["loss"]["total"] - out["loss"]["ce"] - out["loss"]["text"] - out["loss"]["image"]) < 1e-5
    out["lr"] = current_lr(t)
    with contextlib.redirect_stdout(io.StringIO()):
        t.model.train()
        summary = t.forward_backward({"img": [image1, image2], "label": labels})
    assert abs(summary["loss"] - out["loss"]["total"]) < 1e-5
    out["grad"], out["after"] = grads(m, names), named(m, names)
    return out


def gen_hicropl(name: str, data: dict, repo: Path) -> dict:
    """HiCroPL: the reference's ``CustomCLIP`` and trainer (``trainers/hicropl.py``) with its shipped config
    (``vit_b16_c2_ep50_batch32_16ctx.yaml``: Adam, eps 1e-3, λ 12) at depth 3 (every block of the tiny CLIP), cross
    layer 2 and 2 tokens (so ``ctx_init`` initialises the context, as with the reference's n_ctx <= 4), fp32, and
    three descriptions per class written to a temporary ``gpt_file/oxford_pets_prompt.json``.

    The hard-coded ViT-B/16 widths (768-d vision prompts, proxy token and mapper, 512-d deeper text prompts) are
    rebuilt at the tiny model's widths right after the prompt learner's ``__init__``, with the reference's own
    classes and its own constructions: the vision prompts are ``depth`` Parameters made from one tensor (so they share
    one storage, as in the reference), and so are the proxy tokens of each side. Every random initial value is
    recorded. Each call of the prompt learner rewrites the stored prompts (``.data.copy_``), so the fixture records
    the calls in order: one evaluation forward (``logits``, the stored prompts after it in ``mapped``, features
    recomputed from those stored prompts without another call), then one training step whose loss terms are read
    from the reference's own calls (``F.cross_entropy`` and ``nn.CosineSimilarity`` wrapped to record)."""

    import trainers.hicropl as ref

    depth, cross, n_ctx = 3, 2, 2
    sentences = gpt_file_descriptions(data["classnames"])
    original = ref.CrossModalPromptLearner.__init__

    def init(self, cfg, classnames, clip_model):
        original(self, cfg, classnames, clip_model)
        d_t, d_v, nn = tiny_clip.TEXT_WIDTH, tiny_clip.VISION_WIDTH, torch.nn
        gen = torch.Generator().manual_seed(2)
        deeper = [nn.Parameter(0.02 * torch.randn(self.n_ctx, d_t, generator=gen)) for _ in range(depth - 1)]
        self.cross_prompts_text = nn.ParameterList([self.ctx, *deeper])
        shared = 0.02 * torch.randn(self.n_ctx, d_v, generator=gen)
        self.cross_prompts_visual = nn.ParameterList([nn.Parameter(shared) for _ in range(depth)])
        torch.manual_seed(3)
        self.text2visual_net = ref.CrossPromptAttention(hidden_size=d_v, encoder_hidden_size=d_t, num_attention_heads=8)
        self.visual2text_net = ref.CrossPromptAttention(hidden_size=d_t, encoder_hidden_size=d_v, num_attention_heads=8)
        pool = ref.AttentionPooling(hidden_size=d_v, num_attention_heads=8)
        self.attn_pooling_visual_nets = ref._get_clones(pool, depth - cross)
        token = torch.randn(1, d_v)
        self.visual_proxy_token = nn.ParameterList([nn.Parameter(token) for _ in range(cross, depth)])
        with torch.no_grad():
            for key, p in self.named_parameters():
                if key.split(".")[0] not in UNTRAINED:
                    continue
                if key.endswith("bias") or ".ln_" in f".{key}":  # away from 1 and 0, so that a misplaced one shows
                    p.add_(0.1 * torch.randn(p.shape, generator=gen))
                p.copy_(p.to(torch.float16).to(torch.float32))  # fp16 values, stored as such (a small fixture)

    ref.CrossModalPromptLearner.__init__ = init
    opts = [
        "TRAINER.HICROPL.PREC",
        "fp32",
        "TRAINER.HICROPL.PROMPT_DEPTH",
        depth,
        "TRAINER.HICROPL.CROSS_LAYER",
        cross,
        "TRAINER.HICROPL.N_CTX",
        n_ctx,
    ]
    config = "configs/trainers/HiCroPL/vit_b16_c2_ep50_batch32_16ctx.yaml"
    torch.manual_seed(0)
    cfg = reference_cfg(repo, config, ["DATASET.NAME", "OxfordPets", *opts])
    t = dassl_trainer(ref.HiCroPL, cfg, data["classnames"])
    m = t.model
    pl = m.prompt_learner
    names = {"prompt_learner.ctx": "prompt_learner.ctx"}
    names["text_deep"] = [f"prompt_learner.cross_prompts_text.{i}" for i in range(1, depth)]
    renamed = {  # the reference's names -> vlprompt's (the same modules under other names)
        "cross_prompts_visual.": "vision_ctx.",
        "text_proxy_token.": "text_proxies.",
        "visual_proxy_token.": "vision_proxies.",
        "attn_pooling_text_nets.": "text_pooling.",
        "attn_pooling_visual_nets.": "vision_pooling.",
        "text2visual_net.": "text_to_vision.",
        "visual2text_net.": "vision_to_text.",
    }
    for key, _ in pl.named_parameters():
        for old, new in renamed.items():
            if key.startswith(old):
                names[new + key[len(old) :]] = f"prompt_learner.{key}"
    assert pl.cross_prompts_visual[0].data_ptr() == pl.cross_prompts_visual[depth - 1].data_ptr()  # one storage
    out = {
        "settings": {
            "config": config,
            "opts": opts,
            "dataset": "OxfordPets",
            "depth": depth,
            "cross_layer": cross,
            "n_ctx": n_ctx,
            "lambda": float(cfg.TRAINER.HICROPL.LAMBD),
            "adam_eps": float(cfg.OPTIM.EPS),
        },
        "descriptions": sentences,
        "description_features": pl.fixed_embeddings.detach().clone(),
        "init": named(m, names),
        "trained": sorted(n for n, p in m.named_parameters() if p.requires_grad),
    }
    images, labels = data["images"], data["labels"]
    deep = {"text_deep": names["text_deep"], **{k: v for k, v in names.items() if k.startswith("vision_ctx.")}}
    m.eval()
    with torch.no_grad():
        out["logits"] = m(images)  # one call of the prompt learner: the stored prompts are rewritten
        out["mapped"] = named(m, deep)
        text_input = pl.construct_prompts(
            pl.ctx.unsqueeze(0).expand(pl.n_cls, -1, -1), pl.token_prefix, pl.token_suffix
        )
        text = normalize(m.text_encoder(text_input, m.tokenized_prompts, list(pl.cross_prompts_text)[1:]))
        image = normalize(m.image_encoder(images, pl.cross_prompts_visual[0], list(pl.cross_prompts_visual)[1:]))
        frozen = normalize(pl.ZS_image_encoder(images))
        out["frozen_image_features"] = frozen
        out["text_features"] = normalize(text + pl.fixed_embeddings)
        out["image_features"] = normalize(image + frozen)
    f = torch.nn.functional
    recorded = {}
    cross_entropy, cosine = f.cross_entropy, torch.nn.CosineSimilarity

    def recording_ce(*args, **kwargs):
        value = cross_entropy(*args, **kwargs)
        recorded["ce"] = value.item()
        return value

    class RecordingCosine(cosine):
        def forward(self, a, b):
            value = super().forward(a, b)
            recorded["text" if "text" not in recorded else "image"] = (1.0 - value.mean()).item()
            return value

    f.cross_entropy, torch.nn.CosineSimilarity = recording_ce, RecordingCosine
    out["lr"] = current_lr(t)
    summary = step(t, images, labels)
    f.cross_entropy, torch.nn.CosineSimilarity = cross_entropy, cosine
    out["loss"] = {**recorded, "total": summary["loss"]}
    lam = out["settings"]["lambda"]
    assert abs(recorded["ce"] + lam * (recorded["text"] + recorded["image"]) - summary["loss"]) < 1e-4
    params = dict(m.named_parameters())
    stepped = {
        k: v for k, v in names.items() if all(params[x].grad is not None for x in (v if isinstance(v, list) else [v]))
    }
    after = named(m, names)
    for k in set(names) - set(stepped):  # no gradient (written back outside autograd): unchanged by the step
        assert torch.equal(after[k], out["init"][k]), k
        out["init"][k] = out["init"][k].to(torch.float16)
    out["grad"], out["after"] = grads(m, stepped), {k: after[k] for k in stepped}
    return out


UNTRAINED = (  # HiCroPL's modules that take no gradient in the reference (see gen_hicropl)
    "text2visual_net",
    "visual2text_net",
    "attn_pooling_text_nets",
    "attn_pooling_visual_nets",
    "text_proxy_token",
    "visual_proxy_token",
)


def normalize(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


GENERATORS = {
    "zeroshot": gen_zeroshot,
    "coop": gen_coop,
    "coop_csc_middle": gen_coop,
    "cocoop": gen_cocoop,
    "kgcoop": gen_kgcoop,
    "kgcoop_dtd": gen_kgcoop,
    "prograd": gen_prograd,
    "prograd_pets": gen_prograd,
    "clip_adapter": gen_clip_adapter,
    "tip_adapter": gen_tip_adapter,
    "linear_probe": gen_linear_probe,
    "ivlp": gen_deep,
    "maple": gen_deep,
    "vpt": gen_deep,
    "promptsrc": gen_deep,
    "clip_lora": gen_clip_lora,
    "clip_lora_dropout0": gen_clip_lora,
    "coprompt": gen_coprompt,
    "hicropl": gen_hicropl,
}


def run_one(name: str, refs: Path) -> None:
    """In a child process: put the reference on sys.path, stub, generate, save."""
    paths, recorded = FIXTURES[name]
    sys.path[:0] = [str(refs / p) for p in paths]
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        if name != "linear_probe":  # a script on saved features: no CLIP, nothing to stub
            install_stubs(write_weights_file(Path(tmp)), half_is_float=name != "tip_adapter")
        data = tiny_clip.inputs()
        out = GENERATORS[name](name, data, refs / paths[0])
    out["references"] = [{"repo": REFERENCES[r][0], "commit": REFERENCES[r][1]} for r in recorded]
    out["classnames"] = data["classnames"]
    out.setdefault("labels", data["labels"])
    path = tiny_clip.FIXTURES / f"{name}.pt"
    torch.save(out, path)
    print(f"wrote {path} ({path.stat().st_size / 1e3:.1f} kB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--refs", type=Path, required=True, help="folder holding the reference checkouts")
    parser.add_argument("--only", default="", help="comma-separated fixture names (default: all)")
    parser.add_argument("--new-weights", action="store_true", help="re-create the tiny CLIP and inputs first")
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    refs = args.refs.resolve()
    if args.child == "weights":
        return make_weights(refs)
    if args.child:
        return run_one(args.child, refs)
    wanted = args.only.split(",") if args.only else list(FIXTURES)
    needed = {r for name in wanted for r in FIXTURES.get(name, ([], []))[1]}
    missing = [r for r in REFERENCES if r in needed and not (refs / r).is_dir()]
    if missing:
        sys.exit(f"missing reference checkouts under {refs}: {missing} (fetch {[REFERENCES[r][0] for r in missing]})")
    tiny_clip.FIXTURES.mkdir(exist_ok=True)
    todo = ["weights"] if args.new_weights or not tiny_clip.WEIGHTS.exists() else []
    todo += args.only.split(",") if args.only else list(FIXTURES)
    for name in todo:
        if name != "weights" and name not in FIXTURES:
            sys.exit(f"unknown fixture {name!r}; known: {sorted(FIXTURES)}")
        subprocess.run([sys.executable, __file__, "--refs", str(refs), "--child", name], check=True)


if __name__ == "__main__":
    main()
