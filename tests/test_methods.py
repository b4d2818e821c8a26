"""The core method zoo (zero-shot CLIP, CoOp and its family, the adapters): every loss against values computed by hand,
new classes, configs, and a few training steps through the shared loop on random features (tiny random pocket
CLIP, one thread)."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from vlprompt.clip.backbone import PromptedTextEncoder, encode_prompts
from vlprompt.methods import MethodContext, MethodError, get_method
from vlprompt.methods.kgcoop import knowledge_loss
from vlprompt.methods.prograd import distillation_loss, init_words, project_conflicting
from vlprompt.methods.tip_adapter import cache_logits, search_grid
from vlprompt.methods.zeroshot_ensemble import resolve_templates, template_sets
from vlprompt.training.feature_runs import feature_loop

NAMES = ["red circle", "blue square", "green star"]
NEW = ["pink ring", "black cross"]
NEW_METHODS = [
    "zeroshot_ensemble",
    "clip_adapter",
    "tip_adapter",
    "tip_adapter_f",
    "cocoop",
    "kgcoop",
    "prograd",
    "dvmi",
]
TRAINED = ["clip_adapter", "tip_adapter_f", "cocoop", "kgcoop", "prograd", "dvmi"]
FAST = {"epochs": 8, "batch_size": 8, "lr": 0.02, "warmup_epochs": 0}  # a few quick steps
# ProGrad's 16 reference tokens + class name + SOS/./EOS exceed the pocket CLIP's 20-token context
POCKET = {"prograd": {"n_ctx": 8}}


def context(backbone, names=NAMES, views=2, per_class=6, seed=0, **extra):
    """Random features with class structure: a random centre per class plus noise, in V views; ``extra``:
    further MethodContext fields."""
    gen = torch.Generator().manual_seed(seed)
    dim = backbone.embed_dim
    centres = torch.randn(len(names), dim, generator=gen) * 2
    y = torch.arange(len(names)).repeat_interleave(per_class)
    train = centres[y] + 0.5 * torch.randn(views, len(y), dim, generator=gen)
    val_y = torch.arange(len(names)).repeat(2)
    val = centres[val_y] + 0.5 * torch.randn(len(val_y), dim, generator=gen)
    return MethodContext(
        backbone=backbone,
        encoder=PromptedTextEncoder(backbone.model),
        classnames=list(names),
        template="a photo of a {}.",
        device=torch.device("cpu"),
        train_features=train,
        train_labels=y,
        val_features=val,
        val_labels=val_y,
        seed=seed,
        **extra,
    )


def build(name, ctx, **overrides):
    cls = get_method(name)
    return cls(cls.make_config({**POCKET.get(name, {}), **overrides}), ctx)


@pytest.fixture(scope="module")
def ctx(pocket_random_backbone):
    return context(pocket_random_backbone)


# ---------------------------------------------------------------- configs and registry


@pytest.mark.parametrize("name", NEW_METHODS)
def test_make_config_rejects_unknown_keys(name):
    with pytest.raises(MethodError, match="unknown hyperparameter"):
        get_method(name).make_config({"no_such_key": 1})


def test_make_config_types_overrides_like_the_preset():
    coop = get_method("coop")
    cfg = coop.make_config({"epochs": "5", "lr": 1, "ctx_init": None, "warmup_epochs": 0.0})
    assert (cfg.epochs, cfg.lr, cfg.ctx_init, cfg.warmup_epochs) == (5, 1.0, None, 0)
    assert type(cfg.epochs) is int and type(cfg.lr) is float
    assert get_method("dvmi").make_config({"mi_symmetric": "false"}).mi_symmetric is False
    with pytest.raises(MethodError, match="'epochs' must be of type int.*got 'ten'"):
        coop.make_config({"epochs": "ten"})
    with pytest.raises(MethodError, match="'epochs' must be of type int.*got 2.5"):
        coop.make_config({"epochs": 2.5})
    with pytest.raises(MethodError, match="'mi_symmetric' must be of type bool"):
        get_method("dvmi").make_config({"mi_symmetric": 1})
    # YAML's true is no number of epochs, nor a learning rate (Python's bool is an int)
    with pytest.raises(MethodError, match="'epochs' must be of type int.*got True"):
        coop.make_config({"epochs": True})
    with pytest.raises(MethodError, match="'lr' must be of type float.*got False"):
        coop.make_config({"lr": False})


def test_presets_follow_the_reference_configs():
    def cfg(name):
        return get_method(name).make_config()

    assert (cfg("cocoop").epochs, cfg("cocoop").batch_size, cfg("cocoop").n_ctx, cfg("cocoop").meta_reduction) == (
        10,
        1,
        4,
        16,
    )
    assert (cfg("kgcoop").epochs, cfg("kgcoop").batch_size, cfg("kgcoop").kg_weight) == (100, 128, 8.0)
    assert (cfg("prograd").n_ctx, cfg("prograd").prograd_lambda, cfg("prograd").kd_temperature) == (16, 1.0, 1.0)
    assert (cfg("clip_adapter").reduction, cfg("clip_adapter").ratio) == (4, 0.2)
    f = cfg("tip_adapter_f")
    assert (f.epochs, f.lr, f.optimizer, f.batch_size, f.warmup_epochs) == (20, 0.001, "adamw", 256, 0)
    assert get_method("kgcoop").make_config({"kg_weight": 2.0}).kg_weight == 2.0  # overridable


# ---------------------------------------------------------------- losses against hand-computed values


def test_knowledge_loss_by_hand():
    text = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    anchors = torch.tensor([[3.0, 0.0], [1.0, 1.0]])  # cosines 1 and 1/sqrt(2)
    assert knowledge_loss(text, anchors).item() == pytest.approx(1 - (1 + 2**-0.5) / 2, abs=1e-6)


def test_kgcoop_loss_is_ce_plus_weighted_cosine_distance(ctx):
    m = build("kgcoop", ctx, kg_weight=8.0)
    x, y = ctx.train_features[0, :5], ctx.train_labels[:5]
    loss, parts = m.loss(x, y)
    text = m.text_features()
    anchors = encode_prompts(ctx.backbone, [f"a photo of a {c}." for c in NAMES])
    cos = (F.normalize(text, dim=-1) * anchors).sum(-1)
    expected = F.cross_entropy(m(x), y) + 8.0 * (1 - cos).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert parts["kg"] == pytest.approx(0.0, abs=1e-5)  # initialised from the template itself


def test_prograd_projection_on_2d_gradients():
    g_kl = torch.tensor([-1.0, 1.0])
    # conflicting (negative cosine): g − (g·g_kl / |g_kl|²) g_kl = [1, 0] + ½ [−1, 1]
    out = project_conflicting(torch.tensor([1.0, 0.0]), g_kl)
    torch.testing.assert_close(out, torch.tensor([0.5, 0.5]))
    assert torch.dot(out, g_kl).item() == pytest.approx(0.0)
    torch.testing.assert_close(project_conflicting(torch.tensor([1.0, 0.0]), g_kl, 0.5), torch.tensor([0.75, 0.25]))
    same = torch.tensor([1.0, 1.0])  # aligned: unchanged
    torch.testing.assert_close(project_conflicting(same, torch.tensor([1.0, 0.0])), same)


def test_distillation_loss_by_hand():
    student, teacher = torch.zeros(1, 2), torch.tensor([[math.log(3.0), 0.0]])  # teacher probs 3/4, 1/4
    assert distillation_loss(student, teacher).item() == pytest.approx(math.log(2), abs=1e-6)
    assert distillation_loss(student, teacher, 2.0).item() == pytest.approx(4 * math.log(2), abs=1e-6)


def test_prograd_update_never_conflicts_with_the_zero_shot_gradient(ctx):
    m = build("prograd", ctx)
    x, y = ctx.train_features[0], ctx.train_labels
    with torch.no_grad():  # move away from the init so that CE and KL disagree
        m.prompt_learner.ctx.add_(0.3 * torch.randn_like(m.prompt_learner.ctx))
    loss, _ = m.loss(x, y)
    g_kl = m._g_kl[0].clone()
    loss.backward()
    m.adjust_gradients(x, y)
    assert torch.dot(m.prompt_learner.ctx.grad.flatten(), g_kl.flatten()).item() >= -1e-6


def test_prograd_context_init_fills_the_tail(ctx):
    assert init_words("template", "a photo of a {}.") == "a photo of a"
    assert init_words("template", "{} texture.") == "a photo of a"  # class not at the end
    m = build("prograd", ctx)
    c = m.prompt_learner.ctx
    assert c.shape[0] == 8 and (c[:4] == 0).all() and (c[4:].abs().sum(-1) > 0).all()


def test_tip_adapter_affinity_formula_by_hand():
    keys, values = torch.eye(2), torch.eye(2)
    out = cache_logits(torch.tensor([[1.0, 0.0]]), keys, values, beta=2.0)  # affinities [1, 0]
    torch.testing.assert_close(out, torch.tensor([[1.0, math.exp(-2.0)]]))


def test_tip_adapter_logits_are_zero_shot_plus_alpha_cache(ctx):
    # zero-shot at the reference's hard-coded logit scale 100 (Tip-Adapter main.py), not this model's
    tip, zs = build("tip_adapter", ctx), build("zeroshot", ctx)
    assert tip.logit_scale == 100.0 and zs.logit_scale != 100.0
    zs.logit_scale = 100.0
    tip.alpha, tip.beta = 2.0, 3.0
    x = torch.randn(4, ctx.backbone.embed_dim)
    keys = F.normalize(ctx.train_features.mean(0), dim=-1)
    values = F.one_hot(ctx.train_labels, 3).float()
    affinity = F.normalize(x, dim=-1) @ keys.T
    expected = zs(x) + 2.0 * torch.exp(-3.0 * (1 - affinity)) @ values
    torch.testing.assert_close(tip(x), expected, atol=1e-4, rtol=1e-5)


def test_tip_adapter_search_uses_the_reference_grid(ctx):
    tip = build("tip_adapter", ctx, beta_steps=20, alpha_steps=5)
    assert tip.fit(ctx) is True
    betas, alphas = search_grid(tip.config)
    assert betas[0] == pytest.approx(0.1) and len(betas) == 20 and len(alphas) == 5
    assert tip.beta in betas and tip.alpha in alphas


def test_clip_adapter_residual(ctx):
    m = build("clip_adapter", ctx)
    f = torch.randn(3, ctx.backbone.embed_dim)
    w1, w2 = m.adapter[0].weight, m.adapter[2].weight  # (D/4, D), (D, D/4)
    assert w1.shape == (16, 64) and w2.shape == (64, 16)
    expected = 0.2 * torch.relu(torch.relu(f @ w1.T) @ w2.T) + 0.8 * f
    torch.testing.assert_close(m.adapt(f), expected)
    with torch.no_grad():
        w2.zero_()  # no adaptation: f' = 0.8 f, and normalisation makes it zero-shot CLIP
    torch.testing.assert_close(m(f), build("zeroshot", ctx)(f), atol=1e-4, rtol=1e-5)


def test_cocoop_with_a_zero_meta_net_is_coop_and_batching_is_exact(ctx):
    m = build("cocoop", ctx, max_prompts_per_pass=6)  # chunks of 2 images
    x = ctx.train_features[0, :5]
    one_by_one = torch.cat([m(x[i : i + 1]) for i in range(5)])
    torch.testing.assert_close(m(x), one_by_one, atol=1e-4, rtol=1e-5)
    with torch.no_grad():
        m.meta_net[2].weight.zero_()
        m.meta_net[2].bias.zero_()
    torch.testing.assert_close(m(x), build("coop", ctx)(x), atol=1e-4, rtol=1e-5)
    assert m.meta_net[0].out_features == 64 // 16


def test_zeroshot_ensemble_is_the_normalised_mean_of_template_features(ctx):
    templates = ["a photo of a {}.", "a sketch of a {}."]
    m = build("zeroshot_ensemble", ctx, templates=templates)
    per = [encode_prompts(ctx.backbone, [t.format(c) for c in NAMES]) for t in templates]
    torch.testing.assert_close(m.weights, F.normalize((per[0] + per[1]) / 2, dim=-1), atol=1e-5, rtol=1e-5)
    one = build("zeroshot_ensemble", ctx, templates=["a photo of a {}."])
    x = torch.randn(4, ctx.backbone.embed_dim)
    torch.testing.assert_close(one(x), build("zeroshot", ctx)(x), atol=1e-4, rtol=1e-5)


def test_template_sets_and_auto(ctx):
    sets = template_sets()
    assert len(sets["ImageNet"]) == 80 and len(sets["ImageNet7"]) == 7 and sets["ImageNetR"] == sets["ImageNet"]
    assert resolve_templates("auto", ctx.backbone, "ImageNet") == sets["pocket"]  # pocket backbone
    real = dataclasses.replace(ctx.backbone, name="ViT-B-16")
    assert resolve_templates("auto", real, "EuroSAT") == sets["EuroSAT"]
    assert resolve_templates("auto", real, None) == sets["ImageNet"]
    with pytest.raises(MethodError, match="unknown template set"):
        resolve_templates("nope", real, None)


# ---------------------------------------------------------------- new classes


@pytest.mark.parametrize("name", NEW_METHODS)
def test_set_classes_evaluates_new_classes(name, ctx):
    m = build(name, ctx)
    x = torch.randn(4, ctx.backbone.embed_dim)
    assert m(x).shape == (4, 3)
    m.set_classes(NEW)
    assert m(x).shape == (4, 2)


def test_tip_adapter_on_new_classes_is_zero_shot(ctx):
    tip, zs = build("tip_adapter", ctx), build("zeroshot", ctx)
    zs.logit_scale = tip.logit_scale  # the reference's 100 (see above)
    tip.fit(ctx)
    x = torch.randn(4, ctx.backbone.embed_dim)
    tip.set_classes(NEW)
    zs.set_classes(NEW)
    torch.testing.assert_close(tip(x), zs(x), atol=1e-4, rtol=1e-5)
    tip.set_classes(["pink ring", "blue square"])  # a trained class keeps its cache column
    zs.set_classes(["pink ring", "blue square"])
    diff = tip(x) - zs(x)
    assert (diff[:, 0].abs() < 1e-4).all() and (diff[:, 1] > 0).all()


# ---------------------------------------------------------------- training through the shared loop


@pytest.mark.parametrize("name", TRAINED)
def test_trains_through_the_shared_loop_and_loss_decreases(name, pocket_random_backbone, tmp_path):
    ctx = context(pocket_random_backbone)
    m = build(name, ctx, **FAST)
    assert m.fit(ctx) is False
    info = feature_loop(m, ctx, m.config, tmp_path / "ckpt.pt", checkpoint_every=100, progress=False)
    m.after_training(ctx)
    hist = info["loss_history"]
    assert len(hist) == FAST["epochs"] and all(math.isfinite(v) for v in hist)
    assert hist[-1] < hist[0], hist
    assert m(ctx.val_features).shape == (6, 3)


def test_tip_adapter_f_resumes_exactly_and_round_trips_its_state(pocket_random_backbone, tmp_path):
    def run(stop_after=None):
        m = build("tip_adapter_f", context(pocket_random_backbone), epochs=4, batch_size=8)
        try:
            feature_loop(
                m, ctx, m.config, tmp_path / "ckpt.pt", checkpoint_every=2, progress=False, stop_after=stop_after
            )
        except KeyboardInterrupt:
            return None
        m.after_training(ctx)
        return m

    ctx = context(pocket_random_backbone)
    with pytest.raises(KeyboardInterrupt):
        m = build("tip_adapter_f", ctx, epochs=4, batch_size=8)
        feature_loop(m, ctx, m.config, tmp_path / "ckpt.pt", checkpoint_every=2, progress=False, stop_after=2)
    resumed = run()
    (tmp_path / "ckpt.pt").unlink()
    full = run()
    torch.testing.assert_close(resumed.cache_keys, full.cache_keys)
    assert (resumed.alpha, resumed.beta) == (full.alpha, full.beta)
    fresh = build("tip_adapter_f", MethodContext(**{**ctx.__dict__, "train_features": None}))
    fresh.load_trainable_state(full.trainable_state())
    torch.testing.assert_close(fresh(ctx.val_features), full(ctx.val_features))
