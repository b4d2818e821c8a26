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
from vlprompt.experiment import grid
from vlprompt.methods import MethodContext, get_method
from vlprompt.training.feature_runs import feature_loop
from vlprompt.training.loop import loop_setup, lr_at, train_loop

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


def loop_step(method, batch, labels, tmp_path) -> None:
    """One step of the shared training loop (``train_loop``) on ``batch`` (images, views or features) at the lr of
    epoch 0, the whole batch at once."""
    cfg = dataclasses.replace(method.config, epochs=1, batch_size=len(labels))
    train_loop(
        method,
        cfg,
        0,
        torch.device("cpu"),
        len(labels),
        lambda e, g, s: [(batch, labels)],
        tmp_path / "checkpoint.pt",
        checkpoint_every=10**6,
        progress=False,
    )


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


# fixtures of parts that see no class name: APT's prompt module, TCPA's prompt pools and mixup, DAM-VP's pixel prompter
NO_CLASS_NAMES = {"apt_module.pt", "tcpa_pool.pt", "tcpa_mixup.pt", "dam_vp.pt"}


def test_fixtures_record_their_references():
    for path in sorted(tiny_clip.FIXTURES.glob("*.pt")):
        if path.name == tiny_clip.WEIGHTS.name:
            continue
        fix = torch.load(path, weights_only=True)
        assert fix["references"] and all(len(r["commit"]) == 40 for r in fix["references"]), path.name
        if path.name in NO_CLASS_NAMES:
            assert "classnames" not in fix, f"{path.name} has class names: check that they carry underscores"
            continue
        assert any("_" in c for c in fix["classnames"]), f"{path.name}: class names must carry underscores"


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


# ------------------------------------------------ extensions of CoOp and zero-shot CLIP (regenerate_extensions.py)


def plain_context(backbone, fix: dict, **kwargs) -> MethodContext:
    """A context without a registered dataset: the fixtures give their own descriptions and templates."""
    return MethodContext(
        backbone=backbone,
        encoder=PromptedTextEncoder(backbone.model),
        classnames=fix["classnames"],
        template="a photo of a {}.",
        device=torch.device("cpu"),
        seed=0,
        **kwargs,
    )


def test_cupl_pools_descriptions_as_the_reference(backbone, inputs):
    """CuPL's ``zeroshot_classifier_gpt`` (classify_imagenet.py) with and without the templates in the pool."""
    fix = fixture("cupl")
    ctx = plain_context(backbone, fix, descriptions=fix["settings"]["descriptions"])
    cupl = build("cupl", ctx)
    close(cupl.weights, fix["text_features"], what="CuPL text features")
    features = backbone.model.encode_image(inputs["images"])
    close(cupl(features) * 100 / cupl.logit_scale, fix["logits"], what="logits (the reference's scale 100)")
    both = build("cupl_ensemble", ctx, templates=tuple(fix["settings"]["templates"]))
    close(both.weights, fix["text_features_ensemble"], what="CuPL + e text features")


def test_fudd_follow_up_logits_equal_the_reference(backbone, inputs, tmp_path, monkeypatch):
    """FuDD's ``forward`` (fudd_model.py) with its ``PromptFactory`` on differential descriptions in its format."""
    fix = fixture("fudd")
    folder = tmp_path / "differential"
    folder.mkdir()
    (folder / "tiny_prompt_pairs.json").write_text(fix["settings"]["pairs"])
    (folder / "tiny_class_names.json").write_text(json.dumps(fix["settings"]["class_names"]))
    monkeypatch.setenv("VLPROMPT_DESCRIPTIONS", str(tmp_path))
    method = build("fudd", plain_context(backbone, fix, dataset="tiny"), top_k=fix["settings"]["top_k"])
    features = backbone.model.encode_image(inputs["images"])
    f = F.normalize(features, dim=-1)
    close(f @ method.weights.T, fix["step_one_logits"], what="step one (zero-shot, one template)")
    logits = method(features)
    for i, preds in enumerate(fix["preds"]):
        assert set(torch.isfinite(logits[i]).nonzero().flatten().tolist()) == set(preds.tolist())
        close(logits[i, preds] / method.logit_scale, fix["logits"][i], what=f"follow-up logits of image {i}")


