"""The prompt methods that extend CoOp's context: PRE, ATPrompt, MoCoOp, MSGCoOp, RESTORE, OGEN, KAPT, the
pattern prompts and the description store. Losses and forwards against values computed by hand or by the official
code (the fixtures in tests/data/wave2_reference_fixtures.json), new classes, and training and resuming through the
shared loop on random features (tiny random pocket CLIP, one thread)."""

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from test_methods import context as methods_context
from vlprompt.clip.backbone import PromptedTextEncoder, encode_prompts
from vlprompt.clip.prompting import PatternPrompts
from vlprompt.data import descriptions as store
from vlprompt.methods import MethodContext, MethodError, get_method, list_methods
from vlprompt.methods.kapt import discrete_prompt, keywords
from vlprompt.methods.mocoop import expert_pattern, routing_targets, text_to_text_loss
from vlprompt.methods.msgcoop import diversity_loss
from vlprompt.methods.pre import ReparameterizationEncoder
from vlprompt.methods.restore import shift_consistency
from vlprompt.training.feature_runs import feature_loop

WAVE2 = ["pre", "atprompt", "mocoop", "msgcoop", "restore", "ogen", "kapt"]
NAMES = ["red circle", "blue square", "green star", "pink ring"]
NEW = ["cyan cross", "orange diamond"]
FAST = {"epochs": 6, "batch_size": 8, "lr": 0.02, "warmup_epochs": 0}
FIXTURES = json.loads((Path(__file__).parent / "data" / "wave2_reference_fixtures.json").read_text())


def context(backbone, names=NAMES, **extra):
    """test_methods' random class-structured features, for four pocket classes of the dataset pocket_dark."""
    return methods_context(backbone, names, **{"dataset": "pocket_dark", **extra})


def build(name, ctx, **overrides):
    cls = get_method(name)
    return cls(cls.make_config(overrides), ctx)


@pytest.fixture(scope="module")
def ctx(pocket_random_backbone):
    return context(pocket_random_backbone)


def hand_ce(logits, y):
    return -(logits.log_softmax(-1)[torch.arange(len(y)), y]).mean()


# ---------------------------------------------------------------- registry and presets


def test_the_seven_are_listed_with_their_papers():
    for name in WAVE2:
        assert name in list_methods()
        cls = get_method(name)
        assert cls.paper and cls.description and cls.inputs == "features"
        with pytest.raises(MethodError, match="unknown hyperparameter"):
            cls.make_config({"no_such_key": 1})


def test_presets_follow_the_references():
    def cfg(name):
        return get_method(name).make_config()

    assert (cfg("pre").epochs, cfg("pre").n_ctx, cfg("pre").ctx_init, cfg("pre").encoder_layers) == (
        50,
        4,
        "a photo of a",
        1,
    )
    a = cfg("atprompt")
    assert (a.epochs, a.n_ctx, a.n_att_ctx, a.ctx_init, a.att_init_std) == (100, 2, 2, None, 0.01)
    m = cfg("mocoop")
    assert (m.lr, m.top_k, m.text_loss_weight, m.gate_loss_weight, m.grad_clip) == (0.032, 2, 5.0, 1.0, 1.0)
    s = cfg("msgcoop")
    assert (s.n_prompts, s.kg_weight, s.diversity_weight, s.batch_size, s.epochs) == (4, 8.0, 1.0, 128, 100)
    o = cfg("ogen")
    assert (o.epochs, o.neighbours, o.heads, o.warm_fraction) == (50, 3, 4, 0.2)


# ---------------------------------------------------------------- pattern prompts


