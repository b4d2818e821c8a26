"""Distillation from a teacher: CasPL's cascade of frozen boosting prompts, PromptKD's student and its loss.

The reference fixture of PromptKD is checked in ``tests/test_reference_equivalence.py``; here the cascade is checked
against the base method (a zero-length prefix changes nothing) and against a hand-built longer prompt.
"""

import json

import pytest
import torch
import yaml

from test_deep_prompts import build
from vlprompt.clip import deep_prompts
from vlprompt.clip.backbone import PromptedTextEncoder
from vlprompt.methods import MethodContext, MethodError, get_method

CLASSES = ["red circle", "blue square", "green star"]
DEPTHS = {"depth_vision": 3, "depth_text": 3, "n_ctx_vision": 2, "n_ctx_text": 2, "ctx_init": None}


@pytest.fixture(scope="module")
def ctx(pocket_random_backbone):
    bb = pocket_random_backbone
    return MethodContext(
        backbone=bb,
        encoder=PromptedTextEncoder(bb.model),
        classnames=CLASSES,
        template="a photo of a {}.",
        device=torch.device("cpu"),
        seed=3,
    )


@pytest.fixture(scope="module")
def images():
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def boosting(method, n_vision: int, n_text: int, seed: int = 5) -> dict:
    """Random boosting prompts of the shapes ``method`` cascades after its own."""
    gen = torch.Generator().manual_seed(seed)
    v, t = method.boost_vision, method.boost_text
    return {
        "boost_vision": torch.randn(v.shape[0], n_vision, v.shape[2], generator=gen) * 0.5,
        "boost_text": torch.randn(t.shape[0], n_text, t.shape[2], generator=gen) * 0.02,
    }


def test_cascade_with_a_zero_length_prefix_is_the_base_method(ctx, images):
    labels = torch.tensor([0, 1, 2, 1])
    base = build("promptsrc", ctx, **DEPTHS)
    casc = build("caspl", ctx, **DEPTHS, boost_n_ctx_vision=0, boost_n_ctx_text=0)
    assert set(casc.trainable_state()) == set(base.trainable_state()) | {"boost_vision", "boost_text"}
    for name, p in base.named_parameters():  # same initialisation, drawn in the same order
        assert torch.equal(p, dict(casc.named_parameters())[name]), name
    assert torch.equal(casc(images), base(images))
    results = []
    for method in (base, casc):
        loss, parts = method.loss(images, labels)
        loss.backward()
        results.append((loss, parts, {n: p.grad.clone() for n, p in method.named_parameters() if p.requires_grad}))
    (loss_b, parts_b, grads_b), (loss_c, parts_c, grads_c) = results
    assert torch.equal(loss_b, loss_c) and parts_b == parts_c
    assert grads_b.keys() == grads_c.keys() and all(torch.equal(grads_b[n], grads_c[n]) for n in grads_b)


def test_cascade_equals_the_longer_prompt_it_builds(ctx, images):
    probe = build("caspl", ctx, **DEPTHS, boost_n_ctx_vision=3, boost_n_ctx_text=1)
    boost = boosting(probe, 3, 1)
    casc = build("caspl_ivlp", ctx, **DEPTHS, boost_n_ctx_vision=3, boost_n_ctx_text=1)
    casc = type(casc)(casc.config, ctx.__class__(**{**ctx.__dict__, "boosting_prompts": boost}))
    # one IVLP whose prompts are the concatenation: 3 + 2 vision tokens, 1 + 2 text tokens in every block
    wide = build("ivlp", ctx, **{**DEPTHS, "n_ctx_vision": 5, "n_ctx_text": 3})
    with torch.no_grad():
        wide.vision_ctx.copy_(torch.cat([boost["boost_vision"], casc.vision_ctx], dim=1))
        wide.prompt_learner.ctx.copy_(torch.cat([boost["boost_text"][0], casc.prompt_learner.ctx]))
        wide.text_deep.copy_(torch.cat([boost["boost_text"][1:], casc.text_deep], dim=1))
    torch.testing.assert_close(casc.image_features(images), wide.image_features(images), rtol=0, atol=1e-6)
    torch.testing.assert_close(casc.text_features(), wide.text_features(), rtol=0, atol=1e-6)
    plain = build("ivlp", ctx, **DEPTHS)  # the same learnable prompts without the prefix differ
    assert not torch.allclose(plain.image_features(images), casc.image_features(images), atol=1e-3)


