"""Deep prompts in open_clip's towers and the encoder-in-the-loop methods (VPT-deep, IVLP, MaPLe, PromptSRC).

These tests guard every open_clip internal that ``vlprompt.clip.deep_prompts`` relies on: with no prompts the
hooked towers are ``encode_image``/``encode_text``, and with prompts they equal a hand-written loop over
the blocks of the pinned open_clip version.
"""

import contextlib
import math

import pytest
import torch
import torch.nn.functional as F

from vlprompt.clip import deep_prompts
from vlprompt.clip.backbone import PromptedTextEncoder, encode_prompts
from vlprompt.methods import MethodContext, get_method

CLASSES = ["red circle", "blue square", "green star"]
IMAGE_METHODS = ["vpt_deep", "ivlp", "maple", "promptsrc"]
DEPTH_ZERO = {
    "vpt_deep": {"depth_vision": 0},
    "ivlp": {"depth_vision": 0, "depth_text": 0},
    "maple": {"depth": 0},
    "promptsrc": {"depth_vision": 0, "depth_text": 0},
}


@pytest.fixture(scope="module")
def bb(pocket_random_backbone):
    return pocket_random_backbone


@pytest.fixture(scope="module")
def ctx(bb):
    return MethodContext(
        backbone=bb,
        encoder=PromptedTextEncoder(bb.model),
        classnames=CLASSES,
        template="a photo of a {}.",
        device=torch.device("cpu"),
        seed=1,
    )


@pytest.fixture(scope="module")
def images():
    return torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def build(name, ctx, **overrides):
    cls = get_method(name)
    return cls(cls.make_config(overrides), ctx)


def _hook_count(model):
    mods = [
        model.visual.ln_pre,
        model.visual.transformer,
        *model.visual.transformer.resblocks,
        *model.transformer.resblocks,
    ]
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in mods)


# -- the open_clip hooks -----------------------------------------------------------------------


def test_no_prompts_is_encode_image_and_encode_text(bb, images):
    model, enc = bb.model, PromptedTextEncoder(bb.model)
    assert torch.equal(deep_prompts.encode_image(model, images, []), model.encode_image(images))
    tokens = bb.tokenizer(["a photo of a red circle.", "a blue square."])
    assert torch.equal(deep_prompts.encode_text(enc, enc.embed(tokens), tokens.argmax(-1), []), enc.encode(tokens))
    assert torch.allclose(enc.encode(tokens), model.encode_text(tokens), atol=1e-5)


def test_vision_prompts_equal_a_hand_written_block_loop(bb, images):
    model, v = bb.model, bb.model.visual
    width = deep_prompts.vision_width(model)
    prompts = [torch.randn(3, width) for _ in range(3)]  # depth 3 of 4 blocks
    with torch.no_grad():
        x = v.conv1(images).flatten(2).transpose(1, 2)  # (B, grid², w)
        x = torch.cat([v.class_embedding.expand(len(x), 1, -1), x], 1) + v.positional_embedding
        x = v.ln_pre(torch.cat([x, prompts[0].expand(len(x), -1, -1)], 1))
        for j, block in enumerate(v.transformer.resblocks):
            if 0 < j < len(prompts):
                x = torch.cat([x[:, :-3], prompts[j].expand(len(x), -1, -1)], 1)
            x = block(x)
        expected = v.ln_post(x[:, 0]) @ v.proj
        got = deep_prompts.encode_image(model, images, prompts)
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(got, model.encode_image(images), atol=1e-3)
    assert _hook_count(model) == 0  # nothing left on the shared backbone
    assert torch.equal(model.encode_image(images), deep_prompts.encode_image(model, images))


def test_text_deep_prompts_equal_a_hand_written_block_loop(bb):
    enc = PromptedTextEncoder(bb.model)
    tokens = bb.tokenizer(["X X red circle.", "X X blue square of many words."])
    eot = tokens.argmax(-1)
    emb = enc.embed(tokens)
    deep = [torch.randn(2, enc.width) for _ in range(2)]  # blocks 1 and 2
    with torch.no_grad():
        n = int(eot.max()) + 1
        x = emb[:, :n] + enc.positional_embedding[:n]
        for j, block in enumerate(enc.transformer.resblocks):
            if 1 <= j <= len(deep):
                x = torch.cat([x[:, :1], deep[j - 1].expand(len(x), -1, -1), x[:, 3:]], 1)
            x = block(x, attn_mask=enc.attn_mask[:n, :n])
        expected = enc.ln_final(x)[torch.arange(len(x)), eot] @ enc.text_projection
        got = deep_prompts.encode_text(enc, emb, eot, deep)
    assert torch.allclose(got, expected, atol=1e-5)
    assert _hook_count(bb.model) == 0