def test_pattern_prompts_with_word_slots_equal_the_written_prompt(pocket_random_backbone):
    b = pocket_random_backbone
    p = PatternPrompts(
        PromptedTextEncoder(b.model),
        b.tokenizer,
        NAMES[:2],
        "{a} colour {b} shape {ctx} {}.",
        {"a": 2, "b": 1, "ctx": 4},
        {"a": "a big", "b": "the", "ctx": "a photo of a"},
    )
    written = [f"a big colour the shape a photo of a {c}." for c in NAMES[:2]]
    torch.testing.assert_close(F.normalize(p(), dim=-1), encode_prompts(b, written), atol=1e-5, rtol=1e-5)
    assert p.pos_a.tolist() == [[1, 2]] * 2 and p.pos_ctx.tolist() == [[6, 7, 8, 9]] * 2
    # a slot after the class name moves with the name's length
    q = PatternPrompts(
        PromptedTextEncoder(b.model),
        b.tokenizer,
        ["red circle", "orange"],
        "{before} {} {after}.",
        {"before": 1, "after": 1},
        {"before": "a", "after": "texture"},
    )
    assert q.pos_after.tolist() == [[4], [3]]
    written = ["a red circle texture.", "a orange texture."]
    torch.testing.assert_close(F.normalize(q(), dim=-1), encode_prompts(b, written), atol=1e-5, rtol=1e-5)


def test_pattern_prompts_reject_bad_patterns(pocket_random_backbone):
    b = pocket_random_backbone
    enc = PromptedTextEncoder(b.model)
    with pytest.raises(ValueError, match="must hold"):
        PatternPrompts(enc, b.tokenizer, NAMES, "{ctx} photo", {"ctx": 2}, {"ctx": 0.02})
    with pytest.raises(ValueError, match="has 2 tokens but"):
        PatternPrompts(enc, b.tokenizer, NAMES, "{ctx} {}.", {"ctx": 2}, {"ctx": "a photo of"})
    with pytest.raises(ValueError, match="tokens but the text encoder holds 20"):
        PatternPrompts(enc, b.tokenizer, NAMES, "{ctx} {}.", {"ctx": 17}, {"ctx": 0.02})


# ---------------------------------------------------------------- the description store


def test_pocket_descriptions_follow_the_rule_and_the_shipped_file_is_its_output():
    assert store.pocket_descriptions("red circle") == [
        "a red circle.",
        "a photo of a red circle.",
        "a circle drawn in red.",
        "a red shape, a circle.",
        "a circle with a red colour.",
    ]
    shipped = json.loads((store.STORE_DIR / store.POCKET_FILE).read_text())
    assert shipped == store.pocket_store() and len(shipped) == 144
    assert store.load_descriptions("pocket_noisy", ["Red_Circle"]) == {
        "Red_Circle": store.pocket_descriptions("red circle")
    }
    with pytest.raises(store.DescriptionError, match="not a pocket class"):
        store.pocket_descriptions("red")


def test_missing_descriptions_name_the_file_and_the_classes(tmp_path, monkeypatch):
    monkeypatch.setenv("VLPROMPT_DESCRIPTIONS", str(tmp_path))
    with pytest.raises(store.DescriptionError, match=r"cupl/DTD\.json does not exist.*texture_prompts_full.*README"):
        store.load_descriptions("DTD", ["banded"])
    (tmp_path / "cupl").mkdir()
    (tmp_path / "cupl" / "DTD.json").write_text(json.dumps({"banded": ["Bands."], "Blotchy": ["Blots."]}))
    assert store.load_descriptions("DTD", ["blotchy"]) == {"blotchy": ["Blots."]}
    with pytest.raises(store.DescriptionError, match=r"no descriptions for 1 class.*'zigzagged'"):
        store.load_descriptions("DTD", ["banded", "zigzagged"])
    with pytest.raises(store.DescriptionError, match="lack classes"):
        store.descriptions_for({"a": ["x"]}, None, ["b"])
    with pytest.raises(store.DescriptionError, match="dataset's name"):
        store.load_descriptions(None, ["b"])


# ---------------------------------------------------------------- PRE