def test_boosting_prompts_stay_frozen_and_travel_with_the_model(ctx, images):
    probe = build("caspl", ctx, **DEPTHS)
    boost = boosting(probe, 4, 4)
    casc = type(probe)(probe.config, ctx.__class__(**{**ctx.__dict__, "boosting_prompts": boost}))
    assert not any("boost" in n for n, _ in casc.named_parameters())
    loss, _ = casc.loss(images, torch.tensor([0, 1, 2, 0]))
    loss.backward()
    state = casc.trainable_state()
    assert torch.equal(state["boost_vision"], boost["boost_vision"])
    fresh = build("caspl", ctx, **DEPTHS)  # zero prefix until model.pt is loaded
    assert not torch.equal(fresh(images), casc(images))
    fresh.load_trainable_state(state)
    assert torch.equal(fresh(images), casc(images))


def test_cascade_shape_errors_are_one_line(ctx):
    probe = build("caspl", ctx, **DEPTHS)
    wrong = {"boost_vision": torch.zeros(2, 4, probe.boost_vision.shape[2])}
    with pytest.raises(MethodError, match="boosting prompts boost_vision have shape"):
        type(probe)(probe.config, ctx.__class__(**{**ctx.__dict__, "boosting_prompts": wrong}))
    with pytest.raises(deep_prompts.DeepPromptError, match="same depth"):
        deep_prompts.cascade([torch.zeros(1, 8)] * 2, [torch.zeros(2, 8)] * 3)
    with pytest.raises(MethodError, match="no deep prompts"):
        from vlprompt.methods.caspl import cascaded

        cascaded(get_method("coop"))


# ------------------------------------------------ PromptKD against its official code (tests/reference/fixtures)


@pytest.fixture(scope="module")
def ref_clip(tmp_path_factory):
    """The tiny OpenAI-layout CLIP of the reference fixtures, loaded as test_reference_equivalence loads it."""
    from reference import tiny_clip
    from vlprompt.clip.backbone import load_backbone, open_clip

    oc = open_clip()
    if tiny_clip.MODEL_NAME not in oc.list_models():
        config = tmp_path_factory.mktemp("tiny_clip_config") / f"{tiny_clip.MODEL_NAME}.json"
        config.write_text(json.dumps(tiny_clip.OPEN_CLIP_CONFIG))
        oc.add_model_config(config)
    weights = tmp_path_factory.mktemp("tiny_clip") / "tiny_clip_openai_layout.pt"
    torch.save(tiny_clip.state_dict(), weights)
    return load_backbone(tiny_clip.MODEL_NAME, str(weights), force_quick_gelu=True), tiny_clip.inputs()


def promptkd_pair(backbone, fix: dict):
    """The fixture's teacher (PromptSRC with the reference teacher's prompts) and the student built on it."""
    from test_reference_equivalence import context
    from vlprompt.methods.promptkd import Teacher

    teacher_method = build("promptsrc", context(backbone, fix))  # 4 + 4 tokens at depth 9: every tiny block
    teacher_method.load_trainable_state(fix["teacher_state"])
    teacher = Teacher(teacher_method)
    settings = {"depth_vision": fix["settings"]["depth"], "n_ctx_vision": fix["settings"]["n_ctx"]}
    opts = dict(zip(fix["settings"]["opts"][::2], fix["settings"]["opts"][1::2], strict=True))
    student = build(
        "promptkd",
        context(backbone, fix, teacher=teacher),
        **settings,
        temperature=opts["TRAINER.PROMPTKD.TEMPERATURE"],
        kd_weight=opts["TRAINER.PROMPTKD.KD_WEIGHT"],
    )
    return teacher, student