@pytest.mark.parametrize("name", ["tpt", "tpt_coop"])
def test_tpt_one_step_per_image_equals_the_reference(backbone, inputs, name):
    """TPT's ``test_time_tuning`` (one step, selection 0.5) on each image's original and three noisy views; TPT + CoOp
    the same from a trained context (the fixture's ``start_context``)."""
    fix = fixture(name)
    s = fix["settings"]
    ctx = plain_context(backbone, fix)
    method = build(
        name, ctx, n_ctx=s["n_ctx"], ctx_init=s["ctx_init"], views=4, selection=s["selection"], tta_lr=s["lr"]
    )
    if "start_context" in fix:
        with torch.no_grad():
            method.prompt_learner.ctx.copy_(fix["start_context"])
    views = torch.cat([inputs["images"].unsqueeze(0), inputs["views"]])  # (V, B, 3, H, W), the original first
    feats = torch.stack([backbone.model.encode_image(v) for v in views], dim=1)  # (B, V, D)
    from vlprompt.methods.tpt import average_entropy, select_confident

    with torch.no_grad():
        logits = method.logit_scale * F.normalize(feats, dim=-1) @ method.text_features().T  # (B, V, C)
        keep = select_confident(logits, s["selection"])
        chosen = logits.gather(1, keep.unsqueeze(-1).expand(-1, -1, logits.shape[-1]))
    # the entropy of near one-hot posteriors (logits of magnitude 60) turns the fp32 rounding of the logits
    # (~1e-7 relative) into ~2e-5 of the loss: 1e-4 here; the logits below agree at 1e-5
    close(average_entropy(chosen), fix["initial_loss"], 1e-4, what="initial loss (avg_entropy of the selected views)")
    method.eval()
    close(method(feats), fix["logits"], what="logits after one tuning step")


def test_tfup_cache_and_logits_equal_the_reference(backbone, inputs):
    """TFUP's ``get_clip_weights``, ``refine_few_shots_without_label`` (the cache) and ``TFUP`` (utils.py, main.py)
    on the fixed images as the unlabelled pool and the test set (transductive, the reference's Office-Home)."""
    fix = fixture("tfup")
    images = torch.cat([inputs["images"], inputs["val_images"]])
    features = backbone.model.encode_image(images)
    close(features, fix["unlabelled_features"], what="unlabelled image features")
    ctx = plain_context(backbone, fix, descriptions=fix["settings"]["descriptions"], unlabelled=lambda: features)
    method = build("tfup", ctx)
    close(method.weights, F.normalize(fix["text_weights"], dim=-1), what="text weights")
    assert method.cache_shots == fix["settings"]["cache_shots"]
    ours = sorted(map(tuple, torch.cat([method.cache_keys, method.cache_values], 1).tolist()))
    keys = F.normalize(fix["cache_keys"], dim=-1)
    theirs = sorted(map(tuple, torch.cat([keys, fix["cache_values"]], 1).tolist()))
    close(torch.tensor(ours), torch.tensor(theirs), what="cache (keys and one-hot values, as sets)")
    close(method(features), fix["logits"], what="logits")


# ---------------------------------------------------------------- no official code: losses computed by hand on toys


class FixedText(torch.nn.Module):
    """Stands in for a prompt learner: fixed (C, D) text features, so the loss can be computed by hand."""

    def __init__(self, rows: torch.Tensor):
        super().__init__()
        self.rows = rows

    def forward(self, ctx=None) -> torch.Tensor:
        return self.rows


def basis(*indices: int, dim: int = tiny_clip.EMBED_DIM) -> torch.Tensor:
    return torch.eye(dim)[list(indices)]


def test_restore_loss_by_hand_on_a_toy(backbone):
    """x̂ = e1, W = H = (e1, e2), image surgery adds 0.75 e2: x̃ = (0.8, 0.6), δ_v = (−0.2, 0.6), ‖δ_v‖² = 0.4, the
    text does not move; with s = 10: CE = log(1 + e^{10 (0.6 − 0.8)}) = log(1 + e^{−2}) = 0.126928,
    L_fsc = (√0.4 − 0)² = 0.4."""
    fix = {"classnames": ["car_side", "sea_lion"]}
    m = build("restore", plain_context(backbone, fix), shift_weight=1.0)
    m.prompt_learner = FixedText(basis(0, 1))
    m.shift_origin = basis(0, 1)
    m.logit_scale = 10.0
    with torch.no_grad():
        m.image_surgery.up.bias.copy_(0.75 * basis(1)[0])
    loss, parts = m.loss(2 * basis(0), torch.tensor([0]))
    assert parts["shift"] == pytest.approx(0.4, rel=1e-6)
    assert parts["ce"] == pytest.approx(0.12692801104297252, rel=1e-6)
    assert loss.item() == pytest.approx(0.5269280110429725, rel=1e-6)


