"""vlprompt against the official code of each method.

The numbers come from ``tests/reference/fixtures/*.pt``, written by ``tests/reference/regenerate.py`` from the
official repositories (their commits are recorded in each fixture) on a tiny OpenAI-layout CLIP with fixed
weights (``tests/reference/tiny_clip.py``). Here the same weights go through vlprompt's own loading path (a local
weights file into open_clip), and each method is compared with its reference: initial parameters where the
initialisation is deterministic (random ones are copied from the reference), text features, logits, every loss
term, the gradient and the parameters after one optimiser step of the shared training loop. Tolerance: 1e-5
relative (fp32). Where vlprompt deviates on purpose the test asserts the documented deviation; where it differs
today for a reason still to be fixed, the test is a strict xfail naming the difference.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F

from reference import tiny_clip
from vlprompt.clip.backbone import PromptedTextEncoder, load_backbone, open_clip
from vlprompt.data.registry import get_dataset
from vlprompt.methods import MethodContext, get_method
from vlprompt.training.feature_runs import feature_loop
from vlprompt.training.loop import loop_setup, lr_at

RTOL = 1e-5
# name in vlprompt's registry of the Dassl dataset names the fixtures use
DATASETS = {"Caltech101": "Caltech101", "OxfordPets": "OxfordPets", "DescribableTextures": "DTD"}


def fixture(name: str) -> dict:
    return torch.load(tiny_clip.FIXTURES / f"{name}.pt", map_location="cpu", weights_only=True)


def close(actual, expected, rtol: float = RTOL, what: str = "") -> None:
    """|actual − expected| <= rtol · max|expected| elementwise (relative to the tensor's scale)."""
    expected = torch.as_tensor(expected, dtype=torch.float32)
    actual = torch.as_tensor(actual, dtype=torch.float32).detach()
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    scale = float(expected.abs().max()) or 1.0
    err = float((actual - expected).abs().max())
    assert err <= rtol * scale, f"{what}: max |difference| {err:.3g} > {rtol:g} x {scale:.3g}"


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    """The tiny CLIP loaded by vlprompt as a user's checkpoint: an open_clip config and a local weights file."""
    tmp = tmp_path_factory.mktemp("tiny_clip")
    oc = open_clip()
    if tiny_clip.MODEL_NAME not in oc.list_models():
        config = tmp / f"{tiny_clip.MODEL_NAME}.json"
        config.write_text(json.dumps(tiny_clip.OPEN_CLIP_CONFIG))
        oc.add_model_config(config)
    weights = tmp / "tiny_clip_openai_layout.pt"
    torch.save(tiny_clip.state_dict(), weights)
    return load_backbone(tiny_clip.MODEL_NAME, str(weights), force_quick_gelu=True)


@pytest.fixture(scope="module")
def inputs():
    return tiny_clip.inputs()


def context(backbone, fix: dict, dataset: str = "Caltech101", **kwargs) -> MethodContext:
    name = DATASETS[fix["settings"].get("dataset", dataset)]
    return MethodContext(
        backbone=backbone,
        encoder=PromptedTextEncoder(backbone.model),
        classnames=fix["classnames"],
        template=get_dataset(name).template,
        device=torch.device("cpu"),
        seed=0,
        dataset=name,
        **kwargs,
    )


def build(name: str, ctx: MethodContext, **overrides):
    cls = get_method(name)
    return cls(cls.make_config(overrides), ctx)


def trainable(method) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in method.named_parameters() if p.requires_grad}


def load_init(method, fix: dict) -> None:
    """The reference's initial values of every trained parameter (names as vlprompt's)."""
    params = trainable(method)
    assert set(params) == set(fix["init"]), (sorted(params), sorted(fix["init"]))
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(fix["init"][n])


def check_step(method, fix: dict, grad_rtol: float = RTOL) -> None:
    """Gradient and parameters after one optimiser step against the reference's."""
    for n, p in trainable(method).items():
        close(p.grad, fix["grad"][n], grad_rtol, f"gradient of {n}")
        close(p, fix["after"][n], RTOL, f"{n} after one step")