def test_promptkd_loss_and_one_student_step_equal_the_reference(ref_clip):
    backbone, inputs = ref_clip
    from test_reference_equivalence import close, fixture, image_step, load_init, trainable
    from vlprompt.training.loop import lr_at

    fix = fixture("promptkd")
    teacher, student = promptkd_pair(backbone, fix)
    images = inputs["images"]
    close(teacher.text_features(fix["classnames"]), fix["teacher_text"], what="teacher's shared text features")
    close(teacher.logits(images, fix["classnames"]), fix["teacher_logits"], what="teacher's logits")
    load_init(student, fix)
    student.train()  # the projector's BatchNorm on the batch's statistics, as the reference's forward_backward
    close(student.image_features(images), fix["image_features"], what="projected student image features")
    close(student(images), fix["logits"], what="student logits on the teacher's text features")
    assert student.config.lr == 0.005 and lr_at(student.config, 0) == pytest.approx(fix["lr"])
    student.load_trainable_state({**student.trainable_state(), **fix["init"]})  # undo the running statistics
    with torch.no_grad():
        student.projector[1].reset_running_stats()
    loss = image_step(student, images, fix["labels"])
    assert loss == pytest.approx(fix["loss"]["kd"], rel=1e-5)
    # The KD term is weighted 1000 and sums products of nearly equal log-probabilities: the projector's gradient
    # (scale 4.5e3) differs from the reference's by 1.3e-5 relative (measured), fp32 rounding like PromptSRC's. The
    # bias before the BatchNorm has a gradient of exactly 0 in exact arithmetic (the batch mean removes it): both
    # sides hold rounding noise of the weight's gradient, so it is compared on the weight's scale.
    scale = float(fix["grad"]["projector.0.weight"].abs().max())
    for name, p in trainable(student).items():
        rtol = 5e-5 * scale / float(fix["grad"][name].abs().max()) if name == "projector.0.bias" else 5e-5
        close(p.grad, fix["grad"][name], rtol, f"gradient of {name}")
        close(p, fix["after"][name], 1e-5, f"{name} after one step")
    state = student.trainable_state()
    for key in ("running_mean", "running_var"):
        close(state[f"projector.1.{key}"], fix["bn_after"][key], what=f"BatchNorm {key} after one step")
    student.eval()
    close(student(images), fix["eval_logits"], what="evaluation logits (running statistics)")


def test_promptkd_reads_no_label_and_needs_a_teacher(ref_clip):
    backbone, inputs = ref_clip
    from test_reference_equivalence import context, fixture

    fix = fixture("promptkd")
    _, student = promptkd_pair(backbone, fix)
    images = inputs["images"]
    student.eval()
    a, _ = student.loss(images, fix["labels"])
    b, _ = student.loss(images, fix["labels"].flip(0))
    assert torch.equal(a, b)
    with pytest.raises(MethodError, match="needs a prompt-tuned teacher"):
        build("promptkd", context(backbone, fix))


def test_kd_loss_by_hand():
    from vlprompt.methods.promptkd import kd_loss

    s, t = torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    p, q = torch.softmax(t / 2, -1), torch.softmax(s / 2, -1)  # teacher, student at T = 2
    expected = (p * (p.log() - q.log())).sum() * 4 / 4
    assert kd_loss(s, t, 2.0).item() == pytest.approx(expected.item(), rel=1e-6)


# ------------------------------------------------ the teacher: its keyed folder, its stage, the check, a run


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    """A 4-class pocket dataset (2 base, 2 new) with a 2-shot subset, and a config distilling a random S8 teacher."""
    from vlprompt.data import pocket, registry, splits
    from vlprompt.experiment import grid
    from vlprompt.experiment.config import validate

    root = tmp_path_factory.mktemp("distill")
    cfg = validate(
        {
            "experiment": "mini",
            "protocol": "base2new",
            "data_root": str(root / "data"),
            "results_root": str(root / "results"),
            "reports_root": str(root / "reports"),
            "backbone": {"model": "PocketCLIP-ViT-T8", "pretrained": None},
            "datasets": ["pocket_dark"],
            "methods": ["zeroshot", "promptkd"],
            "shots": [2],
            "seeds": [1],
            "teacher": {
                "backbone": {"model": "PocketCLIP-ViT-S8", "pretrained": None},
                "overrides": {"epochs": 1, "depth_vision": 2, "depth_text": 2},
            },
            "pocket": {"n_colours": 2, "n_shapes": 2, "per_class": {"train": 3, "val": 2, "test": 2}},
            "train": {"checkpoint_every": 1, "device": "cpu"},
            "features": {"workers": 0},
            "method_overrides": {
                "promptkd": {"epochs": 1, "depth_vision": 2},
                "caspl_boost": {"epochs": 1, "depth_vision": 2, "depth_text": 2},
                "caspl": {"epochs": 1, "depth_vision": 2, "depth_text": 2},
            },
        }
    )
    world = registry.pocket_world(cfg)
    ds = pocket.PocketDataset("pocket_dark", "dark", cfg["pocket"]["per_class"])
    split = splits.read_split(pocket.generate(ds, world, registry.dataset_dir(cfg, "pocket_dark"), progress=False))
    splits.write_classes(grid.classes_path(cfg, "pocket_dark"), split)
    splits.write_fewshot(grid.fewshot_path(cfg, "pocket_dark", 2, 1), splits.fewshot_sample(split, 2, 1), 2, 1)
    return cfg, root