def test_prompt_shapes_and_nesting_are_checked(bb, images):
    width = deep_prompts.vision_width(bb.model)
    with pytest.raises(deep_prompts.DeepPromptError, match="shape"):
        deep_prompts.encode_image(bb.model, images, [torch.zeros(2, width), torch.zeros(3, width)])
    with pytest.raises(deep_prompts.DeepPromptError, match="blocks"):
        deep_prompts.encode_image(bb.model, images, [torch.zeros(2, width)] * 5)
    with deep_prompts.vision_prompts(bb.model, [torch.zeros(2, width)]):
        with pytest.raises(deep_prompts.DeepPromptError, match="nested"):
            with deep_prompts.vision_prompts(bb.model, [torch.zeros(2, width)]):
                pass
    assert _hook_count(bb.model) == 0
    assert deep_prompts.cap_depth(12, 4, "vision") == 4


# -- the methods ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", IMAGE_METHODS)
def test_depth_zero_with_zero_prompts_is_zero_shot(ctx, bb, images, name):
    method = build(name, ctx, init_std=0.0, **DEPTH_ZERO[name]).eval()
    zeroshot = get_method("zeroshot")(get_method("zeroshot").make_config({}), ctx).eval()
    with torch.no_grad():
        assert torch.equal(method(images), zeroshot(bb.model.encode_image(images)))
        method.set_classes(CLASSES[::-1])  # new classes too
        zeroshot.set_classes(CLASSES[::-1])
        assert torch.equal(method(images), zeroshot(bb.model.encode_image(images)))


def test_text_context_from_ctx_init_reproduces_the_hand_crafted_prompt(ctx, bb):
    # depth 1, 4 tokens initialised from "a photo of a": the prompt is exactly the template's
    method = build("ivlp", ctx, n_ctx_text=4, depth_text=1, depth_vision=0)
    assert torch.allclose(
        method.text_features(), encode_prompts(bb, [f"a photo of a {c}." for c in CLASSES]), atol=1e-6
    )
    # 2 tokens: "a photo" learnable, "of a" fixed text (the reference's prompt); the same at initialisation
    two = build("ivlp", ctx, n_ctx_text=2, depth_text=1, depth_vision=0)
    assert two.fixed_words == "of a" and two.prompt_learner.ctx.shape[0] == 2
    assert torch.allclose(two.text_features(), method.text_features(), atol=1e-6)


def test_split_ctx_init(bb):
    from vlprompt.methods.ivlp import split_ctx_init

    assert split_ctx_init(bb.tokenizer, "a photo of a", 2) == ("a photo", "of a")
    assert split_ctx_init(bb.tokenizer, "a photo of a", 4) == ("a photo of a", "")
    assert split_ctx_init(bb.tokenizer, "a photo of a", 8) == (None, "")  # random init, as the reference
    assert split_ctx_init(bb.tokenizer, None, 2) == (None, "")


@pytest.mark.parametrize("name", IMAGE_METHODS)
def test_parameters_presets_and_gradients(ctx, images, name):
    method = build(name, ctx).train()
    trainable = {n for n, p in method.named_parameters() if p.requires_grad}
    expected = {
        "vpt_deep": {"vision_ctx"},
        "ivlp": {"vision_ctx", "prompt_learner.ctx", "text_deep"},
        "promptsrc": {"vision_ctx", "prompt_learner.ctx", "text_deep"},
        "maple": {"prompt_learner.ctx", "text_deep"}
        | {f"couplings.{j}.{w}" for j in range(4) for w in ("weight", "bias")},
    }[name]
    assert trainable == expected
    assert all(not p.requires_grad for p in method.frozen.model.parameters())
    loss, parts = method.loss(images[:3], torch.tensor([0, 1, 2]))
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.parameters() if p.requires_grad)
    c = method.config
    preset = {
        "vpt_deep": (0.0025, 5, 4),
        "ivlp": (0.0035, 5, 4),
        "maple": (0.0035, 5, 4),
        "promptsrc": (0.0025, 20, 4),
    }[name]
    assert (c.lr, c.epochs, c.batch_size) == preset
    if name != "promptsrc":  # the only loss term is the cross-entropy of the logits
        assert set(parts) == {"ce"}
        assert loss.item() == pytest.approx(F.cross_entropy(method(images[:3]), torch.tensor([0, 1, 2])).item())