def feature_step(method, ctx: MethodContext, features, labels, tmp_path) -> None:
    """One step of the shared loop (``feature_loop``) on one batch: one view, all images in the batch."""
    # the lr of epoch 0 does not depend on the schedule's length; the batch is the fixture's (CoCoOp's preset is 1)
    cfg = dataclasses.replace(method.config, epochs=1, batch_size=len(labels))
    step_ctx = dataclasses.replace(ctx, train_features=features.unsqueeze(0), train_labels=labels)
    feature_loop(method, step_ctx, cfg, tmp_path / "checkpoint.pt", checkpoint_every=10**6, progress=False)


def step_and_check(method, ctx: MethodContext, features, fix: dict, tmp_path) -> None:
    """The reference's lr at the first step, then one step of the shared loop, checked."""
    assert lr_at(method.config, 0) == pytest.approx(fix["lr"])
    feature_step(method, ctx, features, fix["labels"], tmp_path)
    check_step(method, fix)


def check_forward(method, features, fix: dict) -> None:
    """Normalised text features of the learned prompts and the logits on the batch."""
    close(method.text_features(), fix["text_features"], what="text features")
    close(method(features), fix["logits"], what="logits")


def image_step(method, images, labels) -> float:
    """One step as ``image_runs.image_loop`` takes it (same optimiser, lr and order of calls)."""
    opt, _, _ = loop_setup(method, method.config, torch.device("cpu"), len(labels))
    for group in opt.param_groups:
        group["lr"] = lr_at(method.config, 0)
    method.train()
    loss, _ = method.loss(images, labels)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item()


# ---------------------------------------------------------------- the backbone itself


def test_fixtures_record_their_references():
    for path in sorted(tiny_clip.FIXTURES.glob("*.pt")):
        if path.name == tiny_clip.WEIGHTS.name:
            continue
        fix = torch.load(path, weights_only=True)
        assert fix["references"] and all(len(r["commit"]) == 40 for r in fix["references"]), path.name
        assert any("_" in c for c in fix["classnames"]), "class names must carry underscores"


def test_open_clip_loading_equals_the_reference_clip(backbone, inputs):
    """OpenAI's image tower (CoOp's clip/model.py) and open_clip's, loaded from the same file."""
    fix = fixture("coop")
    close(backbone.model.encode_image(inputs["images"]), fix["image_features"], what="image features")
    # ln 100 stored in fp16 (as in OpenAI's checkpoints): exp gives 100.03, not 100
    assert backbone.model.logit_scale.item() == tiny_clip.state_dict()["logit_scale"].item()


# ---------------------------------------------------------------- zero-shot CLIP


def test_zeroshot(backbone, inputs):
    """Class names with underscores, written with spaces as the reference does."""
    fix = fixture("zeroshot")
    method = build("zeroshot", context(backbone, fix))
    assert [fix["settings"]["template"]] == method.templates
    close(method.weights, fix["text_features"], what="text features")
    close(method(backbone.model.encode_image(inputs["images"])), fix["logits"], what="logits")


def test_zeroshot_without_underscores(backbone, inputs):
    """The zero-shot path itself matches once the class names are spelled as the reference spells them."""
    fix = fixture("zeroshot")
    ctx = context(backbone, fix)
    ctx.classnames = [c.replace("_", " ") for c in fix["classnames"]]
    method = build("zeroshot", ctx)
    close(method.weights, fix["text_features"], what="text features")
    close(method(backbone.model.encode_image(inputs["images"])), fix["logits"], what="logits")


# ---------------------------------------------------------------- CoOp, CoCoOp