def test_the_teacher_folder_is_keyed_by_everything_that_defines_it(mini):
    import copy

    from vlprompt.experiment import grid
    from vlprompt.experiment.teacher import teacher_dir, teacher_files

    cfg, _ = mini
    base = teacher_dir(cfg, "pocket_dark", 2, 1)
    assert base.parts[-2:] == ("2shot", "seed1") and "PocketCLIP-ViT-S8" in str(base) and "promptsrc-" in str(base)
    assert teacher_dir(cfg, "pocket_dark", 4, 1) != base and teacher_dir(cfg, "pocket_dark", 2, 2) != base
    for change in (
        {"backbone": {"model": "PocketCLIP-ViT-T8", "pretrained": None}},
        {"method": "ivlp"},
        {"overrides": {"epochs": 2, "depth_vision": 2, "depth_text": 2}},
    ):
        other = copy.deepcopy(cfg)
        other["teacher"].update(change)
        assert teacher_dir(other, "pocket_dark", 2, 1) != base, change
    other = copy.deepcopy(cfg)
    other["experiment"], other["method_overrides"]["promptkd"]["epochs"] = "another", 3
    assert teacher_dir(other, "pocket_dark", 2, 1) == base  # shared by experiments asking for the same teacher
    # a promptkd run reads its teacher; other image methods' inputs are unchanged
    assert set(teacher_files(cfg, "pocket_dark", 2, 1)) <= set(grid.train_inputs(cfg, "pocket_dark", "promptkd", 2, 1))
    assert not any("teacher" in str(p) for p in grid.train_inputs(cfg, "pocket_dark", "promptsrc", 2, 1))


def trained_teacher(cfg: dict) -> None:
    """The rule train_teacher's job for pocket_dark, 2 shots, seed 1 (once per test session)."""
    from vlprompt.experiment.teacher import teacher_config, teacher_dir
    from vlprompt.training import image_runs
    from vlprompt.training.teacher import teacher_method

    out = teacher_dir(cfg, "pocket_dark", 2, 1)
    if not (out / "metrics.json").exists():
        image_runs.run(teacher_config(cfg), "pocket_dark", teacher_method(cfg), 2, 1, out, progress=False)


def test_a_promptkd_run_reads_its_trained_teacher(mini, tmp_path):
    from vlprompt.training import image_runs
    from vlprompt.training.records import load_model_state

    cfg, _ = mini
    with pytest.raises(Exception, match="teacher.*metrics.json is missing; rebuild it with: snakemake"):
        image_runs.run(cfg, "pocket_dark", "promptkd", 2, 1, tmp_path / "early", progress=False)
    trained_teacher(cfg)
    metrics = image_runs.run(cfg, "pocket_dark", "promptkd", 2, 1, tmp_path / "run", progress=False)
    assert {"base_acc", "new_acc", "hm"} <= set(metrics)
    state = load_model_state(tmp_path / "run", torch.device("cpu"))["state"]
    assert state["projector.0.weight"].shape == (96, 64)  # the tiny student's 64 to the S8 teacher's 96
    assert "projector.1.running_mean" in state