def test_pre_encoder_equals_the_reference_prompt_encoder():
    fx = FIXTURES["pre"]
    torch.manual_seed(fx["init_seed"])
    enc = ReparameterizationEncoder(fx["width"])
    torch.manual_seed(fx["ctx_seed"])
    ctx = torch.randn(4, fx["width"])
    torch.testing.assert_close(enc(ctx), torch.tensor(fx["output"]), atol=1e-6, rtol=1e-5)


def test_pre_is_coop_on_the_reparameterised_context(ctx):
    m = build("pre", ctx)
    assert {"prompt_learner.ctx", "prompt_encoder.lstm.weight_ih_l0_reverse"} <= set(m.trainable_state())
    with torch.no_grad():
        for p in m.prompt_encoder.lstm.parameters():
            p.zero_()  # the LSTM outputs 0: E(v) = v, so PRE is CoOp with the same context
    torch.testing.assert_close(m.reparameterized_context(), m.prompt_learner.ctx)
    x = ctx.train_features[0, :5]
    torch.testing.assert_close(m(x), build("coop", ctx)(x), atol=1e-4, rtol=1e-5)
    # the encoder's output is what the text encoder sees
    m2 = build("pre", ctx)
    e = m2.reparameterized_context()
    expected = m2.logit_scale * F.normalize(x, dim=-1) @ F.normalize(m2.prompt_learner(e), dim=-1).T
    torch.testing.assert_close(m2(x), expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(e, m2.prompt_learner.ctx)


# ---------------------------------------------------------------- ATPrompt


def test_atprompt_prompt_is_soft_attribute_soft_attribute_soft_class(ctx):
    m = build("atprompt", ctx)
    assert m.attributes == ["colour", "shape"]  # the pocket world's own attributes
    pl = m.prompt_learner
    assert pl.text("red circle") == "X X colour X X shape X X red circle."
    assert set(m.trainable_state()) == {
        "prompt_learner.slots.att0",
        "prompt_learner.slots.att1",
        "prompt_learner.slots.ctx",
    }
    assert pl.slots["att0"].std().item() == pytest.approx(0.01, rel=0.5)
    with torch.no_grad():  # put word embeddings in the slots: the prompt becomes a plain sentence
        for name, words in (("att0", "a big"), ("att1", "a small"), ("ctx", "a photo")):
            pl.slots[name].copy_(ctx.encoder.embed(ctx.backbone.tokenizer([words]))[0, 1:3])
    x = ctx.train_features[0, :3]
    text = encode_prompts(ctx.backbone, [f"a big colour a small shape a photo {c}." for c in NAMES])
    torch.testing.assert_close(m(x), m.logit_scale * F.normalize(x, dim=-1) @ text.T, atol=1e-4, rtol=1e-5)


def test_atprompt_attributes_come_from_the_data_file(pocket_random_backbone):
    def attrs(dataset, **kw):
        c = context(pocket_random_backbone)
        c.dataset = dataset
        return build("atprompt", c, **kw).attributes

    assert attrs("Caltech101") == ["shape", "size"] and attrs("ImageNetA") == ["color", "shape"]
    assert attrs("DTD") == ["pattern", "color", "design"]
    assert attrs(None, attributes=["texture"]) == ["texture"]
    with pytest.raises(MethodError, match="no ATPrompt attributes for dataset 'Nope'"):
        attrs("Nope")


# ---------------------------------------------------------------- MoCoOp


def test_mocoop_expert_patterns():
    assert expert_pattern("a photo of a {}.") == ("{before} {}.", {"before": "a photo of a"})
    assert expert_pattern("{} texture.") == ("{} {after}.", {"after": "texture"})
    assert expert_pattern("a {} in a video game.") == (
        "{before} {} {after}.",
        {"before": "a", "after": "in a video game"},
    )


def test_mocoop_losses_equal_the_reference_code():
    fx = FIXTURES["mocoop"]
    torch.manual_seed(fx["seed_text"])
    text = F.normalize(torch.randn(fx["G"], fx["C"], fx["D"]), dim=-1)
    protos = F.normalize(torch.randn(fx["G"], fx["C"], fx["D"]), dim=-1)
    assert text_to_text_loss(text, protos).item() == pytest.approx(fx["t2t"], rel=1e-5)
    torch.manual_seed(fx["seed_batch"])
    image = F.normalize(torch.randn(5, fx["D"]), dim=-1)
    y = torch.tensor(fx["labels"])
    gate = torch.randn(5, fx["G"])
    target = routing_targets(image, protos[:, y].transpose(0, 1), 10.0)
    assert F.cross_entropy(gate, target).item() == pytest.approx(fx["gate_loss"], rel=1e-5)


def test_mocoop_experts_start_at_their_templates_and_mix_the_top_two(ctx):
    m = build("mocoop", ctx)
    # pocket: the dataset's template, then the pocket caption templates in groups [2, 1, 2]
    assert m.templates[0] == "a photo of a {}." and m.groups == (1, 2, 1, 2) and len(m.experts) == 4
    experts = m.expert_text_features()  # correction b = 0: each expert is its first template's classifier
    for e, first in enumerate([0, 1, 3, 4]):
        torch.testing.assert_close(
            experts[e],
            encode_prompts(ctx.backbone, [m.templates[first].format(c) for c in NAMES]),
            atol=1e-5,
            rtol=1e-5,
        )
    torch.testing.assert_close(
        m.prototypes[1],
        F.normalize(
            sum(encode_prompts(ctx.backbone, [m.templates[t].format(c) for c in NAMES]) for t in (1, 2)), dim=-1
        ),
    )
    with torch.no_grad():
        m.router.weight.zero_()
        m.router.bias.copy_(torch.tensor([0.0, 2.0, 1.0, -1.0]))  # every image: experts 1 (e^2) and 2 (e^1)
    x = ctx.train_features[0, :3]
    pi = torch.softmax(torch.tensor([2.0, 1.0]), 0)
    mixed = pi[0] * experts[1] + pi[1] * experts[2]
    torch.testing.assert_close(m(x), m.logit_scale * F.normalize(x, dim=-1) @ mixed.T, atol=1e-4, rtol=1e-5)
    y = ctx.train_labels[:3]
    loss, parts = m.loss(x, y)
    xh = F.normalize(x, dim=-1)
    q = torch.einsum("bd,gbd->bg", xh, m.prototypes[:, y])
    q = q + torch.zeros_like(q).scatter_(1, q.topk(2, dim=1).indices, 10.0)
    gate = torch.tensor([0.0, 2.0, 1.0, -1.0]).expand(3, -1)
    expected_gate = -(F.softmax(q, 1) * F.log_softmax(gate, 1)).sum(1).mean()
    ce = hand_ce(m(x), y)
    t2t = hand_ce(torch.einsum("gcd,ged->gce", experts, m.prototypes).flatten(0, 1), torch.arange(4).repeat(4))
    assert parts["gate"] == pytest.approx(expected_gate.item(), rel=1e-4)
    assert loss.item() == pytest.approx((ce + 5 * t2t + expected_gate).item(), rel=1e-4)


def test_mocoop_clips_the_gradient_norm(ctx):
    m = build("mocoop", ctx, grad_clip=0.5)
    loss, _ = m.loss(ctx.train_features[0, :8] * 50, ctx.train_labels[:8])
    loss.backward()
    m.adjust_gradients(None, None)
    norm = torch.sqrt(sum(p.grad.pow(2).sum() for p in m.parameters() if p.grad is not None))
    assert norm.item() == pytest.approx(0.5, rel=1e-4)


# ---------------------------------------------------------------- MSGCoOp


def test_diversity_loss_equals_the_reference_code_and_a_hand_example():
    fx = FIXTURES["msgcoop"]
    torch.manual_seed(fx["features_seed"])
    assert diversity_loss(torch.randn(*fx["shape"])).item() == pytest.approx(fx["diversity"], rel=1e-5)
    f = torch.tensor([[[1.0, 0.0]], [[1.0, 1.0]], [[0.0, 2.0]]])  # one class; cos² of the pairs: ½, 0, ½
    assert diversity_loss(f).item() == pytest.approx(1 / 3)
    assert diversity_loss(f[:1]).item() == 0.0


def test_msgcoop_loss_by_hand(ctx):
    m = build("msgcoop", ctx, n_prompts=3, init_noise=0.05)
    ctxs = m.prompt_learner.ctx
    assert ctxs.shape == (3, 4, 128) and not torch.allclose(ctxs[0], ctxs[1])
    descs = store.load_descriptions("pocket_dark", NAMES)
    anchors = torch.stack(
        [encode_prompts(ctx.backbone, [f"a photo of {c}, {d}" for d in descs[c]]).mean(0) for c in NAMES]
    )
    torch.testing.assert_close(m.anchors, anchors)
    feats = torch.stack([m.prompt_learner(c) for c in ctxs])  # (N, C, D), each context on its own
    x, y = ctx.train_features[0, :5], ctx.train_labels[:5]
    xh = F.normalize(x, dim=-1)
    logits = torch.stack([m.logit_scale * xh @ F.normalize(f, dim=-1).T for f in feats]).mean(0)
    torch.testing.assert_close(m(x), logits, atol=1e-4, rtol=1e-5)
    sg = 1 - F.cosine_similarity(feats.mean(0), anchors, dim=-1).mean()
    fn = F.normalize(feats, dim=-1)
    div = sum((fn[i] * fn[j]).sum(-1).pow(2) for i, j in ((0, 1), (0, 2), (1, 2))).mean() / 3
    loss, parts = m.loss(x, y)
    assert parts["div"] == pytest.approx(div.item(), rel=1e-4)
    assert loss.item() == pytest.approx((hand_ce(logits, y) + 8 * sg + div).item(), rel=1e-4)
    m.set_classes(NEW)
    assert m.anchors is None and m(x).shape == (5, 2)


def test_msgcoop_reference_init_gives_equal_contexts_and_features(ctx):
    m = build("msgcoop", ctx)
    c = m.prompt_learner.ctx
    assert torch.equal(c[0], c[3])
    feats = m.prompt_features()
    assert torch.equal(feats[0], feats[1])
    _, parts = m.loss(ctx.train_features[0, :4], ctx.train_labels[:4])
    assert parts["div"] == pytest.approx(1.0, abs=1e-5)


# ---------------------------------------------------------------- RESTORE


def test_shift_consistency_by_hand():
    dv = torch.tensor([[3.0, 4.0], [0.0, 1.0]])  # norms 5, 1: mean 3
    dt = torch.tensor([[1.0, 0.0]])  # mean 1
    assert shift_consistency(dv, dt).item() == pytest.approx(4.0)


def test_restore_starts_as_coop_and_its_loss_is_ce_plus_weighted_shift(ctx):
    m = build("restore", ctx, shift_weight=2.0)
    x, y = ctx.train_features[0, :5], ctx.train_labels[:5]
    torch.testing.assert_close(m(x), build("coop", ctx)(x), atol=1e-4, rtol=1e-5)  # zero-initialised surgery
    loss, parts = m.loss(x, y)
    assert parts["shift"] == pytest.approx(0.0, abs=1e-8)  # no shift at the initialisation
    with torch.no_grad():
        m.image_surgery.up.bias.fill_(0.1)
        m.text_surgery.up.bias.fill_(-0.05)
    xh = F.normalize(x, dim=-1)
    img = F.normalize(xh + 0.1, dim=-1)
    coop_text = F.normalize(m.prompt_learner(), dim=-1)
    text = F.normalize(coop_text - 0.05, dim=-1)
    shift = ((img - xh).norm(dim=-1).mean() - (text - m.shift_origin).norm(dim=-1).mean()) ** 2
    loss, parts = m.loss(x, y)
    assert parts["shift"] == pytest.approx(shift.item(), rel=1e-4)
    assert loss.item() == pytest.approx((hand_ce(m.logit_scale * img @ text.T, y) + 2 * shift).item(), rel=1e-4)


# ---------------------------------------------------------------- OGEN


def test_ogen_class_statistics_and_neighbours(ctx):
    m = build("ogen", ctx)
    feats = F.normalize(ctx.train_features.flatten(0, 1), dim=-1)
    y = ctx.train_labels.repeat(2)
    torch.testing.assert_close(m.class_mean[2], feats[y == 2].mean(0))
    torch.testing.assert_close(m.class_std[2], feats[y == 2].std(0, unbiased=False))
    sim = m.class_mean @ m.class_mean.T
    for c in range(4):
        others = [j for j in range(4) if j != c]
        assert set(m.neighbours[c].tolist()) == set(others)  # k = 3 of the 3 other classes
        assert m.neighbours[c, 0].item() == max(others, key=lambda j: sim[c, j].item())
    assert m.steps_per_epoch == 1  # 24 training images, batch 32: one step per epoch (as the shared loop)


def test_ogen_warm_phase_trains_the_generator_only_then_adds_the_synthetic_terms(ctx):
    m = build("ogen", ctx, epochs=10, batch_size=8, distill_weight=0.0)  # warm: epochs 0, 1 (3 steps each)
    assert m.steps_per_epoch == 3
    x, y = ctx.train_features[0, :8], ctx.train_labels[:8]
    torch.manual_seed(5)
    loss, parts = m.loss(x, y)
    assert set(parts) == {"gen"}
    loss.backward()
    assert m.prompt_learner.ctx.grad is None and m.generator.ffn[0].weight.grad is not None
    m.eval()  # no dropout, so the hand computation below is deterministic
    m.ogen_step.fill_(6)  # epoch 2: after the warm phase
    torch.manual_seed(6)
    loss, parts = m.loss(x, y)
    torch.manual_seed(6)
    u = torch.rand(1, 64)
    text = F.normalize(m.prompt_learner(), dim=-1)
    xh = F.normalize(x, dim=-1)
    nb = m.neighbours[y]
    values = m.class_mean[nb] + u * m.class_std[nb]
    z = m.generator(text[y].unsqueeze(1), text[nb], values)
    z_nb = m.generator(text[nb], text[y].unsqueeze(1), xh.unsqueeze(1))
    gen = ((z - xh) ** 2).sum(-1).mean() + ((z_nb - values.flatten(0, 1)) ** 2).sum(-1).mean()
    s = m.logit_scale
    syn = (
        0.25 * hand_ce(s * z @ text.T, y)
        + 0.25 / 3 * hand_ce(s * z_nb @ text.T, nb.flatten())
        + 0.25 * hand_ce(s * xh @ text.T, y)
    )
    assert parts["gen"] == pytest.approx(gen.item(), rel=1e-4)
    assert loss.item() == pytest.approx((gen + syn).item(), rel=1e-4)


def test_ogen_local_mean_teacher_and_unseen_names(pocket_random_backbone):
    c = context(pocket_random_backbone, unseen_classnames=NEW)
    m = build("ogen", c, epochs=10, batch_size=8, teacher_window=0.5)
    snaps = torch.randn(10, 4, 128)
    m.ogen_snapshots.copy_(snaps)
    torch.testing.assert_close(m.teacher_context(5), snaps[2:5].mean(0))  # ⌈0.5 · 5⌉ = 3 epochs
    assert m.teacher_context(0) is None
    m.ogen_step.fill_(9)  # epoch 3: first step stores epoch 2's context
    loss, parts = m.loss(c.train_features[0, :8], c.train_labels[:8])
    torch.testing.assert_close(m.ogen_snapshots[2], m.prompt_learner.ctx.detach())
    assert {"unseen", "distill"} <= set(parts) and math.isfinite(loss.item())
    assert m.unseen.ctx is m.prompt_learner.ctx
    assert {"ogen_step", "ogen_snapshots"} <= set(m.trainable_state())


# ---------------------------------------------------------------- KAPT


def test_keywords_and_discrete_prompt_by_hand():
    sentences = ["A gerenuk is a long-necked antelope.", "The gerenuk has long legs.", "Antelope of Africa."]
    assert keywords(sentences, 3) == ["gerenuk", "antelope", "long-necked"]
    assert keywords(store.pocket_descriptions("red circle"), 2) == ["red", "circle"]
    assert (
        discrete_prompt("a dark photo of a {}.", "red_circle", ["red", "circle"])
        == "a dark photo of a red circle, red, circle."
    )


def test_kapt_mixes_the_discrete_and_continuous_classifiers(ctx):
    m = build("kapt", ctx, discrete_weight=0.25, n_keywords=2)
    assert m.discrete_texts[0] == "a photo of a red circle, red, circle."
    d = encode_prompts(ctx.backbone, m.discrete_texts)
    w = F.normalize(m.prompt_learner(), dim=-1)
    x = ctx.train_features[0, :5]
    expected = m.logit_scale * F.normalize(x, dim=-1) @ (0.25 * d + 0.75 * w).T  # the head starts at identity
    torch.testing.assert_close(m(x), expected, atol=1e-4, rtol=1e-5)
    loss, _ = m.loss(x, ctx.train_labels[:5])
    assert loss.item() == pytest.approx(hand_ce(expected, ctx.train_labels[:5]).item(), rel=1e-4)
    m.set_classes(NEW)
    assert m.discrete_texts == [
        "a photo of a cyan cross, cyan, cross.",
        "a photo of a orange diamond, orange, diamond.",
    ]
    assert {"prompt_learner.ctx", "head.up.weight"} <= set(m.trainable_state())


# ---------------------------------------------------------------- new classes, the shared loop, resuming


@pytest.mark.parametrize("name", WAVE2)
def test_new_classes(name, ctx):
    m = build(name, ctx)
    x = torch.randn(3, ctx.backbone.embed_dim)
    assert m(x).shape == (3, 4)
    m.set_classes(NEW)
    assert m(x).shape == (3, 2) and torch.isfinite(m(x)).all()


@pytest.mark.parametrize("name", WAVE2)
def test_trains_through_the_shared_loop_and_resumes_exactly(name, pocket_random_backbone, tmp_path):
    c = context(pocket_random_backbone)
    overrides = {**FAST, **({"warm_fraction": 0.0} if name == "ogen" else {})}
    full = build(name, c, **overrides)
    info = feature_loop(full, c, full.config, tmp_path / "full.pt", checkpoint_every=100, progress=False)
    hist = info["loss_history"]
    assert len(hist) == FAST["epochs"] and all(math.isfinite(v) for v in hist) and hist[-1] < hist[0], hist
    ckpt = tmp_path / "killed.pt"
    killed = build(name, c, **overrides)
    with pytest.raises(KeyboardInterrupt):
        feature_loop(killed, c, killed.config, ckpt, checkpoint_every=4, progress=False, stop_after=5)
    resumed = build(name, c, **overrides)  # a fresh process: a new model, the checkpoint of epoch 4
    feature_loop(resumed, c, resumed.config, ckpt, checkpoint_every=4, progress=False)
    torch.testing.assert_close(resumed(c.val_features), full(c.val_features), atol=1e-5, rtol=1e-5)
    fresh = build(name, MethodContext(**{**c.__dict__, "train_features": None, "train_labels": None}), **overrides)
    fresh.load_trainable_state(full.trainable_state())
    fresh.eval()
    torch.testing.assert_close(fresh(c.val_features), full(c.val_features), atol=1e-5, rtol=1e-5)