@pytest.mark.parametrize("name", ["coop", "coop_csc_middle"])
def test_coop(backbone, inputs, name, tmp_path):
    fix = fixture(name)
    ctx = context(backbone, fix)
    if name == "coop":
        method = build("coop", ctx)
        close(method.prompt_learner.ctx, fix["init"]["prompt_learner.ctx"], what="context from 'a photo of a'")
    else:  # random class-specific context, class name in the middle
        method = build("coop_csc", ctx, ctx_init=None, class_token_position="middle")
        load_init(method, fix)
    n_ctx = method.prompt_learner.n_ctx  # the tokens around the context (SOS; class name, ".", EOS) as tokenized
    tokens = method.prompt_learner.tokens
    assert torch.equal(tokens[:, 0], fix["tokenized_prompts"][:, 0])
    assert torch.equal(tokens[:, 1 + n_ctx :], fix["tokenized_prompts"][:, 1 + n_ctx :])
    features = backbone.model.encode_image(inputs["images"])
    check_forward(method, features, fix)
    loss, parts = method.loss(features, fix["labels"])
    close(loss, fix["loss"]["ce"], what="loss")
    step_and_check(method, ctx, features, fix, tmp_path)


def test_cocoop(backbone, inputs, tmp_path):
    fix = fixture("cocoop")
    ctx = context(backbone, fix)
    method = build("cocoop", ctx)
    close(method.prompt_learner.ctx, fix["init"]["prompt_learner.ctx"], what="context from 'a photo of a'")
    load_init(method, fix)
    features = backbone.model.encode_image(inputs["images"])
    close(
        method.instance_text_features(F.normalize(features, dim=-1)),
        fix["text_features"],
        what="instance-conditioned text features",
    )
    close(method(features), fix["logits"], what="logits")
    close(method.loss(features, fix["labels"])[0], fix["loss"]["ce"], what="loss")
    step_and_check(method, ctx, features, fix, tmp_path)


# ---------------------------------------------------------------- KgCoOp, ProGrad (CoOp + a term)


@pytest.mark.parametrize("name", ["kgcoop", "kgcoop_dtd"])  # DTD: KgCoOp's own anchor template
def test_kgcoop(backbone, inputs, name, tmp_path):
    fix = fixture(name)
    ctx = context(backbone, fix)
    method = build("kgcoop", ctx)
    assert method.config.kg_weight == fix["settings"]["W"]
    close(method.prompt_learner.ctx, fix["init"]["prompt_learner.ctx"], what="context from 'a photo of a'")
    features = backbone.model.encode_image(inputs["images"])
    check_forward(method, features, fix)
    close(method.anchors, fix["anchors"], what="anchors (hand-crafted prompts' features)")
    loss, parts = method.loss(features, fix["labels"])
    close(parts["ce"], fix["loss"]["ce"], what="CE")
    close(parts["kg"], fix["loss"]["kg"], what="knowledge term")
    close(loss, fix["loss"]["total"], what="total loss")
    step_and_check(method, ctx, features, fix, tmp_path)


# prograd_pets: ProGrad's own template table ('a type of pet, a photo of a {}.' for OxfordPets) for its teacher and
# context init; the reference's init counts words, not tokens, so 'pet,' (2 tokens) leaves the template's last 'a'
# as fixed text before the class name (Prompt-align trainers/prograd.py, PromptLearner)
@pytest.mark.parametrize("name", ["prograd", "prograd_pets"])
def test_prograd(backbone, inputs, name, tmp_path):
    fix = fixture(name)
    ctx = context(backbone, fix)
    method = build("prograd", ctx)
    assert method.prompt_learner.n_ctx == fix["settings"]["n_ctx"]
    assert method.config.prograd_lambda == fix["settings"]["lambda"]
    assert method.config.kd_temperature == fix["settings"]["T"]
    close(method.prompt_learner.ctx, fix["init"]["prompt_learner.ctx"], what="context (zeros, then template words)")
    close(method.teacher_weights, fix["teacher_features"], what="teacher's text features")
    features = backbone.model.encode_image(inputs["images"])
    check_forward(method, features, fix)
    loss, parts = method.loss(features, fix["labels"])
    close(loss, fix["loss"]["ce"], what="loss (CE; the KL term only steers the gradient)")
    close(parts["kl"], fix["loss"]["kl"], what="KL term")
    assert lr_at(method.config, 0) == pytest.approx(fix["lr"])
    assert fix["conflict"] or name != "prograd", "the fixture must exercise the projection"
    feature_step(method, ctx, features, fix["labels"], tmp_path)
    check_step(method, fix)
    if fix["conflict"]:  # the projection changed the CE gradient
        assert (fix["grad"]["prompt_learner.ctx"] - fix["grad_ce"]).abs().max() > 1e-3 * fix["grad_ce"].abs().max()