def test_kapt_keywords_and_loss_by_hand_on_a_toy(backbone):
    """Keywords: "red" ×2, "round" ×2, "fruit" ×2, "skin" ×1 (stop words out; ties by first appearance) -> red,
    round, fruit. Loss with d = (e1, e2), w = (e1, e3), β = ½: t_0 = e1, t_1 = ½ (e2 + e3); x̂ = (e1 + e2)/√2, the
    head the identity at the start; s = 10, label 1: logits (10/√2, 5/√2), CE = log(1 + e^{5/√2}) = 3.564261."""
    from vlprompt.methods.kapt import discrete_prompt, keywords

    words = keywords(["A red round fruit.", "A round fruit with red skin."], 3)
    assert words == ["red", "round", "fruit"]
    assert discrete_prompt("a photo of a {}.", "car_side", words) == "a photo of a car side, red, round, fruit."
    fix = {"classnames": ["car_side", "sea_lion"]}
    descriptions = {"car_side": ["A red round fruit."], "sea_lion": ["A grey animal."]}
    m = build("kapt", plain_context(backbone, fix, descriptions=descriptions), discrete_weight=0.5)
    m.prompt_learner = FixedText(basis(0, 2))
    m.discrete = basis(0, 1)
    m.logit_scale = 10.0
    loss, _ = m.loss(basis(0, 1).sum(0, keepdim=True), torch.tensor([1]))
    assert loss.item() == pytest.approx(3.5642607, rel=1e-6)


def test_pacbayes_bound_by_hand_and_the_search_by_enumeration(backbone, inputs):
    """L = 1 token, |V| = 49406, n = 100, training error 0.1, δ = 0.05: KL = ln 49406 = 10.807827, ln(n/δ) = 7.600902,
    R ≤ 0.1 + √(18.408730 / 198) = 0.404915, so the accuracy bound is 59.5085 %. The greedy search over a few
    candidate tokens picks the token that an enumeration of those prompts ranks first."""
    fix = {"classnames": ["car_side", "sea_lion", "water_lily", "ant"]}
    ctx = plain_context(backbone, fix)
    m = build("pacbayes_prompt", ctx, n_tokens=1, candidates=6)
    bound = m.bound(0.1, 100)
    assert bound["kl"] == pytest.approx(10.8078, abs=1e-4)
    assert bound["accuracy_bound"] == pytest.approx(59.5085, abs=1e-4)
    features = backbone.model.encode_image(inputs["images"])
    labels = inputs["labels"]
    ctx.train_features, ctx.train_labels = features.unsqueeze(0), labels
    m.fit(ctx)
    names = m.class_tokens(m.classnames)
    x = F.normalize(features, dim=-1)
    ranked = []
    for token in m.candidate_tokens(0).tolist():
        w = m.text_features(torch.tensor([[token]]), names)[0]  # (C, D)
        logits = m.logit_scale * x @ w.T
        ranked.append(
            ((logits.argmax(-1) == labels).float().mean().item(), -F.cross_entropy(logits, labels).item(), -token)
        )
    assert m.prompt_tokens.tolist() == [-max(ranked)[2]]
    assert m.run_info()["bound"]["n"] == len(labels)


# ---------------------------------------------------------------- ATPrompt (regenerate_extensions.py)


def test_atprompt_on_oxford_pets_equals_the_reference_slicing(backbone, inputs, tmp_path):
    """CoOp_ATP on OxfordPets ("playfulness" is two tokens): the default ``attribute_tokens: reference`` writes the
    soft tokens where the reference's slicing does; text features, logits, loss, gradient and one step."""
    fix = fixture("atprompt_pets")
    ctx = context(backbone, fix)
    method = build("atprompt", ctx, n_ctx=2, n_att_ctx=2)
    assert method.config.attribute_tokens == "reference" and method.attributes == ["playfulness", "energy"]
    load_init(method, fix)
    features = backbone.model.encode_image(inputs["images"])
    check_forward(method, features, fix)
    assert F.cross_entropy(method(features), fix["labels"]).item() == pytest.approx(fix["loss"]["ce"], rel=RTOL)
    step_and_check(method, ctx, features, fix, tmp_path)