def test_maple_vision_prompts_are_linear_images_of_the_text_prompts(ctx):
    method = build("maple", ctx)
    text, vision = method.text_prompts(), method.vision_prompts()
    assert len(text) == len(vision) == 4  # depth 9 capped at the pocket CLIP's 4 blocks
    assert method.prompt_learner.ctx.shape[0] == 2 and method.fixed_words == "of a"
    for f, t, p in zip(method.couplings, text, vision, strict=True):
        assert torch.allclose(p, t @ f.weight.T + f.bias)


def test_promptsrc_loss_terms_by_hand():
    from vlprompt.methods.promptsrc import promptsrc_losses

    logits = torch.tensor([[0.0, 0.0]])
    zs_logits = torch.tensor([[math.log(3.0), 0.0]])  # zero-shot p = (3/4, 1/4), student p = (1/2, 1/2)
    text, frozen_text = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    image, frozen_image = torch.tensor([[0.6, 0.8]]), torch.tensor([[0.8, 0.6]])
    parts = promptsrc_losses(
        logits,
        torch.tensor([0]),
        text,
        frozen_text,
        image,
        frozen_image,
        zs_logits,
        text_weight=25,
        image_weight=10,
        logit_weight=1,
    )
    assert parts["ce"].item() == pytest.approx(math.log(2))
    assert parts["text"].item() == pytest.approx(25 * (1 + 1 + 0 + 0) / 4)
    assert parts["image"].item() == pytest.approx(10 * (0.2 + 0.2) / 2)
    kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)  # KL(zero-shot || student)
    assert parts["logits"].item() == pytest.approx(kl / 2)  # summed, divided by the number of logits
    assert parts["total"].item() == pytest.approx(math.log(2) + 12.5 + 2 + kl / 2)


def test_promptsrc_loss_uses_the_frozen_model(ctx, bb, images):
    from vlprompt.methods.promptsrc import IMAGENET_TEMPLATES

    method = build("promptsrc", ctx, teacher_templates="imagenet+dataset")
    assert len(method.teacher_templates()) == len(IMAGENET_TEMPLATES) + 1 == 61
    teacher = method.teacher_text()
    feats = [
        F.normalize(bb.model.encode_text(bb.tokenizer([t.format(c) for c in CLASSES])), dim=-1)
        for t in ["a photo of a {}.", "a sketch of a {}."]
    ]
    two = build("promptsrc", ctx, teacher_templates="dataset")
    assert torch.allclose(two.teacher_text(), feats[0], atol=1e-5)
    assert teacher.shape == (3, bb.embed_dim)
    # zero prompts at depth 0: the student is the zero-shot model, only the template average differs
    zero = build("promptsrc", ctx, teacher_templates="dataset", init_std=0.0, **DEPTH_ZERO["promptsrc"])
    _, parts = zero.loss(images, torch.tensor([0, 1, 2, 0, 1]))
    assert (
        parts["text"] == pytest.approx(0, abs=1e-5)
        and parts["image"] == 0
        and parts["logits"] == pytest.approx(0, abs=1e-6)
    )


def test_gaussian_prompt_aggregation_weights():
    from vlprompt.methods.promptsrc import gaussian_weights

    w = gaussian_weights(20, 15, 1)
    z = sum(math.exp(-0.5 * (e - 15) ** 2) for e in range(1, 21))
    assert sum(w) == pytest.approx(1)
    assert w[14] == pytest.approx(1 / z) and max(w) == w[14]  # epoch 15 (1-based)
    assert w[13] == pytest.approx(w[15]) == pytest.approx(math.exp(-0.5) / z)
    assert w[0] == pytest.approx(math.exp(-0.5 * 14**2) / z)
    with pytest.raises(ValueError):
        gaussian_weights(5, 3, 0)