# ---------------------------------------------------------------- CLIP-Adapter, Tip-Adapter


def test_clip_adapter(backbone, inputs, tmp_path):
    fix = fixture("clip_adapter")
    ctx = context(backbone, fix)
    method = build("clip_adapter", ctx)
    assert method.config.ratio == fix["settings"]["ratio"]
    assert method.templates == [fix["settings"]["template"]]
    load_init(method, fix)
    features = backbone.model.encode_image(inputs["images"])
    close(method.weights, fix["text_features"], what="zero-shot text classifier")
    close(method(features), fix["logits"], what="logits")
    close(method.loss(features, fix["labels"])[0], fix["loss"]["ce"], what="loss")
    step_and_check(method, ctx, features, fix, tmp_path)


def tip_context(backbone, fix: dict, inputs) -> MethodContext:
    encode = backbone.model.encode_image
    return context(
        backbone,
        fix,
        dataset="OxfordPets",
        train_features=torch.stack([encode(v) for v in inputs["views"][:2]]),
        train_labels=inputs["labels"],
        val_features=encode(inputs["val_images"]),
        val_labels=inputs["val_labels"],
    )


def test_tip_adapter(backbone, inputs):
    """Cache (keys from two augmented views, one-hot values), classifier and the alpha/beta grid search."""
    fix = fixture("tip_adapter")
    ctx = tip_context(backbone, fix, inputs)
    method = build("tip_adapter", ctx)
    s = fix["settings"]
    assert method.templates == s["template"]
    assert (method.config.beta_max, method.config.alpha_max) == tuple(s["search_scale"])
    assert (method.config.beta_steps, method.config.alpha_steps) == tuple(s["search_step"])
    assert (method.config.init_alpha, method.config.init_beta) == (s["init_alpha"], s["init_beta"])
    close(method.weights, fix["text_features"], what="zero-shot classifier")
    close(method.cache_keys, fix["cache_keys"], what="cache keys")
    assert torch.equal(method.cache_values, fix["cache_values"])
    method.fit(ctx)
    assert (method.alpha, method.beta) == pytest.approx((fix["alpha"], fix["beta"]))


def test_tip_adapter_logits(backbone, inputs):
    fix = fixture("tip_adapter")
    method = build("tip_adapter", tip_context(backbone, fix, inputs))
    close(
        method.logits(backbone.model.encode_image(inputs["val_images"]), fix["alpha"], fix["beta"]),
        fix["logits"],
        what="Tip-Adapter logits",
    )


def test_tip_adapter_f(backbone, inputs, tmp_path):
    fix = fixture("tip_adapter")
    ctx = tip_context(backbone, fix, inputs)
    method = build("tip_adapter_f", ctx)
    assert method.config.lr == fix["settings"]["lr"]
    features = backbone.model.encode_image(inputs["views"][2])  # the fine-tuning batch: a third view
    close(method.loss(features, inputs["labels"])[0], fix["f_loss"]["ce"], what="Tip-Adapter-F loss")
    feature_step(method, ctx, features, inputs["labels"], tmp_path)
    close(method.cache_keys, fix["f_after"]["cache_keys"], what="cache keys after one AdamW step")


# ---------------------------------------------------------------- linear probe (CoOp's lpclip)