def test_atprompt_keeping_every_attribute_token_differs_from_the_reference_on_oxford_pets(backbone):
    fix = fixture("atprompt_pets")
    method = build("atprompt", context(backbone, fix), n_ctx=2, n_att_ctx=2, attribute_tokens="all")
    load_init(method, fix)
    with torch.no_grad():
        assert (method.text_features() - fix["text_features"]).abs().max() > 1e-3


def test_pre_equals_the_reference(backbone, inputs, tmp_path):
    """PRE's shared residual BiLSTM encoder (LSTM1) on CoOp's context from "a photo of a": text features, logits,
    loss, gradient and one step (the reference's random LSTM initialisation copied)."""
    fix = fixture("pre")
    ctx = context(backbone, fix)
    method = build("pre", ctx)
    load_init(method, fix)
    features = backbone.model.encode_image(inputs["images"])
    check_forward(method, features, fix)
    assert F.cross_entropy(method(features), fix["labels"]).item() == pytest.approx(fix["loss"]["ce"], rel=RTOL)
    step_and_check(method, ctx, features, fix, tmp_path)


def test_msgcoop_equals_the_reference(backbone, inputs, tmp_path):
    """MSGCoOp: 4 prompts from "a photo of a", description anchors ("a photo of {class}, {description}"), KgCoOp's
    term (weight 8) on the mean of the prompts and the diversity term (weight 1): logits, every loss term,
    gradient and one step."""
    fix = fixture("msgcoop")
    ctx = context(backbone, fix, descriptions=fix["settings"]["descriptions"])
    method = build("msgcoop", ctx, n_ctx=4, n_prompts=4, kg_weight=8.0, diversity_weight=1.0)
    load_init(method, fix)
    close(F.normalize(method.anchors, dim=-1), fix["anchors"], what="description anchors")
    features = backbone.model.encode_image(inputs["images"])
    close(method(features), fix["logits"], what="logits")
    loss, parts = method.loss(features, fix["labels"])
    for ours, theirs in (("ce", "ce"), ("sg", "kg"), ("div", "diversity")):
        assert parts[ours] == pytest.approx(fix["loss"][theirs], rel=RTOL, abs=1e-7), ours
    assert loss.item() == pytest.approx(fix["loss"]["total"], rel=RTOL)
    step_and_check(method, ctx, features, fix, tmp_path)


# ---------------------------------------------------------------- MoCoOp, OGEN, MVLPT (regenerate_extensions.py)


def mocoop_method(backbone, fix: dict, **overrides):
    """MoCoOp on the fixture's templates and groups, its experts written as the reference's (no final ".")."""
    settings = {"templates": tuple(fix["settings"]["templates"]), "groups": tuple(fix["settings"]["groups"])}
    ctx = context(backbone, fix)
    return ctx, build("mocoop", ctx, **settings, **{"expert_full_stop": False, **overrides})


def test_mocoop_equals_the_reference(backbone, inputs, tmp_path):
    """MoCoOp's experts (words around the class name learnable), correction vector and top-2 router: prototypes,
    experts' text features, router logits, mixed logits, CE + 5 · text-to-text + 1 · routing loss, the gradient
    clipped at norm 1 (the reference's is clipped: its norm was above 1) and one step."""
    fix = fixture("mocoop")
    ctx, method = mocoop_method(backbone, fix)
    c = method.config
    assert (c.text_loss_weight, c.gate_loss_weight, c.top_k, c.grad_clip) == (5.0, 1.0, 2, 1.0)
    for name, value in fix["init"].items():  # the experts start from their templates' words, the router at random
        if name.startswith("experts.") or name == "correction":
            close(dict(method.named_parameters())[name], value, what=f"initial {name}")
    load_init(method, fix)
    features = backbone.model.encode_image(inputs["images"])
    close(method.prototypes, fix["prototypes"], what="group prototypes")
    with torch.no_grad():
        close(method.expert_text_features(), fix["expert_text_features"], what="experts' text features")
        close(method.router(F.normalize(features, dim=-1)), fix["gate"], what="router logits")
        close(method(features), fix["logits"], what="logits")
    loss, parts = method.loss(features, fix["labels"])
    for ours, theirs in (("ce", "ce"), ("t2t", "t2t"), ("gate", "gate")):
        assert parts[ours] == pytest.approx(fix["loss"][theirs], rel=RTOL), ours
    assert loss.item() == pytest.approx(fix["loss"]["total"], rel=RTOL)
    assert fix["grad_norm"] == pytest.approx(c.grad_clip, rel=1e-4)
    step_and_check(method, ctx, features, fix, tmp_path)


