"""Regenerate the reference fixture of PromptKD (distillation from a prompt-tuned teacher) from its official code.

    python tests/reference/regenerate_distillation.py --refs DIR

DIR holds a checkout of zhengli97/PromptKD at the commit in ``REFERENCES`` (folder ``DIR/PromptKD``); the
interpreter needs ``yacs`` (Dassl's config), as for ``regenerate.py``. Nothing of the reference is copied into
vlprompt: the fixture is computed in a child process by the reference's own trainer (``trainers/promptkd.py``:
its config file, ``extend_cfg`` from its ``train.py``, ``build_model`` and one ``forward_backward``) on the tiny
OpenAI-layout CLIP (``tiny_clip.py``) and the fixed inputs stored with it. Beyond ``regenerate.install_stubs`` (no
GPU, fp32, the tiny CLIP instead of a download):

* The student and the teacher are both the tiny CLIP: ``load_clip_to_cpu`` / ``load_clip_to_cpu_teacher`` read
  ``./clip/ViT-B-16.pt`` and ``./clip/ViT-L-14.pt``, which the child writes (the tiny weights) in a temporary
  working folder. The teacher's design is hard-coded (IVLP, depth 9, 4 + 4 tokens), so on the 3-block model its
  prompts fill every block; the student runs at vision depth 2 with 4 tokens (``settings``).
* The teacher's prompt-tuned state (``teacher_model/<dataset>/VLPromptLearner/model-best.pth.tar``, read by
  Dassl's ``load_checkpoint``) is seeded random prompts given to ``load_checkpoint`` directly; the fixture records
  them (``teacher_state``, named as vlprompt's PromptSRC) so that vlprompt's teacher loads the same numbers.
* The projector ``Feature_Trans_Module_two_layer(512, 768)`` (ViT-B/16's embedding to ViT-L/14's) is rebuilt with
  the reference's own class at the tiny model's widths (32 -> 32), its initial values from the fixture's seed.
* The temperature is 2 (the released script uses 1) so that the T² factor of the loss is exercised; the KD weight
  is the script's 1000.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import regenerate  # noqa: E402
import tiny_clip  # noqa: E402

REFERENCES = {"PromptKD": ("zhengli97/PromptKD", "ec244f783c8b9b2503ad5a838a3fd97365686ddb")}
CONFIG = "configs/trainers/PromptKD/vit_b16_c2_ep20_batch8_4+4ctx.yaml"
DEPTH, N_CTX, TEMPERATURE, KD_WEIGHT = 2, 4, 2.0, 1000.0
TEACHER_DEPTH = tiny_clip.LAYERS  # the reference's hard-coded depth 9, capped by the 3-block model


def projector_names() -> dict:
    """vlprompt's projector (Linear, BatchNorm1d, ReLU, Linear) -> the reference's 1x1 convolutions and BatchNorm."""
    return {
        "projector.0.weight": "VPT_image_trans.conv1.0.weight",
        "projector.0.bias": "VPT_image_trans.conv1.0.bias",
        "projector.1.weight": "VPT_image_trans.conv1.1.weight",
        "projector.1.bias": "VPT_image_trans.conv1.1.bias",
        "projector.3.weight": "VPT_image_trans.conv1.3.weight",
        "projector.3.bias": "VPT_image_trans.conv1.3.bias",
    }


def flat(tensors: dict) -> dict:
    """1x1 convolution weights (out, in, 1, 1) as the Linear weights (out, in) they are."""
    return {k: v.flatten(1) if v.dim() == 4 else v for k, v in tensors.items()}


def teacher_state(gen: torch.Generator) -> tuple[dict, dict]:
    """Seeded prompts of the teacher, named as the reference's ``CustomCLIP_teacher`` and as vlprompt's PromptSRC."""
    d_v, d_t = tiny_clip.VISION_WIDTH, tiny_clip.TEXT_WIDTH
    vision = 0.5 * torch.randn(TEACHER_DEPTH, N_CTX, d_v, generator=gen)
    ctx = 0.02 * torch.randn(N_CTX, d_t, generator=gen)
    text = 0.02 * torch.randn(TEACHER_DEPTH - 1, N_CTX, d_t, generator=gen)
    ref = {"prompt_learner.ctx": ctx, "image_encoder.VPT": vision[0]}
    for i in range(1, TEACHER_DEPTH):
        ref[f"image_encoder.transformer.resblocks.{i}.VPT_shallow"] = vision[i]
        ref[f"text_encoder.transformer.resblocks.{i}.VPT_shallow"] = text[i - 1]
    return ref, {"vision_ctx": vision, "prompt_learner.ctx": ctx, "text_deep": text}


def gen_promptkd(data: dict, repo: Path, weights_file: str) -> dict:
    import trainers.promptkd as ref

    gen = torch.Generator().manual_seed(7)
    ref_teacher, vl_teacher = teacher_state(gen)
    ref.load_checkpoint = lambda path: {"state_dict": {k: v.clone() for k, v in ref_teacher.items()}}
    original = ref.CustomCLIP.__init__

    def init(self, cfg, classnames, clip_model):  # the projector at the tiny model's widths
        original(self, cfg, classnames, clip_model)
        torch.manual_seed(11)
        self.VPT_image_trans = ref.Feature_Trans_Module_two_layer(tiny_clip.EMBED_DIM, tiny_clip.EMBED_DIM)

    ref.CustomCLIP.__init__ = init
    os.makedirs("clip", exist_ok=True)
    for name in ("ViT-B-16.pt", "ViT-L-14.pt"):
        Path("clip", name).write_bytes(Path(weights_file).read_bytes())
    opts = [
        "TRAINER.PROMPTKD.PREC",
        "fp32",
        "TRAINER.PROMPTKD.PROMPT_DEPTH_VISION",
        DEPTH,
        "TRAINER.PROMPTKD.N_CTX_VISION",
        N_CTX,
        "TRAINER.PROMPTKD.TEMPERATURE",
        TEMPERATURE,
        "TRAINER.PROMPTKD.KD_WEIGHT",
        KD_WEIGHT,
        "TRAINER.NAME",
        "PromptKD",
        "TRAINER.MODAL",
        "base2novel",
        "DATASET.NAME",
        "Caltech101",
    ]
    torch.manual_seed(0)
    cfg = regenerate.reference_cfg(repo, CONFIG, opts)
    t = regenerate.dassl_trainer(ref.PromptKD, cfg, data["classnames"])
    m, teacher = t.model, t.model_teacher
    names = {
        "vision_ctx": ["image_encoder.VPT"]
        + [f"image_encoder.transformer.resblocks.{i}.VPT_shallow" for i in range(1, DEPTH)],
        **projector_names(),
    }
    trained = sorted(n for n, p in m.named_parameters() if p.requires_grad)
    out = {
        "settings": {"config": CONFIG, "opts": opts, "dataset": "Caltech101", "depth": DEPTH, "n_ctx": N_CTX},
        "teacher_state": vl_teacher,
        "init": flat(regenerate.named(m, names)),
        "trained": trained,
    }
    loaded = dict(teacher.named_parameters())
    assert all(torch.equal(loaded[k], v) for k, v in ref_teacher.items()), "the teacher's prompts did not load"
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with torch.no_grad():
        teacher.eval()
        _, tea_text, tea_logits = teacher(data["images"])
        out["teacher_text"], out["teacher_logits"] = tea_text, tea_logits
        m.train()  # the projector's BatchNorm normalises with the batch's statistics, as in forward_backward
        image, scale = m(data["images"])
        out["image_features"] = image
        out["logits"] = scale * image @ tea_text.t()
        m.load_state_dict(before)  # the forward in train mode moved BatchNorm's running statistics: undo it
    summary = regenerate.step(t, data["images"], data["labels"])
    out["loss"] = {"kd": summary["loss"]}
    out["lr"] = regenerate.current_lr(t)
    out["grad"] = flat(regenerate.grads(m, names))
    out["after"] = flat(regenerate.named(m, names))
    bn = m.VPT_image_trans.conv1[1]
    out["bn_after"] = {"running_mean": bn.running_mean.clone(), "running_var": bn.running_var.clone()}
    m.eval()
    with torch.no_grad():
        image, scale = m(data["images"])
        out["eval_logits"] = scale * image @ tea_text.t()
    return out


def run_child(refs: Path) -> None:
    repo = refs / "PromptKD"
    sys.path[:0] = [str(repo), str(repo / "Dassl.pytorch")]
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp, contextlib.chdir(tmp):
        weights = regenerate.write_weights_file(Path(tmp))
        regenerate.install_stubs(weights)
        data = tiny_clip.inputs()
        with contextlib.redirect_stdout(io.StringIO()):
            out = gen_promptkd(data, repo, weights)
    out["references"] = [{"repo": r, "commit": c} for r, c in REFERENCES.values()]
    out["classnames"] = data["classnames"]
    out["labels"] = data["labels"]
    path = tiny_clip.FIXTURES / "promptkd.pt"
    torch.save(out, path)
    print(f"wrote {path} ({path.stat().st_size / 1e3:.1f} kB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--refs", type=Path, required=True, help="folder holding the PromptKD checkout")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    refs = args.refs.resolve()
    if args.child:
        return run_child(refs)
    if not (refs / "PromptKD").is_dir():
        sys.exit(f"missing reference checkout {refs / 'PromptKD'} (fetch {REFERENCES['PromptKD'][0]})")
    subprocess.run([sys.executable, __file__, "--refs", str(refs), "--child"], check=True)


if __name__ == "__main__":
    main()