def test_gpa_scales_with_epochs_and_averages_the_prompts(ctx):
    from vlprompt.methods.promptsrc import gaussian_weights

    method = build("promptsrc", ctx, epochs=4)
    assert method.gpa_weights == pytest.approx(gaussian_weights(4, 3.0, 0.2))  # 15/20 and 1/20 of 4 epochs
    method = build("promptsrc", ctx, epochs=3, gpa_epochs=3, gpa_mean=2, gpa_std=1)
    w = gaussian_weights(3, 2, 1)
    with torch.no_grad():
        for epoch in range(3):
            for p in method.parameters():
                if p.requires_grad:
                    p.fill_(float(epoch + 1))
            method.epoch_end(epoch)
        method.train_end()
    expected = sum((e + 1) * w[e] for e in range(3))
    assert all(torch.allclose(v, torch.full_like(v, expected)) for v in method.trainable_state().values())


def test_eval_caches_the_text_classifier_until_the_prompts_change(ctx, images):
    method = build("ivlp", ctx).eval()
    with torch.no_grad():
        first = method(images)
        cached = method._text_cache[1]
        assert method(images).equal(first) and method._text_cache[1] is cached
        method.prompt_learner.ctx.add_(1.0)
        assert not method(images).equal(first)


# -- training on images end to end -----------------------------------------------------------------


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    """A 4-class pocket dataset (2 base, 2 new), its class file and a 2-shot subset, and a config."""
    from vlprompt.data import pocket, registry, splits
    from vlprompt.experiment import grid
    from vlprompt.experiment.config import validate

    root = tmp_path_factory.mktemp("mini")
    cfg = validate(
        {
            "experiment": "mini",
            "protocol": "base2new",
            "data_root": str(root / "data"),
            "results_root": str(root / "results"),
            "reports_root": str(root / "reports"),
            "backbone": {"model": "PocketCLIP-ViT-T8", "pretrained": None},
            "datasets": ["pocket_dark"],
            "methods": ["zeroshot"],
            "shots": [2],
            "seeds": [1],
            "pocket": {"n_colours": 2, "n_shapes": 2, "per_class": {"train": 3, "val": 2, "test": 2}},
            "train": {"checkpoint_every": 1, "device": "cpu"},
            "features": {"workers": 0},
        }
    )
    world = registry.pocket_world(cfg)
    ds = pocket.PocketDataset("pocket_dark", "dark", cfg["pocket"]["per_class"])
    split = splits.read_split(pocket.generate(ds, world, registry.dataset_dir(cfg, "pocket_dark"), progress=False))
    splits.write_classes(grid.classes_path(cfg, "pocket_dark"), split)
    splits.write_fewshot(grid.fewshot_path(cfg, "pocket_dark", 2, 1), splits.fewshot_sample(split, 2, 1), 2, 1)
    return cfg, root


def run_and_resume(tmp_path_factory, method: str, overrides: dict) -> dict:
    """``method`` through the image runner on ``mini`` (2 shots, seed 1): a full run, and a run killed after its
    first epoch then resumed, which must end with the same loss history and the same saved state. The full run's
    metrics."""
    from vlprompt.training.image_runs import run

    cfg, root = mini.__wrapped__(tmp_path_factory)
    cfg = {**cfg, "method_overrides": {method: overrides}}
    full = run(cfg, "pocket_dark", method, 2, 1, root / "full", progress=False)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, "pocket_dark", method, 2, 1, root / "killed", progress=False, stop_after=1)
    resumed = run(cfg, "pocket_dark", method, 2, 1, root / "killed", progress=False)
    assert resumed["train"]["loss_history"] == full["train"]["loss_history"]
    a = torch.load(root / "full" / "model.pt", weights_only=False)["state"]
    b = torch.load(root / "killed" / "model.pt", weights_only=False)["state"]
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    return full


TINY = {"epochs": 2, "batch_size": 2}


@pytest.mark.parametrize("name", IMAGE_METHODS)
def test_train_images_run_end_to_end(mini, name):
    from vlprompt.experiment import grid
    from vlprompt.io import read_json
    from vlprompt.training import runs

    cfg, root = mini
    cfg = {**cfg, "method_overrides": {name: TINY}}
    out = root / "runs" / name
    metrics = runs.run(cfg, "pocket_dark", name, 2, 1, out, progress=False)  # dispatched to image_runs
    assert (out / "metrics.json").exists() and (out / "model.pt").exists()
    assert not (out / "checkpoint.pt").exists()
    for key in (
        "base_acc",
        "new_acc",
        "hm",
        "base_per_class",
        "new_per_class",
        "method",
        "dataset",
        "shots",
        "seed",
        "protocol",
        "experiment",
        "config_hash",
        "hyperparameters",
        "trained",
        "seconds",
        "provenance",
    ):
        assert key in metrics, key
    assert metrics["base_n"] == 4 and metrics["new_n"] == 4 and 0 <= metrics["hm"] <= 100
    assert metrics["train"]["steps_per_epoch"] == 2 and len(metrics["train"]["epoch_seconds"]) == 2
    saved = torch.load(out / "model.pt", weights_only=False)
    classes = read_json(grid.classes_path(cfg, "pocket_dark"))
    assert saved["classnames"] == [classes["classnames"][i] for i in classes["base"]] and saved["state"]