def mocoop_words_after(backbone) -> tuple[dict, object]:
    """The fixture with an expert "a {} in a video game.", vlprompt's experts from their words, the reference's
    router and (zero) correction copied."""
    fix = fixture("mocoop_words_after")
    _, method = mocoop_method(backbone, fix)
    params = dict(method.named_parameters())
    with torch.no_grad():
        for name in ("router.weight", "router.bias", "correction"):
            params[name].copy_(fix["init"][name])
    return fix, method


def test_mocoop_expert_with_words_after_the_class_name_starts_as_the_reference(backbone, inputs):
    """At the start the reference's extra learnable position holds the end-of-text embedding, so the prompts
    agree: text features, logits and every loss term."""
    fix, method = mocoop_words_after(backbone)
    features = backbone.model.encode_image(inputs["images"])
    with torch.no_grad():
        close(method.expert_text_features(), fix["expert_text_features"], what="experts' text features")
        close(method(features), fix["logits"], what="logits")
    _, parts = method.loss(features, fix["labels"])
    for term in ("ce", "t2t", "gate"):
        assert parts[term] == pytest.approx(fix["loss"][term], rel=RTOL), term


@pytest.mark.xfail(
    strict=True,
    reason="known difference: the reference sizes an expert's words after the class name by splitting on spaces "
    "(' in a video game' is 5 'words': '' and 4 more), so its slot also makes the end-of-text position learnable; "
    "vlprompt's slot holds the 4 tokens of the words (vlprompt.methods.mocoop, 'Known difference')",
)
def test_mocoop_expert_with_words_after_the_class_name_trains_as_the_reference(backbone, inputs):
    fix, method = mocoop_words_after(backbone)
    loss, _ = method.loss(backbone.model.encode_image(inputs["images"]), fix["labels"])
    loss.backward()
    slot = dict(method.named_parameters())["experts.1.slots.after"]
    close(slot.grad, fix["grad"]["experts.1.slots.after"], what="gradient of the words after the class name")


def test_mocoop_experts_ending_with_a_full_stop_differ_from_the_reference(backbone):
    """The default keeps the template's "." in the experts' prompts (the reference strips it)."""
    fix = fixture("mocoop")
    _, method = mocoop_method(backbone, fix, expert_full_stop=True)
    load_init(method, fix)
    with torch.no_grad():
        assert (method.expert_text_features() - fix["expert_text_features"]).abs().max() > 1e-3


def ogen_method(backbone, fix: dict, features, **overrides):
    """OGEN with the fixture's batch as its feature bank (class statistics), the new classes' names, the reference's
    constant 512 on the MSE terms, attention dropout 0 and no self-distillation (the reference has none)."""
    ctx = context(
        backbone,
        fix,
        train_features=features.unsqueeze(0),
        train_labels=fix["labels"],
        unseen_classnames=fix["settings"]["new_classes"],
    )
    settings = {"gen_loss_scale": 512.0, "dropout": fix["settings"]["dropout"], "distill_weight": 0.0}
    method = build("ogen", ctx, **{**settings, **overrides})
    return ctx, method


def fixed_draw(monkeypatch, u: torch.Tensor) -> None:
    """The generator's draw u ~ U[0, 1)^D returns the reference's (every other torch.rand call is left alone)."""
    rand = torch.rand
    monkeypatch.setattr(torch, "rand", lambda *size, **kw: u.clone() if size == tuple(u.shape) else rand(*size, **kw))


