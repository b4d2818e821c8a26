"""Regenerate the reference fixtures of methods that extend CoOp or zero-shot CLIP (CuPL, FuDD, TPT, TFUP, ATPrompt,
PRE, MSGCoOp, MoCoOp, OGEN, MVLPT) from their official code.

    python tests/reference/regenerate_extensions.py --refs DIR [--only cupl,fudd,...]

DIR holds checkouts of the repositories in ``REFERENCES`` (folder names as given there) at the commits listed.
As ``regenerate.py`` (whose stubs and tiny CLIP this script reuses), nothing of them is copied into vlprompt: each
fixture is computed in its own child process by the reference's own functions, on the tiny OpenAI-layout CLIP
(``tiny_clip.py``) and the fixed inputs stored with it, and written to ``fixtures/<name>.pt``. What runs and what
is stubbed, beyond ``regenerate.install_stubs`` (no GPU, fp32, the tiny CLIP instead of a download):

* CuPL (``classify_imagenet.py``) and TFUP (``main.py``) are scripts that load ImageNet or a dataset at import
  time; their functions ``zeroshot_classifier_gpt`` and ``TFUP`` are taken from the file's syntax tree and run in
  a namespace holding what the script defines around them (``model``, ``clip``, ``PATH_TO_PROMPTS``, TFUP's
  ``utils``). Neither repository ships a ``clip`` package (they use OpenAI's ``pip`` package): the copy of OpenAI's
  ``clip`` in apple/ml-ogen is put on the path. ``TFUP`` prints its accuracies and returns nothing; its ``cls_acc``
  is wrapped to keep the logits it is given.
* TFUP's ``get_sim_based_kl`` allocates its KL matrix in fp16 (``torch.empty(..., dtype=torch.float16)``); the
  allocation is made in fp32 (the reference's other casts are removed the same way by ``install_stubs``).
  ``dassl.data.datasets.Datum`` (imported by TFUP's utils, used only to relabel data entries) is a plain record.
* FuDD's ``FuDD`` runs as released with its own ``PromptFactory`` reading differential descriptions written in
  its format to a temporary folder (``fixtures`` records them).
* TPT's ``ClipTestTimeTuning`` (its ``clip`` package) and ``test_time_tuning``/``select_confident_samples``/
  ``avg_entropy`` (``tpt_classification.py``, taken from the syntax tree as the script parses arguments and loads
  datasets at import): one tuning step per image on its original and three noisy views (the fixed inputs'
  ``views``), CoOp's context "a photo of a", AdamW at 5e-3, selection 0.5; the GradScaler and autocast of the
  reference are off (CPU, fp32).
* TPT's ``clip.load`` accepts only a JIT archive (with a plain state dict its ``model`` is unbound); its
  ``torch.jit.load`` returns a stand-in whose ``state_dict()`` is the tiny CLIP's, which ``build_model`` builds.
* ATPrompt's ``CoOp_ATP`` runs as ``regenerate.py`` runs the Dassl trainers (its config file, ``extend_cfg``,
  ``build_model``, one ``forward_backward``), with the attributes ``train.py`` chooses for OxfordPets; it needs
  ``yacs`` in the interpreter (as regenerate.py's trainers do).
* PRE runs with its default precision "amp" (its fp32 branch adds an undefined ``self.w * score``), which on a
  CPU disables itself: fp32.
* TPT + CoOp: the same tuning as TPT, the context first set to a trained one (CoOp's ``--load`` in the reference):
  here "a photo of a" plus seeded noise, the same numbers given to vlprompt.
* MoCoOp (``prompting/moe.py``) runs as the Dassl trainers above; ``wandb`` (its logging) is an empty module; the
  templates and groups that its released ``extend_cfg`` does not declare are set on the config; its correction
  vector, sized by the text width where it is added to features of the embedding width (equal at ViT-B/16), is
  rebuilt with the embedding width (zeros, as the reference's). See ``gen_mocoop``.
* OGEN (``trainers/ogen.py``): its missing class-statistics files, its generator hard-coded at width 512, its
  ``torch.rand(1, 512)``, its attention dropout and its call of an unpublished Dassl's ``register_model`` are
  handled as ``gen_ogen`` says; the loss terms as ``OGEN.forward_backward`` adds them.
* MVLPT (``trainers/mvlpt.py``): ELEVATER's loaders and metrics, imported at the top of the file for the other
  data managers, are empty modules (they need its ``vision_datasets`` package); the attributes its
  ``build_data_loader`` sets (``multi_task``) are set by hand; ``average_ckpt`` is taken from scripts/avg_ckpt.py's
  syntax tree (the script loads checkpoints at import).
* Where ``pkg_resources`` is gone (setuptools >= 81), OpenAI's ``clip`` gets ``packaging`` from a stand-in module.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import copy
import io
import json
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import regenerate  # noqa: E402
import tiny_clip  # noqa: E402

REFERENCES = {  # folder under --refs: (repository, commit the fixtures were generated from)
    "CuPL": ("sarahpratt/CuPL", "719619c829792ff8f37298266e941b7f077c7f5c"),
    "fudd": ("BatsResearch/fudd", "32264231fec047eb0bbbf59bfdbc8e6d208a096b"),
    "TPT": ("azshue/TPT", "63ecbace79694205d7884e63fdc3137a200f0b0e"),
    "TFUP": ("wlb12345/TFUP", "d95d4d3c4e5f51110d61f73d059a838c8a574887"),
    "ml-ogen": ("apple/ml-ogen", "ccfa0df57ecac7c3214f82c32291401c51a746ac"),  # its copy of OpenAI's clip
    "PRE": ("minhanh151/PRE", "08be7019e36b1ca62be60dd3336c6b28cfe99780"),
    "MSGCoOp": ("Rain-Bus/MSGCoOp", "a2986699360423a993db43df96ac06b89f90362a"),  # ships Dassl.ProGrad.pytorch
    "ATPrompt": ("zhengli97/ATPrompt", "86980a10041094aeb071badab73597d536a59c73"),  # ships its own Dassl.pytorch
    "mocoop": ("dyabel/mocoop", "04b5d2ad9635febb1e5b9958cfe908b6db151d43"),
    "MVLPT": ("sIncerass/MVLPT", "6fa518bb34055975b537be86a74cbc490a9e3383"),
    "Dassl.pytorch": ("KaiyangZhou/Dassl.pytorch", "c61a1b570ac6333bd50fb5ae06aea59002fb20bb"),
}
# Each fixture: the folders put on sys.path (first wins) and the references it records.
FIXTURES = {
    "cupl": (["CuPL", "ml-ogen"], ["CuPL", "ml-ogen"]),
    "fudd": (["fudd", "ml-ogen"], ["fudd", "ml-ogen"]),
    "tpt": (["TPT"], ["TPT"]),
    "tpt_coop": (["TPT"], ["TPT"]),
    "tfup": (["TFUP", "ml-ogen"], ["TFUP", "ml-ogen"]),
    "atprompt_pets": (["ATPrompt", "ATPrompt/Dassl.pytorch"], ["ATPrompt"]),
    "pre": (["PRE", "MSGCoOp/Dassl.ProGrad.pytorch"], ["PRE", "MSGCoOp"]),  # PRE.md: built on Dassl.ProGrad
    "msgcoop": (["MSGCoOp/MSGCoOp", "MSGCoOp/Dassl.ProGrad.pytorch"], ["MSGCoOp"]),
    "mocoop": (["mocoop", "Dassl.pytorch"], ["mocoop", "Dassl.pytorch"]),
    "mocoop_words_after": (["mocoop", "Dassl.pytorch"], ["mocoop", "Dassl.pytorch"]),
    "ogen": (["ml-ogen", "Dassl.pytorch"], ["ml-ogen", "Dassl.pytorch"]),
    "mvlpt": (["MVLPT", "Dassl.pytorch"], ["MVLPT", "Dassl.pytorch"]),
}
# Class descriptions of the fixture's classes (CuPL's and TFUP's format: class name -> sentences).
DESCRIPTIONS = {
    "car side": ["a car seen from the side.", "a side view of a car with two wheels.", "a long vehicle."],
    "sea lion": ["a sea lion on a rock.", "a marine mammal with flippers."],
    "water lily": ["a water lily floating on a pond.", "a white flower on green leaves.", "a lily pad."],
    "ant": ["a small black insect.", "an ant with six legs.", "an insect on the ground.", "a worker ant."],
}
TEMPLATES = ["a photo of a {}.", "a drawing of a {}.", "itap of the {}."]  # CuPL + e's template pool
# FuDD's files for the fixture's classes: two pairs have sentences, the others fall back to the default prompt.
FUDD_PAIRS = {
    "0_1": {
        "classes": [0, 1],
        "prompt_pairs": [
            {"prompt_pair": ["a photo of a car side, which has wheels.", "a photo of a sea lion, which has flippers."]},
            {"prompt_pair": ["a photo of a car side, made of metal.", "a photo of a sea lion, with wet fur."]},
        ],
    },
    "2_3": {
        "classes": [3, 2],
        "prompt_pairs": [{"prompt_pair": ["a photo of an ant, an insect.", "a photo of a water lily, a flower."]}],
    },
}


def function_from(path: Path, name: str, namespace: dict):
    """Compile the top-level function ``name`` of the script ``path`` into ``namespace`` (the script itself is not
    run: it loads datasets at import)."""
    tree = ast.parse(path.read_text())
    node = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name)
    exec(compile(ast.Module(body=[node], type_ignores=[]), str(path), "exec"), namespace)
    return namespace[name]


def tiny_model():
    import clip

    with contextlib.redirect_stdout(io.StringIO()):
        model, _ = clip.load("ViT-B/16", device="cpu", jit=False)
    return model.float().eval()


def gen_cupl(data: dict, refs: Path, tmp: Path) -> dict:
    import clip
    from tqdm import tqdm

    names = [c.replace("_", " ") for c in data["classnames"]]
    prompts = tmp / "CuPL_image_prompts.json"
    prompts.write_text(json.dumps(DESCRIPTIONS))
    model = tiny_model()
    ns = {"torch": torch, "clip": clip, "json": json, "tqdm": tqdm, "model": model, "PATH_TO_PROMPTS": str(prompts)}
    classifier = function_from(refs / "CuPL" / "classify_imagenet.py", "zeroshot_classifier_gpt", ns)
    with torch.no_grad():
        features = model.encode_image(data["images"])
        features = features / features.norm(dim=-1, keepdim=True)
        cupl = classifier(data["classnames"], names, TEMPLATES, False)  # (D, C)
        both = classifier(data["classnames"], names, TEMPLATES, True)
    return {
        "settings": {"descriptions": DESCRIPTIONS, "templates": TEMPLATES},
        "text_features": cupl.T.contiguous(),
        "text_features_ensemble": both.T.contiguous(),
        "logits": 100.0 * features @ cupl,  # classify_imagenet.py's logits (CuPL's scale 100)
    }


def gen_fudd(data: dict, refs: Path, tmp: Path) -> dict:
    sys.path.insert(0, str(refs / "fudd"))
    from fudd_model import FuDD
    from prompt_factory import PromptFactory

    names = list(data["classnames"])
    (tmp / "clip_templates.json").write_text(json.dumps(["a photo of a {}."]))
    (tmp / "tiny_prompt_pairs.json").write_text(json.dumps(FUDD_PAIRS))
    (tmp / "tiny_class_names.json").write_text(json.dumps(names))
    factory = PromptFactory(str(tmp), "tiny")
    with contextlib.redirect_stdout(io.StringIO()):
        model = FuDD(top_k=3, prompt_factory=factory, backbone="ViT-B/16", follow_up=True, step_one_source="x")
    model.clip_model.float().eval()
    with torch.no_grad():
        logits, preds = model(data["images"])
        model.follow_up = False
        step_one, _ = model(data["images"])
    return {
        "settings": {"top_k": 3, "pairs": json.dumps(FUDD_PAIRS), "class_names": names},
        "logits": logits,  # (B, k): cosine similarities with the top-k classes' differential embeddings
        "preds": preds,  # (B, k): their class indices
        "step_one_logits": step_one,
    }


def gen_tpt(data: dict, refs: Path, tmp: Path, trained: bool = False) -> dict:
    sys.path.insert(0, str(refs / "TPT"))
    import numpy as np
    from clip.custom_clip import ClipTestTimeTuning

    # TPT's clip.load reads the text width from the JIT archive it expects (a state dict leaves ``model`` unbound):
    # the stand-in "archive" is the tiny CLIP's state dict behind .eval() and .state_dict()
    load = torch.load
    torch.jit.load = lambda path, map_location=None: types.SimpleNamespace(
        eval=lambda: types.SimpleNamespace(state_dict=lambda: load(path, map_location="cpu"))
    )
    ns = {"torch": torch, "np": np}
    for fn in ("select_confident_samples", "avg_entropy", "test_time_tuning"):
        function_from(refs / "TPT" / "tpt_classification.py", fn, ns)
    args = types.SimpleNamespace(cocoop=False, tta_steps=1, selection_p=0.5)
    scaler = torch.cuda.amp.GradScaler(enabled=False)
    ns["torch"] = types.SimpleNamespace(**{k: getattr(torch, k) for k in dir(torch) if not k.startswith("__")})
    ns["torch"].cuda = types.SimpleNamespace(amp=types.SimpleNamespace(autocast=contextlib.nullcontext))
    with contextlib.redirect_stdout(io.StringIO()):
        model = ClipTestTimeTuning(
            "cpu", list(data["classnames"]), None, arch="ViT-B/16", n_ctx=4, ctx_init="a_photo_of_a"
        )
    model.float()
    start = None
    if trained:  # TPT + CoOp: tuning starts from a trained context (the reference loads CoOp's checkpoint)
        gen = torch.Generator().manual_seed(3)
        start = model.prompt_learner.ctx.detach() + 0.02 * torch.randn(model.prompt_learner.ctx.shape, generator=gen)
        with torch.no_grad():
            model.prompt_learner.ctx.copy_(start)
            model.prompt_learner.ctx_init_state = start.clone()
    for p in model.parameters():
        p.requires_grad_(False)
    model.prompt_learner.ctx.requires_grad_(True)
    optimizer = torch.optim.AdamW([model.prompt_learner.ctx], lr=5e-3)
    init_state = copy.deepcopy(optimizer.state_dict())  # test_time_adapt_eval's optim_state
    logits, losses, contexts = [], [], []
    for i in range(len(data["images"])):
        views = torch.cat([data["images"][i : i + 1], data["views"][:, i]])  # original first, as the reference
        with torch.no_grad():
            model.reset()
        optimizer.load_state_dict(copy.deepcopy(init_state))
        with torch.no_grad():
            out = model(views)
            chosen, _ = ns["select_confident_samples"](out, args.selection_p)
            losses.append(ns["avg_entropy"](chosen))
        ns["test_time_tuning"](model, views, optimizer, scaler, args)
        contexts.append(model.prompt_learner.ctx.detach().clone())
        with torch.no_grad():
            logits.append(model(data["images"][i : i + 1])[0])
    return {
        "settings": {"n_ctx": 4, "ctx_init": "a photo of a", "lr": 5e-3, "selection": 0.5, "steps": 1},
        **({"start_context": start} if trained else {}),
        "initial_loss": torch.stack(losses),
        "contexts": torch.stack(contexts),
        "logits": torch.stack(logits),
    }


def gen_tfup(data: dict, refs: Path, tmp: Path) -> dict:
    sys.modules["dassl"] = types.ModuleType("dassl")
    sys.modules["dassl.data"] = types.ModuleType("dassl.data")
    datasets = types.ModuleType("dassl.data.datasets")
    datasets.Datum = lambda **kw: types.SimpleNamespace(**kw)
    sys.modules["dassl.data.datasets"] = datasets
    import utils

    to = torch.Tensor.to  # TFUP moves tensors to torch.device("cuda:0"), not to a string
    torch.Tensor.to = lambda self, *a, **k: to(
        self, *("cpu" if isinstance(x, torch.device) and x.type == "cuda" else x for x in a), **k
    )
    empty = torch.empty
    torch.empty = lambda *a, **k: empty(*a, **{**k, "dtype": torch.float32} if k.get("dtype") == torch.float16 else k)
    names = [c.replace("_", " ") for c in data["classnames"]]
    prompts = tmp / "prompts.json"
    prompts.write_text(json.dumps(DESCRIPTIONS))
    tfup = types.SimpleNamespace(PATH_TO_PROMPTS=str(prompts), alpha=0.3, beta=1.0)
    cfg = types.SimpleNamespace(
        DATASET=types.SimpleNamespace(NAME="OfficeHome"), TRAINER=types.SimpleNamespace(TFUP=tfup)
    )
    model = tiny_model()
    images = torch.cat([data["images"], data["val_images"]])  # the unlabelled pool (transductive: also the test)
    labels = torch.cat([data["labels"], data["val_labels"]])
    with torch.no_grad():
        features = model.encode_image(images)  # save_clip_image_features keeps them unnormalised
        weights = utils.get_clip_weights(cfg, model, names)
        pool = [
            types.SimpleNamespace(impath=str(i), label=int(y), domain=0, classname="") for i, y in enumerate(labels)
        ]
        shots = min(16, max(9, int(len(pool) * 0.3 / len(names))))
        with contextlib.redirect_stdout(io.StringIO()):
            utils.refine_few_shots_without_label(names, weights, features, labels, pool, shots, str(tmp))
        cache_keys = torch.load(tmp / "cache_keys.pt")
        cache_values = torch.nn.functional.one_hot(torch.load(tmp / "cache_values.pt").long()).float()
        seen = []
        ns = dict(vars(utils))
        ns["cls_acc"] = lambda output, target, topk=1: seen.append(output.clone()) or 0.0
        run = function_from(refs / "TFUP" / "main.py", "TFUP", ns)
        with contextlib.redirect_stdout(io.StringIO()):
            run(cfg, cache_keys, cache_values, features, labels, weights)
    return {
        "settings": {"descriptions": DESCRIPTIONS, "alpha": 0.3, "beta": 1.0, "cache_shots": shots},
        "unlabelled_features": features,
        "text_weights": weights,
        "cache_keys": cache_keys,
        "cache_values": cache_values,
        "zeroshot_logits": seen[0],
        "logits": seen[1],
    }


def gen_atprompt(data: dict, refs: Path, tmp: Path) -> dict:
    """CoOp_ATP (trainers/coop_atp.py) on OxfordPets' attributes, as scripts/coop/atprompt_base2new_train.sh runs it:
    2 soft tokens per attribute and 2 before the class, configs/trainers/CoOp/vit_b16.yaml; one training step."""
    from trainers.coop_atp import CoOp_ATP

    repo = refs / "ATPrompt"
    opts = ["TRAINER.COOP.N_CTX", 2, "TRAINER.COOP.CSC", False, "TRAINER.COOP.CLASS_TOKEN_POSITION", "end"]
    opts += ["TRAINER.ATPROMPT.USE_ATPROMPT", True, "TRAINER.ATPROMPT.N_ATT1", 2, "TRAINER.ATPROMPT.N_ATT2", 2]
    opts += ["TRAINER.ATPROMPT.N_ATT3", 2, "TRAINER.ATPROMPT.ATT_NUM", 2]  # train.py's choice for OxfordPets:
    opts += ["TRAINER.ATPROMPT.ATT1_TEXT", "playfulness", "TRAINER.ATPROMPT.ATT2_TEXT", "energy"]
    torch.manual_seed(0)
    cfg = regenerate.reference_cfg(
        repo, "configs/trainers/CoOp/vit_b16.yaml", ["TRAINER.COOP.PREC", "fp32", "DATASET.NAME", "OxfordPets", *opts]
    )
    t = regenerate.dassl_trainer(CoOp_ATP, cfg, data["classnames"])
    names = {
        "prompt_learner.slots.att0": "prompt_learner.ctx_att1",
        "prompt_learner.slots.att1": "prompt_learner.ctx_att2",
    }
    names["prompt_learner.slots.ctx"] = "prompt_learner.ctx"
    settings = {"config": "configs/trainers/CoOp/vit_b16.yaml", "opts": opts, "dataset": "OxfordPets"}
    return one_step_record(t, data, names, settings)


def one_step_record(trainer, data: dict, names: dict, settings: dict) -> dict:
    """A CoOp-like trainer's fixture: initial parameters, text features, logits, the lr and cross-entropy of one
    ``forward_backward``, the gradient and the parameters after it (``names``: vlprompt's -> the reference's)."""
    m = trainer.model
    out = {"settings": settings, "init": regenerate.named(m, names)}
    with torch.no_grad():
        out["text_features"] = regenerate.normalize(m.text_encoder(m.prompt_learner(), m.tokenized_prompts))
        out["logits"] = m(data["images"])
    out["lr"] = regenerate.current_lr(trainer)
    out["loss"] = {"ce": regenerate.step(trainer, data["images"], data["labels"])["loss"]}
    out["grad"], out["after"] = regenerate.grads(m, names), regenerate.named(m, names)
    out["labels"] = data["labels"]
    return out


def gen_pre(data: dict, refs: Path, tmp: Path) -> dict:
    """PRE (trainers/pre.py) as scripts/base2new_train.sh runs it: configs/trainers/PRE/vit_b16_ep50_ctxv1.yaml,
    encoder LSTM1 with the residual, one shared network; its default precision "amp" (the fp32 branch of its
    forward_backward adds an undefined ``self.w * score``), which on the CPU is fp32; one training step."""
    from trainers.pre import PRE

    repo = refs / "PRE"
    opts = ["TRAINER.PRE.ENCODER", "LSTM1", "TRAINER.PRE.RESIDUAL", True, "TRAINER.PRE.SEPARATE", False]
    torch.manual_seed(0)
    config = "configs/trainers/PRE/vit_b16_ep50_ctxv1.yaml"
    cfg = regenerate.reference_cfg(repo, config, ["DATASET.NAME", "Caltech101", *opts])
    with contextlib.redirect_stderr(io.StringIO()):
        t = regenerate.dassl_trainer(PRE, cfg, data["classnames"])
    lstm = ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")
    names = {"prompt_learner.ctx": "prompt_learner.ctx"}
    for w in (*lstm, *(f"{n}_reverse" for n in lstm)):
        names[f"prompt_encoder.lstm.{w}"] = f"prompt_learner.encoder_network.lstm_head.{w}"
    return one_step_record(t, data, names, {"config": config, "opts": opts})


def gen_msgcoop(data: dict, refs: Path, tmp: Path) -> dict:
    """MSGCoOp (MSGCoOp/trainers/msgcoop.py) as scripts/base2new_train.sh runs it (configs/trainers/MSGCoOp/
    vit_b16_ep100_ctxv1.yaml, 4 prompts of 4 tokens, the weights given as its arguments: W 8, DIV_WEIGHT 1), its
    descriptions read from ./desc/gpt-4.1/descriptions_top4/Caltech101.json (written to a temporary working
    directory from ``DESCRIPTIONS``); precision fp16 (train.py's default), fp32 by the stubs; one training step."""
    import os

    from trainers.msgcoop import MSGCoOp

    repo = refs / "MSGCoOp" / "MSGCoOp"
    folder = tmp / "desc" / "gpt-4.1" / "descriptions_top4"
    folder.mkdir(parents=True)
    (folder / "Caltech101.json").write_text(json.dumps(DESCRIPTIONS))
    opts = ["TRAINER.COOP.N_CTX", 4, "TRAINER.COOP.CSC", False, "TRAINER.COOP.W", 8.0]
    opts += ["TRAINER.COOP.DIV_WEIGHT", 1.0, "TRAINER.COOP.N_PROMPTS", 4]
    config = "configs/trainers/MSGCoOp/vit_b16_ep100_ctxv1.yaml"
    torch.manual_seed(0)
    cfg = regenerate.reference_cfg(repo, config, ["DATASET.NAME", "Caltech101", *opts])
    cwd = os.getcwd()
    os.chdir(tmp)
    try:
        t = regenerate.dassl_trainer(MSGCoOp, cfg, data["classnames"])
    finally:
        os.chdir(cwd)
    m = t.model
    names = {"prompt_learner.ctx": "prompt_learner.ctx"}
    out = {
        "settings": {"config": config, "opts": opts, "descriptions": DESCRIPTIONS},
        "init": regenerate.named(m, names),
    }
    with torch.no_grad():
        logits, score, diversity = m(data["images"])
        out["logits"], out["anchors"] = logits, regenerate.normalize(m.ori_embedding)
    out["lr"] = regenerate.current_lr(t)
    summary = regenerate.step(t, data["images"], data["labels"])
    ce = torch.nn.functional.cross_entropy(logits, data["labels"]).item()
    out["loss"] = {"total": summary["loss"], "ce": ce, "kg": score.item(), "diversity": diversity.item()}
    out["grad"], out["after"] = regenerate.grads(m, names), regenerate.named(m, names)
    out["labels"] = data["labels"]
    return out


# MoCoOp's templates for the fixtures, in groups (1, 2, 2); the experts start from the groups' first templates.
# mocoop: words before the class name only, every word one BPE token (where the reference's word count and
# vlprompt's token count agree). mocoop_words_after: one expert with words after the class name, whose slot in the
# reference also takes the end-of-text position (a known difference, see vlprompt.methods.mocoop).
MOCOOP_TEMPLATES = {
    "mocoop": ["a photo of a {}.", "a photo of many {}.", "a good photo of the {}.", "art of the {}.", "itap of a {}."],
    "mocoop_words_after": [
        "a photo of a {}.",
        "a {} in a video game.",
        "a photo of many {}.",
        "art of the {}.",
        "a good photo of the {}.",
    ],
}
MOCOOP_GROUPS = [1, 2, 2]


def gen_mocoop(data: dict, refs: Path, tmp: Path, name: str = "mocoop") -> dict:
    """MoCoOp (prompting/moe.py) with configs/MoCoOp/vit_b16_c4_ep25_batch32_cls_t2t_5_wcl_25_g1_b_lr32.yaml
    (text-to-text weight 5, gate weight 1, correction vector on, precision "amp": on the CPU autocast and the
    GradScaler switch themselves off, the gradient is still clipped at norm 1), the image encoder's LayerNorms
    frozen (``FINETUNE_VIT_LN`` False: vlprompt trains on cached features), all classes (``SUBSAMPLE_CLASSES``
    "all", so the text-to-text loss runs over the training classes, as vlprompt's); one training step.

    The released ``extend_cfg`` declares neither ``GROUPS`` nor ``PROMPTS``, which moe.py reads (the dataset
    files name the templates ``LASP_PROMPTS``): both are set on the config before the trainer is built. The
    correction vector ``w`` is sized by the text width (``ctx_dim``) but added to the projected text features;
    at ViT-B/16 both are 512, on the tiny CLIP 128 and 32: it is rebuilt (zeros, as the reference's) with the
    embedding width right after the prompt learner's ``__init__``, before the optimiser is made."""
    sys.modules.setdefault("wandb", types.ModuleType("wandb"))  # train.py and moe.py log to Weights & Biases
    from prompting import moe
    from prompting.moe import MoCoOp, increase_top2_logits

    original = moe.PromptLearner.__init__

    def init(self, cfg, classnames, clip_model, *args):
        original(self, cfg, classnames, clip_model, *args)
        self.w = torch.nn.Parameter(torch.zeros(1, clip_model.visual.output_dim))

    moe.PromptLearner.__init__ = init

    repo = refs / "mocoop"
    config = "configs/MoCoOp/vit_b16_c4_ep25_batch32_cls_t2t_5_wcl_25_g1_b_lr32.yaml"
    opts = ["TRAINER.MoCoOp.FINETUNE_VIT_LN", False, "DATASET.SUBSAMPLE_CLASSES", "all"]
    torch.manual_seed(0)
    cfg = regenerate.reference_cfg(repo, config, ["DATASET.NAME", "Caltech101", *opts])
    templates = MOCOOP_TEMPLATES[name]
    cfg.TRAINER.MoCoOp.PROMPTS = list(templates)
    cfg.TRAINER.MoCoOp.GROUPS = list(MOCOOP_GROUPS)
    classes = list(data["classnames"])
    t = regenerate.dassl_trainer(MoCoOp, cfg, classes, all_class_names=classes)
    m = t.model
    pl = m.prompt_learner
    firsts = [sum(MOCOOP_GROUPS[:g]) for g in range(len(MOCOOP_GROUPS))]
    params = {"correction": "prompt_learner.w", "router.weight": "prompt_learner.gate.weight"}
    params["router.bias"] = "prompt_learner.gate.bias"
    for e in range(len(firsts)):  # an empty part (no words before or after the class name) is no slot in vlprompt
        for part in ("before", "after"):
            if getattr(pl, f"ctx_{part}_{e}").shape[0]:
                params[f"experts.{e}.slots.{part}"] = f"prompt_learner.ctx_{part}_{e}"
    out = {
        "settings": {"config": config, "opts": opts, "templates": templates, "groups": MOCOOP_GROUPS},
        "init": regenerate.named(m, params),
    }
    m.eval()
    with torch.no_grad():
        image = regenerate.normalize(m.image_encoder(data["images"]))
        mixed, gate, _, experts = m.compute_gated_text_feature(image, m.tokenized_prompts_all_experts)
        out["expert_text_features"], out["prototypes"], out["gate"] = experts, m.group_features, gate
        out["logits"] = m(data["images"])
    with torch.no_grad():  # the loss terms as forward() adds them in training
        ce, _ = m.loss(image, mixed, data["labels"], t=m.logit_scale, instance_loss=True)
        t2t, _ = m.forward_text_to_text(experts, indices=None)
        target = torch.einsum("bd, gbd->bg", image, m.group_features[:, data["labels"]])
        routing = F.cross_entropy(gate, F.softmax(increase_top2_logits(target, increment=10.0), dim=1))
    out["lr"] = regenerate.current_lr(t)
    summary = regenerate.step(t, data["images"], data["labels"])
    out["loss"] = {"total": summary["loss"], "ce": ce.item(), "t2t": t2t.item(), "gate": routing.item()}
    out["grad_norm"] = float(torch.stack([p.grad.norm() for p in m.parameters() if p.grad is not None]).norm())
    out["grad"], out["after"] = regenerate.grads(m, params), regenerate.named(m, params)
    out["labels"] = data["labels"]
    return out


OGEN_NEW_CLASSES = ["red_panda", "sun_flower", "cup", "dog"]  # the names OGEN reads of classes without images


def gen_ogen(data: dict, refs: Path, tmp: Path) -> dict:
    """OGEN (trainers/ogen.py) with configs/trainers/OGEN/vit_b16_ep50_ctxv1.yaml as scripts/ogen/
    base2new_train_ep50.sh runs it (4 tokens from "a photo of a", k = 3, new class names given; precision fp16,
    train.py's default, fp32 by the stubs): one step in the generator's warm phase (epoch 0) and one in the joint
    phase (epoch 10 = 20% of 50), each from the same initial state. Adapted to run here:

    * the class statistics that ``CustomCLIP`` loads from ./data/<dataset>/features_{mean,std}_base.pth (not
      shipped) are written to a temporary working directory: the per-class mean and standard deviation (1/N) of
      the batch's normalised image features, as vlprompt computes them from its feature bank;
    * the generator's attention and FFN are hard-coded at width 512 (ViT-B/16's): rebuilt at the tiny model's 32
      with the reference's own classes right after the prompt learner's ``__init__``, attention dropout 0 (its
      random masks cannot be matched across programs; vlprompt's ``dropout`` option is set to 0 as well);
    * ``torch.rand(1, 512)`` (the neighbours' feature draw u, width hard-coded) returns a recorded u of width 32;
      in the joint phase the reference draws u twice (``forward`` is called again for the MSE targets, a fresh
      draw for the neighbours' target) and both draws return the same u, the single draw vlprompt takes (the two
      are independent draws of one distribution);
    * ``register_model`` is called with a teacher model (the released code needs a modified Dassl that is not
      published): the teacher is dropped (it is never used in training).
    """
    import os

    from dassl.engine.trainer import TrainerBase
    from trainers import ogen

    dim = tiny_clip.EMBED_DIM
    original = ogen.PromptLearner.__init__

    def init(self, *args):
        original(self, *args)
        self.multihead_attn = torch.nn.MultiheadAttention(dim, 4, dropout=0.0, batch_first=True)
        self.ffn = ogen.MLP(dim, dim, dim, 2)

    ogen.PromptLearner.__init__ = init
    ogen.OGEN.register_model = lambda self, name, model, teacher, optim, sched: TrainerBase.register_model(
        self, name, model, optim, sched
    )
    u = torch.rand(1, dim, generator=torch.Generator().manual_seed(5))
    torch.rand = lambda *size, **kwargs: u.clone()
    labels = data["labels"]
    with torch.no_grad():
        features = regenerate.normalize(tiny_model().encode_image(data["images"]))
    n_cls = len(data["classnames"])
    mean = torch.stack([features[labels == c].mean(0) for c in range(n_cls)])
    std = torch.stack([features[labels == c].std(0, unbiased=False) for c in range(n_cls)])
    (tmp / "data" / "caltech-101").mkdir(parents=True)
    torch.save(mean, tmp / "data" / "caltech-101" / "features_mean_base.pth")
    torch.save(std, tmp / "data" / "caltech-101" / "features_std_base.pth")
    config = "configs/trainers/OGEN/vit_b16_ep50_ctxv1.yaml"
    opts = ["DATASET.SUBSAMPLE_CLASSES", "base"]
    cfg = regenerate.reference_cfg(refs / "ml-ogen", config, ["DATASET.NAME", "Caltech101", *opts])
    params = {"prompt_learner.ctx": "prompt_learner.ctx"}
    for w in ("in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"):
        params[f"generator.attn.{w}"] = f"prompt_learner.multihead_attn.{w}"
    for ours, theirs in (("0", "0"), ("2", "1")):
        for w in ("weight", "bias"):
            params[f"generator.ffn.{ours}.{w}"] = f"prompt_learner.ffn.layers.{theirs}.{w}"

    def trainer():
        torch.manual_seed(0)
        cwd = os.getcwd()
        os.chdir(tmp)
        try:
            return regenerate.dassl_trainer(ogen.OGEN, cfg, data["classnames"], _classnames_new=OGEN_NEW_CLASSES)
        finally:
            os.chdir(cwd)

    t = trainer()
    m = t.model
    k = m.k
    out = {
        "settings": {"config": config, "opts": opts, "new_classes": OGEN_NEW_CLASSES, "k": k, "dropout": 0.0},
        "init": regenerate.named(m, params),
        "class_mean": mean,
        "class_std": std,
        "neighbours": m.closest_classes_base,
        "u": u,
        "labels": labels,
    }
    m.eval()
    with torch.no_grad():
        out["text_features"] = regenerate.normalize(m.text_encoder(m.prompt_learner(), m.tokenized_prompts))
        out["new_text_features"] = regenerate.normalize(
            m.text_encoder(m.prompt_learner.forward_new(), m.tokenized_prompts_new)
        )
        out["logits"] = m(data["images"], aug=False)
        logits, z, y, z_nb, y_nb, z_new, y_new, g, image, g_nb, values = m(data["images"], label=labels)
        gen = F.mse_loss(g, image) * 512 + F.mse_loss(g_nb, values) * 512
        syn = F.cross_entropy(z, y) * 0.25 + F.cross_entropy(z_nb, y_nb) * 0.25 / k
        syn = syn + F.cross_entropy(logits, labels) * 0.25
        new = F.cross_entropy(z_new, y_new) * 0.5 / k
    out["generated"], out["new_classes_near"] = g, y_new
    out["lr"] = regenerate.current_lr(t)
    for phase, epoch in (("warm", 0), ("joint", int(cfg.OPTIM.MAX_EPOCH * 0.2))):
        t = trainer() if phase == "joint" else t
        t.model.train()
        with contextlib.redirect_stdout(io.StringIO()):
            summary = t.forward_backward({"img": data["images"], "label": labels}, epoch=epoch)
        terms = {"gen": gen.item()} if phase == "warm" else {"gen": gen.item(), "syn": syn.item(), "new": new.item()}
        grads = {n: p.grad for n, p in t.model.named_parameters()}
        out[phase] = {
            "epoch": epoch,
            "loss": {"total": summary["loss"], **terms},
            "grad": {ours: grads[theirs].clone() for ours, theirs in params.items() if grads[theirs] is not None},
            "after": regenerate.named(t.model, params),
        }
    return out


MVLPT_SECOND_SOURCE = [
    "red_panda",
    "sun_flower",
    "cup",
]  # the second source dataset's classes (the first: the fixture's)
MVLPT_SECOND_LABELS = [0, 1, 2, 0, 1, 2]  # its labels for the fixture's validation images 0-5


def gen_mvlpt(data: dict, refs: Path, tmp: Path) -> dict:
    """MVLPT's multitask stage, MCoOp (trainers/mvlpt.py) as scripts/mvlpt/main_mt_coopdata_cut.sh runs it with
    configs/trainers/MVLPT/vit_b16.yaml: 16 context tokens from N(0, 0.02²), the class name in the middle, the
    sources' label spaces concatenated (``MVLPTCOOPDataManager``: the second source's labels offset by the first's
    class count), the cut context length; precision fp16 (train.py's default), fp32 by the stubs. Two sources:
    the fixture's images and classes, and its validation images 0-5 as a second dataset of 3 classes; one
    training step on the 12 images. Then the source-prompt averaging of scripts/avg_ckpt.py (``average_ckpt``) on
    three checkpoints whose contexts are the initial one plus seeded noise."""
    # ELEVATER's loaders and metrics (used by the other data managers), which need its vision_datasets package
    bench = {"evaluation": ("construct_dataloader", "construct_multitask_dataset")}
    bench["datasets"] = ("class_map_metric", "get_metric")
    sys.modules["trainers.vision_benchmark"] = types.ModuleType("trainers.vision_benchmark")
    for module, names in bench.items():
        stub = sys.modules[f"trainers.vision_benchmark.{module}"] = types.ModuleType(module)
        for name in names:
            setattr(stub, name, None)
    import numpy as np
    from trainers.mvlpt import MVLPT

    repo = refs / "MVLPT"
    config = "configs/trainers/MVLPT/vit_b16.yaml"
    opts = ["TRAINER.MVLPT.VPT.N_CTX", 0, "TRAINER.MVLPT.COOP.N_CTX", 16, "TRAINER.MVLPT.COOP.CLASS_TOKEN_POSITION"]
    opts += ["middle", "TRAINER.MVLPT.COOP.CSC", False, "TRAINER.CUT_CONTEXTLEN", True]
    opts += ["DATASET.COOP", True, "DATASET.MULTITASK", True]
    classnames = list(data["classnames"]) + MVLPT_SECOND_SOURCE
    images = torch.cat([data["images"], data["val_images"][:6]])
    labels = torch.cat([data["labels"], torch.tensor(MVLPT_SECOND_LABELS) + len(data["classnames"])])
    domains = torch.tensor([0] * 6 + [1] * 6)
    torch.manual_seed(0)
    cfg = regenerate.reference_cfg(repo, config, ["DATASET.NAME", "Caltech101", *opts])
    t = regenerate.dassl_trainer(MVLPT, cfg, classnames)
    t.multi_task, t.multi_task_label_pertask = True, False  # what its build_data_loader sets
    m = t.model
    params = {"prompt_learner.ctx": "prompt_learner.ctx"}
    out = {
        "settings": {"config": config, "opts": opts, "sources": [list(data["classnames"]), MVLPT_SECOND_SOURCE]},
        "init": regenerate.named(m, params),
        "labels": labels,
    }
    m.eval()
    with torch.no_grad():
        prompts = m.prompt_learner.forward_coop(m.prompt_learner.ctx)
        out["text_features"] = regenerate.normalize(m.text_encoder(prompts, m.tokenized_prompts))
        out["logits"] = m(images)
    out["lr"] = regenerate.current_lr(t)
    m.train()
    with contextlib.redirect_stdout(io.StringIO()):
        summary = t.forward_backward({"img": images, "label": labels, "domain": domains})
    out["loss"] = {"ce": summary["loss"]}
    out["grad"], out["after"] = regenerate.grads(m, params), regenerate.named(m, params)
    gen = torch.Generator().manual_seed(7)
    start = out["init"]["prompt_learner.ctx"]
    contexts = torch.stack([start + 0.05 * torch.randn(start.shape, generator=gen) for _ in range(3)])
    checkpoints = [{"state_dict": {"ctx": c}, "epoch": 200, "val_result": 0.5} for c in contexts]
    state = {key: [c[key] for c in checkpoints] for key in checkpoints[0]}
    average = function_from(repo / "scripts" / "avg_ckpt.py", "average_ckpt", {"np": np, "torch": torch})
    with contextlib.redirect_stdout(io.StringIO()):
        out["source_contexts"], out["averaged_context"] = contexts, average(state)["state_dict"]["ctx"]
    return out


GENERATORS = {
    "mvlpt": gen_mvlpt,
    "ogen": gen_ogen,
    "mocoop": gen_mocoop,
    "mocoop_words_after": lambda data, refs, tmp: gen_mocoop(data, refs, tmp, "mocoop_words_after"),
    "msgcoop": gen_msgcoop,
    "pre": gen_pre,
    "tpt_coop": lambda data, refs, tmp: gen_tpt(data, refs, tmp, trained=True),
    "cupl": gen_cupl,
    "fudd": gen_fudd,
    "tpt": gen_tpt,
    "tfup": gen_tfup,
    "atprompt_pets": gen_atprompt,
}


def run_one(name: str, refs: Path) -> None:
    paths, recorded = FIXTURES[name]
    sys.path[:0] = [str(refs / p) for p in paths]
    torch.set_num_threads(1)
    try:
        import pkg_resources  # noqa: F401  (OpenAI's clip reads packaging.version from it)
    except ImportError:  # setuptools >= 81 dropped it: the same object from the packaging package
        import packaging.version

        sys.modules["pkg_resources"] = types.SimpleNamespace(packaging=packaging)
    with tempfile.TemporaryDirectory() as tmp:
        regenerate.install_stubs(regenerate.write_weights_file(Path(tmp)))
        data = tiny_clip.inputs()
        out = GENERATORS[name](data, refs, Path(tmp))
    out["references"] = [{"repo": REFERENCES[r][0], "commit": REFERENCES[r][1]} for r in recorded]
    out["classnames"] = data["classnames"]
    path = tiny_clip.FIXTURES / f"{name}.pt"
    torch.save(out, path)
    print(f"wrote {path} ({path.stat().st_size / 1e3:.1f} kB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--refs", type=Path, required=True, help="folder holding the reference checkouts")
    parser.add_argument("--only", default="", help="comma-separated fixture names (default: all)")
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    refs = args.refs.resolve()
    if args.child:
        return run_one(args.child, refs)
    missing = [r for r in REFERENCES if not (refs / r).is_dir()]
    if missing:
        sys.exit(f"missing reference checkouts under {refs}: {missing} (fetch {[REFERENCES[r][0] for r in missing]})")
    for name in args.only.split(",") if args.only else list(FIXTURES):
        if name not in FIXTURES:
            sys.exit(f"unknown fixture {name!r}; known: {sorted(FIXTURES)}")
        subprocess.run([sys.executable, __file__, "--refs", str(refs), "--child", name], check=True)


if __name__ == "__main__":
    main()