def test_a_caspl_run_cascades_after_its_boosting_run(mini):
    from vlprompt.experiment import grid
    from vlprompt.training import image_runs
    from vlprompt.training.records import load_model_state

    cfg, _ = mini
    boost_dir = grid.Run("pocket_dark", "caspl_boost", 2, 1).dir(cfg)
    assert boost_dir / "model.pt" in grid.train_inputs(cfg, "pocket_dark", "caspl", 2, 1)
    trained_teacher(cfg)
    image_runs.run(cfg, "pocket_dark", "caspl_boost", 2, 1, boost_dir, progress=False)
    out = grid.Run("pocket_dark", "caspl", 2, 1).dir(cfg)
    image_runs.run(cfg, "pocket_dark", "caspl", 2, 1, out, progress=False)
    boost = load_model_state(boost_dir, torch.device("cpu"))["state"]
    cascaded = load_model_state(out, torch.device("cpu"))["state"]
    assert torch.equal(cascaded["boost_vision"], boost["vision_ctx"])
    assert torch.equal(cascaded["boost_text"][0], boost["prompt_learner.ctx"])
    assert torch.equal(cascaded["boost_text"][1:], boost["text_deep"])
    assert not torch.equal(cascaded["vision_ctx"], boost["vision_ctx"])  # its own prompts trained after them


def test_the_check_refuses_a_teacher_no_better_than_the_student(tmp_path):
    from vlprompt.experiment.config import ConfigError
    from vlprompt.training.teacher import check_teacher_beats_student

    def metrics(name, **values):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"dataset": "pocket_dark", **values}))
        return path

    teachers = [metrics("t1", hm=60.0), metrics("t2", hm=50.0)]
    margins = check_teacher_beats_student(teachers, [metrics("zs", hm=40.0)])
    assert margins == {"pocket_dark": {"teacher": 55.0, "student_zero_shot": 40.0, "margin": 15.0}}
    with pytest.raises(
        ConfigError, match=r"not better than the student's zero-shot CLIP on pocket_dark \(55.0 <= 55.0"
    ):
        check_teacher_beats_student(teachers, [metrics("zs2", hm=55.0)])
    with pytest.raises(ConfigError, match="add zeroshot"):
        check_teacher_beats_student([metrics("t3", all_acc=60.0)], [])


def test_distill_commands():
    """docs/distillation.md's commands: each config validates as Snakemake loads it and its targets are rules."""
    from doc_commands import commands
    from test_docs import _check_line

    lines = commands("distill_commands")
    assert len(lines) == 2 and "pretrain_pocket_teacher" in lines[0]
    for line in lines:
        _check_line(line)


def test_the_report_says_how_much_better_the_teacher_is(tmp_path):
    from vlprompt.analysis.report.teacher import teacher_section

    margins = {"pocket_dark": {"teacher": 61.25, "student_zero_shot": 23.5, "margin": 37.75}}
    (tmp_path / "teacher_margins.json").write_text(json.dumps(margins))
    cfg = {"methods": ["zeroshot", "promptkd"], "backbone": {"model": "PocketCLIP-ViT-T8", "pretrained": "pocket_v2"}}
    md = "\n".join(teacher_section(tmp_path / "summary.csv", cfg).md)
    assert "37.75" in md and "61.25" in md and "stand-in" in md
    cfg["teacher"] = {"backbone": {"model": "PocketCLIP-ViT-S8", "pretrained": "s8.pt"}}
    assert "stand-in" not in "\n".join(teacher_section(tmp_path / "summary.csv", cfg).md)
    assert teacher_section(tmp_path / "summary.csv", {**cfg, "methods": ["coop"]}) is None


def test_a_distillation_config_is_checked_before_anything_runs():
    from vlprompt.experiment.checks import config_problems

    cfg = yaml.safe_load(open("config/pocket_distill.yaml"))
    assert config_problems(cfg) == []
    no_zeroshot = {**cfg, "methods": ["promptkd"]}
    assert any("add zeroshot to `methods`" in line for line in config_problems(no_zeroshot))
    feature_teacher = {**cfg, "teacher": {**cfg["teacher"], "method": "coop"}}
    assert any("teacher.method 'coop' is not a deep-prompt method" in line for line in config_problems(feature_teacher))


def test_caspl_alone_still_needs_the_teacher_check():
    from vlprompt.experiment.teacher import distilling_methods

    assert distilling_methods({"methods": ["zeroshot", "coop", "caspl", "promptkd", "caspl_ivlp"]}) == [
        "caspl",
        "promptkd",
        "caspl_ivlp",
    ]