def test_train_images_resume_is_exact(mini):
    from vlprompt.training.image_runs import run

    cfg, root = mini
    cfg = {**cfg, "method_overrides": {"promptsrc": {"epochs": 3, "batch_size": 2}}}
    full = run(cfg, "pocket_dark", "promptsrc", 2, 1, root / "full", progress=False)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, "pocket_dark", "promptsrc", 2, 1, root / "killed", progress=False, stop_after=1)
    assert (root / "killed" / "checkpoint.pt").exists()
    resumed = run(cfg, "pocket_dark", "promptsrc", 2, 1, root / "killed", progress=False)
    assert resumed["train"]["loss_history"] == full["train"]["loss_history"]
    a = torch.load(root / "full" / "model.pt", weights_only=False)["state"]
    b = torch.load(root / "killed" / "model.pt", weights_only=False)["state"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (resumed["base_acc"], resumed["new_acc"]) == (full["base_acc"], full["new_acc"])


def test_transfer_evaluation_on_images(mini):
    from vlprompt.experiment import grid
    from vlprompt.training import runs
    from vlprompt.training.image_runs import evaluate_transfer

    cfg, root = mini
    cfg = {**cfg, "method_overrides": {"maple": {"epochs": 1}}}
    runs.run(cfg, "pocket_dark", "maple", 2, 1, grid.Run("pocket_dark", "maple", 2, 1).dir(cfg), progress=False)
    metrics = evaluate_transfer(cfg, "pocket_dark", "maple", 2, 1, "pocket_dark", root / "transfer.json")
    assert metrics["all_n"] == 8 and 0 <= metrics["all_acc"] <= 100 and (root / "transfer.json").exists()


def test_kept_patches_equal_a_hand_written_block_loop_with_and_without_prompts(bb, images):
    model, v = bb.model, bb.model.visual
    width, grid = deep_prompts.vision_width(model), v.positional_embedding.shape[0] - 1
    gen = torch.Generator().manual_seed(0)
    keep = torch.stack([torch.randperm(grid, generator=gen)[: grid // 2] for _ in range(len(images))])
    prompts = [torch.randn(3, width, generator=gen) for _ in range(2)]
    with torch.no_grad():
        for depth in (0, 2):
            x = v.conv1(images).flatten(2).transpose(1, 2)
            x = torch.cat([v.class_embedding.expand(len(x), 1, -1), x], 1) + v.positional_embedding
            x = torch.cat([x[:, :1], torch.stack([x[b, 1:][keep[b]] for b in range(len(x))])], 1)
            if depth:
                x = torch.cat([x, prompts[0].expand(len(x), -1, -1)], 1)
            x = v.ln_pre(x)
            for j, block in enumerate(v.transformer.resblocks):
                if 0 < j < depth:
                    x = torch.cat([x[:, :-3], prompts[j].expand(len(x), -1, -1)], 1)
                x = block(x)
            expected = v.ln_post(x[:, 0]) @ v.proj
            for order in ("patches first", "prompts first"):
                with contextlib.ExitStack() as stack:
                    contexts = [
                        deep_prompts.kept_patches(model, keep),
                        deep_prompts.vision_prompts(model, prompts[:depth]),
                    ]
                    for c in contexts if order == "patches first" else contexts[::-1]:
                        stack.enter_context(c)
                    got = model.encode_image(images)
                assert torch.allclose(got, expected, atol=1e-5), (depth, order)
        every = torch.arange(grid).expand(len(images), -1)
        with deep_prompts.kept_patches(model, every):
            full = model.encode_image(images)
    assert torch.allclose(full, model.encode_image(images), atol=1e-6)  # every patch kept: the plain image
    assert _hook_count(model) == 0
    with pytest.raises(deep_prompts.DeepPromptError), deep_prompts.kept_patches(model, keep + grid):
        pass