def test_linear_probe(backbone):
    """lpclip's 16-shot run on a fixed feature set (all of its 16 train and 4 val features per class, of the tiny
    CLIP's width): the same predictions on the test features."""
    fix = fixture("linear_probe")
    n_cls = int(fix["train_labels"].max()) + 1
    ctx = MethodContext(
        backbone=backbone,
        encoder=None,
        classnames=[f"class_{i}" for i in range(n_cls)],
        template="{}",
        device=torch.device("cpu"),
        train_features=fix["train_features"][None],
        train_labels=fix["train_labels"],
        val_features=fix["val_features"],
        val_labels=fix["val_labels"],
    )
    method = build("linear_probe", ctx)
    method.fit(ctx)
    with torch.no_grad():
        pred = method(fix["test_features"]).argmax(-1)
    assert torch.equal(pred, fix["test_pred"].long())
    assert 100 * (pred == fix["test_labels"]).float().mean().item() == pytest.approx(fix["test_acc"])


# ------------------------------------------------------- image encoder in the loop: IVLP, VPT, MaPLe, PromptSRC

DEEP = {
    "ivlp": ("ivlp", {"n_ctx_vision": 2, "n_ctx_text": 2, "depth_vision": 2, "depth_text": 2}),
    "vpt": ("vpt_deep", {"n_ctx_vision": 4, "depth_vision": 2, "template": "a photo of a {}."}),
    "maple": ("maple", {"n_ctx": 2, "depth": 2}),
    "promptsrc": ("promptsrc", {"n_ctx_vision": 4, "n_ctx_text": 4, "depth_vision": 2, "depth_text": 2}),
}


@pytest.mark.parametrize("name", sorted(DEEP))
def test_deep_prompts(backbone, inputs, name):
    fix = fixture(name)
    method_name, overrides = DEEP[name]
    method = build(method_name, context(backbone, fix), **overrides)
    if "prompt_learner.ctx" in fix["init"]:  # deterministic: the first tokens of "a photo of a"
        close(method.prompt_learner.ctx, fix["init"]["prompt_learner.ctx"], what="text context init")
    load_init(method, fix)
    images, labels = inputs["images"], fix["labels"]
    close(method.image_features(images), fix["image_features"], what="prompted image features")
    close(method.text_features(), fix["text_features"], what="prompted text features")
    close(method(images), fix["logits"], what="logits")
    loss, parts = method.loss(images, labels)
    for term, value in fix["loss"].items():
        # PromptSRC's KL term (0.06 here) is a sum of products of nearly equal log-probabilities: fp32 rounding of
        # the logits (about 100 · 1e-7) moves it by about 1e-6, so its tolerance is relative to the CE term's scale
        rtol = RTOL * fix["loss"]["ce"] / value if term == "logits" else RTOL
        close(loss if term == "total" else parts[term], value, rtol, what=f"loss term {term}")
    assert lr_at(method.config, 0) == pytest.approx(fix["lr"])
    image_step(method, images, labels)
    # PromptSRC's gradient (L1 terms weighted 25 and 10, KL) has an fp32 noise floor of about 1e-5: measured, the
    # fp32 gradient differs from an fp64 one by 9e-6 (vlprompt) and 1.2e-5 (the reference) relative
    check_step(method, fix, grad_rtol=5e-5 if name == "promptsrc" else RTOL)


def test_promptsrc_teacher_and_aggregation(backbone):
    from vlprompt.methods.promptsrc import gaussian_weights

    fix = fixture("promptsrc")
    method = build("promptsrc", context(backbone, fix), **DEEP["promptsrc"][1])
    close(method.teacher_text(), fix["teacher_text"], what="frozen text features averaged over 60 templates")
    cfg = method.config
    close(
        torch.tensor(gaussian_weights(cfg.epochs, cfg.gpa_mean, cfg.gpa_std)),
        fix["gpa_weights"],
        what="Gaussian prompt aggregation weights",
    )


def test_vpt_default_template(backbone):
    """The preset's text side is the reference's 'a photo of a {}.' on every dataset."""
    fix = fixture("vpt")
    overrides = {k: v for k, v in DEEP["vpt"][1].items() if k != "template"}
    method = build("vpt_deep", context(backbone, fix), **overrides)
    close(method.text_features(), fix["text_features"], what="fixed text classifier")