@pytest.mark.parametrize("phase", ["warm", "joint"])
def test_ogen_equals_the_reference(backbone, inputs, phase, tmp_path, monkeypatch):
    """OGEN: class statistics and neighbours, CoOp's and the new classes' text features, logits, then one step in
    the generator's warm phase (L_gen alone; the context gets no gradient) or in the joint phase (L_gen + L_syn +
    the new-class term): every loss term, the gradient and one step."""
    fix = fixture("ogen")
    features = backbone.model.encode_image(inputs["images"])
    ctx, method = ogen_method(backbone, fix, features)
    assert method.config.neighbours == fix["settings"]["k"] and method.run_info()["unseen_class_term"]
    close(method.prompt_learner.ctx, fix["init"]["prompt_learner.ctx"], what="context from 'a photo of a'")
    load_init(method, fix)
    close(method.class_mean, fix["class_mean"], what="class means")
    close(method.class_std, fix["class_std"], what="class standard deviations")
    assert torch.equal(method.neighbours, fix["neighbours"])
    with torch.no_grad():
        close(method.text_features(), fix["text_features"], what="text features")
        close(F.normalize(method.unseen(), dim=-1), fix["new_text_features"], what="new classes' text features")
        close(method(features), fix["logits"], what="logits")
    fixed_draw(monkeypatch, fix["u"])
    ref = fix[phase]
    method.ogen_step.fill_(ref["epoch"] * method.steps_per_epoch)
    with torch.no_grad():
        _, parts = method.loss(features, fix["labels"])
    method.ogen_step.fill_(ref["epoch"] * method.steps_per_epoch)
    for ours, theirs in (("gen", "gen"), ("syn", "syn"), ("unseen", "new")):
        if theirs in ref["loss"]:
            assert parts[ours] == pytest.approx(ref["loss"][theirs], rel=RTOL), ours
    assert set(parts) == {"gen"} | ({"syn", "unseen"} if phase == "joint" else set())
    assert sum(parts.values()) == pytest.approx(ref["loss"]["total"], rel=RTOL)
    assert lr_at(method.config, 0) == pytest.approx(fix["lr"])
    feature_step(method, ctx, features, fix["labels"], tmp_path)
    for n, p in trainable(method).items():
        if n in ref["grad"]:
            close(p.grad, ref["grad"][n], what=f"gradient of {n}")
        else:  # the warm phase trains the generator alone
            assert p.grad is None or not p.grad.any(), n
        close(p, ref["after"][n], what=f"{n} after one step")


def test_mvlpt_multitask_stage_equals_the_reference(backbone, inputs, tmp_path):
    """MVLPT's multitask stage (MCoOp) on two sources, whose label spaces the reference concatenates: 16 random
    context tokens with the class name in the middle over the 7 classes, text features, logits on both sources'
    images, the cross-entropy, the gradient and one step."""
    from vlprompt.methods.mvlpt import merge_sources

    fix = fixture("mvlpt")
    first, second = fix["settings"]["sources"]
    encode = backbone.model.encode_image
    features = [encode(inputs["images"]), encode(inputs["val_images"][:6])]
    labels = [fix["labels"][:6], fix["labels"][6:] - len(first)]
    sources = [
        dataclasses.replace(context(backbone, fix, train_features=f.unsqueeze(0), train_labels=y), classnames=names)
        for names, f, y in zip((first, second), features, labels, strict=True)
    ]
    ctx = merge_sources(sources)
    assert ctx.classnames == first + second  # distinct names: the concatenated label space
    cls = get_method("mvlpt")
    method = cls(cls.source_config(cls.make_config({})), ctx)
    assert (method.prompt_learner.n_ctx, method.config.class_token_position) == (16, "middle")
    load_init(method, fix)
    merged = ctx.train_features[0]
    assert torch.equal(ctx.train_labels, fix["labels"])
    check_forward(method, merged, fix)
    close(method.loss(merged, ctx.train_labels)[0], fix["loss"]["ce"], what="loss")
    step_and_check(method, ctx, merged, fix, tmp_path)


def test_mvlpt_target_starts_from_the_reference_average_of_the_source_stages(backbone, tmp_path):
    """The source prompt averaged over the stages of seeds 1-3 (the reference's scripts/avg_ckpt.py on three
    checkpoints), then the target run's context."""
    from vlprompt.io import atomic_torch_save, atomic_write_json, file_record
    from vlprompt.training.context import load_multitask_prompt

    fix = fixture("mvlpt")
    cfg = {"results_root": str(tmp_path), "experiment": "avg"}
    seeds = list(get_method("mvlpt").make_config({}).source_seeds)
    for seed, ctx in zip(seeds, fix["source_contexts"], strict=True):
        folder = grid.multitask_dir(cfg, "mvlpt", 2, seed)
        folder.mkdir(parents=True)
        atomic_torch_save(folder / "model.pt", {"state": {"prompt_learner.ctx": ctx}})
        atomic_write_json(folder / "metrics.json", {"artefacts": {"model.pt": file_record(folder / "model.pt")}})
    state = load_multitask_prompt(cfg, "mvlpt", 2, seeds, torch.device("cpu"))
    close(state["prompt_learner.ctx"], fix["averaged_context"], what="averaged source context")
    target = build("mvlpt", context(backbone, fix, multitask_prompt=state))
    assert torch.equal(target.prompt_learner.ctx.detach(), state["prompt_learner.ctx"])
