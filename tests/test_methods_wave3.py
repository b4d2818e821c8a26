"""Class descriptions, test-time and multitask methods: CuPL, FuDD, TFUP, TPT (+ CoOp), MVLPT and the PAC-Bayes
prompt search.

Forwards and losses against values computed by hand and against the reference code's formulas, new classes; then,
on a pocket miniature extracted through the CLI (the shipped pocket CLIP): TFUP reads no label (identical
predictions with the unlabelled bank's labels corrupted or absent), TPT's test views hold the original view first,
TPT resets between images (no prediction depends on the images before it), MVLPT's targets start from the multitask
prompt, and the PAC-Bayes bound reaches the summary table."""

import json
import math
import shutil

import pytest
import torch
import torch.nn.functional as F
import yaml

from conftest import prepare_run_inputs
from test_methods_wave2 import NAMES, build, context
from vlprompt.cli import main as cli
from vlprompt.clip.backbone import encode_prompts
from vlprompt.data import descriptions as store
from vlprompt.experiment import grid
from vlprompt.experiment.config import load_config
from vlprompt.methods import FAMILIES, MethodContext, MethodError, get_method, list_methods, method_order
from vlprompt.methods.mvlpt import merge_sources
from vlprompt.methods.pacbayes_prompt import kl_inverse_bound, mcallester_bound
from vlprompt.methods.tfup import semantic_similarity, typicality
from vlprompt.methods.tpt import average_entropy, select_confident

WAVE3 = ["cupl", "cupl_ensemble", "fudd", "tfup", "tpt", "tpt_coop", "mvlpt", "pacbayes_prompt"]
NEW = ["cyan cross", "orange diamond", "red square"]  # context(): test_methods' random class-structured features


@pytest.fixture(scope="module")
def ctx(pocket_random_backbone):
    gen = torch.Generator().manual_seed(7)
    pool = torch.randn(40, pocket_random_backbone.embed_dim, generator=gen)
    return context(pocket_random_backbone, unlabelled=lambda: pool)


# ---------------------------------------------------------------- registry


def test_the_six_are_listed_with_papers_families_and_declared_inputs():
    for name in WAVE3:
        assert name in list_methods()
        cls = get_method(name)
        assert cls.paper and cls.description and cls.family in FAMILIES
        with pytest.raises(MethodError, match="unknown hyperparameter"):
            cls.make_config({"no_such_key": 1})
    declared = {
        n: (get_method(n).reads_unlabelled, get_method(n).reads_test_views, get_method(n).reads_multitask_prompt)
        for n in WAVE3
    }
    assert {n for n, d in declared.items() if d[0]} == {"tfup"}
    assert {n for n, d in declared.items() if d[1]} == {"tpt", "tpt_coop"}
    assert {n for n, d in declared.items() if d[2]} == {"mvlpt"}
    assert [get_method(n).needs_training for n in WAVE3] == [False, False, False, False, False, True, True, True]


def test_the_report_orders_zero_shot_first_then_the_families():
    order = method_order(
        [
            "tpt",
            "coop",
            "mvlpt",
            "cupl",
            "zeroshot",
            "fudd",
            "tfup",
            "pacbayes_prompt",
            "cupl_ensemble",
            "tpt_coop",
            "zeroshot_ensemble",
            "maple",
        ]
    )
    assert order == [
        "zeroshot",
        "zeroshot_ensemble",
        "cupl",
        "fudd",
        "cupl_ensemble",
        "tfup",
        "pacbayes_prompt",
        "coop",
        "mvlpt",
        "tpt",
        "tpt_coop",
        "maple",
    ]


def test_presets_follow_the_references():
    def cfg(name):
        return get_method(name).make_config()

    t = cfg("tpt")
    assert (t.n_ctx, t.ctx_init, t.views, t.selection, t.tta_steps, t.tta_lr, t.view_crop_scale_min) == (
        4,
        "a photo of a",
        64,
        0.1,
        1,
        5e-3,
        0.08,
    )
    m = cfg("mvlpt")
    assert (m.n_ctx, m.ctx_init, m.class_token_position, m.epochs, m.batch_size, m.lr, m.source_epochs) == (
        16,
        None,
        "middle",
        200,
        32,
        0.002,
        200,
    )
    f = cfg("tfup")
    assert (f.alpha, f.beta, f.cache_proportion, f.min_cache_shots, f.max_cache_shots, f.text) == (
        0.3,
        1.0,
        0.3,
        9,
        16,
        "descriptions",
    )
    assert (cfg("fudd").top_k, cfg("fudd").template) == (10, "a photo of a {}.")
    assert cfg("cupl").templates is None and cfg("cupl_ensemble").templates == "auto"


# ---------------------------------------------------------------- CuPL


def test_cupl_is_the_normalised_mean_of_its_sentences(ctx):
    descs = store.load_descriptions("pocket_dark", NAMES)
    m = build("cupl", ctx)
    expected = torch.stack([F.normalize(encode_prompts(ctx.backbone, descs[c]).mean(0), dim=0) for c in NAMES])
    torch.testing.assert_close(m.weights, expected, atol=1e-5, rtol=1e-5)
    x = ctx.train_features[0, :5]
    torch.testing.assert_close(m(x), m.logit_scale * F.normalize(x, dim=-1) @ expected.T, atol=1e-4, rtol=1e-5)
    assert "pocket rule" in m.run_info()["descriptions"]
    e = build("cupl_ensemble", ctx, templates=["a photo of a {}.", "a {} shape."])
    pooled = [encode_prompts(ctx.backbone, [f"a photo of a {c}.", f"a {c} shape.", *descs[c]]).mean(0) for c in NAMES]
    torch.testing.assert_close(e.weights, F.normalize(torch.stack(pooled), dim=-1), atol=1e-5, rtol=1e-5)
    e.set_classes(NEW)  # new classes: their own descriptions
    assert e.weights.shape == (len(NEW), ctx.backbone.embed_dim)


def test_cupl_reads_given_descriptions(pocket_random_backbone):
    given = {c: [f"a drawing of a {c}.", f"the {c} on a wall."] for c in NAMES}
    m = build("cupl", context(pocket_random_backbone, descriptions=given, dataset=None))
    expected = F.normalize(encode_prompts(pocket_random_backbone, given["blue square"]).mean(0), dim=0)
    torch.testing.assert_close(m.weights[1], expected, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- FuDD


def test_pocket_differential_rule_names_what_differs():
    a, b = store.pocket_differential("red circle", "red square")
    assert a == ["a photo of a red circle, with the outline of a circle."]
    assert b == ["a photo of a red square, with the outline of a square."]
    a, b = store.pocket_differential("red circle", "blue square")
    assert (
        a
        == ["a photo of a red circle, a shape coloured red.", "a photo of a red circle, with the outline of a circle."]
        and len(b) == 2
        and "blue" in b[0]
    )
    with pytest.raises(store.DescriptionError, match="not a pocket class"):
        store.pocket_differential("red", "blue square")


def test_fudd_files_in_the_authors_format(tmp_path, monkeypatch):
    monkeypatch.setenv("VLPROMPT_DESCRIPTIONS", str(tmp_path))
    with pytest.raises(store.DescriptionError, match=r"DTD_prompt_pairs\.json does not exist.*fudd"):
        store.differential_descriptions("DTD", ["banded"])
    (tmp_path / "differential").mkdir()
    (tmp_path / "differential" / "DTD_class_names.json").write_text(json.dumps(["banded", "blotchy", "braided"]))
    pairs = {
        "0_2": {
            "classes": [2, 0],
            "prompt_pairs": [{"prompt_pair": ["braids.", "bands."]}, {"prompt_pair": ["woven.", "striped."]}],
        }
    }
    (tmp_path / "differential" / "DTD_prompt_pairs.json").write_text(json.dumps(pairs))
    d = store.differential_descriptions("DTD", ["Banded", "blotchy", "braided"])
    assert d.pair("banded", "braided") == (["bands.", "striped."], ["braids.", "woven."])
    assert d.pair("braided", "banded") == (["braids.", "woven."], ["bands.", "striped."])
    assert d.pair("banded", "blotchy") == (["a photo of a banded."], ["a photo of a blotchy."])  # pair not in file
    with pytest.raises(store.DescriptionError, match="lacks 1 class"):
        store.differential_descriptions("DTD", ["zigzagged"])


def test_fudd_reranks_the_top_k_with_the_differential_sentences(ctx):
    m = build("fudd", ctx, top_k=3)
    x = ctx.train_features[0, :6]
    logits = m(x)
    f = F.normalize(x, dim=-1)
    zs = f @ encode_prompts(ctx.backbone, [f"a photo of a {c}." for c in NAMES]).T
    for i in range(len(x)):
        top = zs[i].topk(3).indices.tolist()
        assert sorted(torch.isfinite(logits[i]).nonzero().flatten().tolist()) == sorted(top)
        for c in top:
            sentences = []
            for other in top:
                if other != c:
                    sentences += [s for s in store.pocket_differential(NAMES[c], NAMES[other])[0] if s not in sentences]
            w = F.normalize(encode_prompts(ctx.backbone, sentences).mean(0), dim=0)
            assert logits[i, c].item() == pytest.approx((m.logit_scale * f[i] @ w).item(), rel=1e-4, abs=1e-4)
    assert "pocket rule" in m.run_info()["differential_descriptions"]
    m.set_classes(NEW)
    assert m(x).shape == (6, len(NEW))


# ---------------------------------------------------------------- TFUP


def test_tfup_scores_equal_the_reference_loops():
    gen = torch.Generator().manual_seed(0)
    p = F.softmax(torch.randn(6, 4, generator=gen), -1)
    expected = torch.tensor([sum((p[j] * torch.log(p[j] / p[k])).sum() for k in range(6)) for j in range(6)])
    torch.testing.assert_close(typicality(p), expected, atol=1e-5, rtol=1e-5)
    q = F.softmax(torch.randn(5, 4, generator=gen), -1)
    kl = torch.stack([(p[i] * torch.log(p[i] / q)).sum(1) for i in range(6)])  # the reference's get_sim_based_kl
    z = (kl - kl.mean(1, keepdim=True)) / kl.std(1, keepdim=True)
    low, high = z.min(1, keepdim=True).values, z.max(1, keepdim=True).values
    torch.testing.assert_close(semantic_similarity(p, q), 2 * (1 - (z - low) / (high - low)), atol=1e-5, rtol=1e-5)


def test_tfup_cache_and_logits_by_hand(ctx):
    m = build("tfup", ctx, min_cache_shots=2, max_cache_shots=3)
    pool = ctx.unlabelled()
    u = F.normalize(pool, dim=-1)
    assert m.cache_shots == 3  # clip(int(0.3 · 40 / 4) = 3, 2, 3)
    p = F.softmax(10 * u @ m.weights.T, dim=-1)
    cand = p[:, 1].argsort(descending=True)[:6]
    keep = cand[typicality(p[cand]).argsort()[:3]]
    torch.testing.assert_close(m.cache_keys[3:6], u[keep])
    assert m.cache_values.argmax(1).tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    x = ctx.train_features[0, :4]
    f = F.normalize(x, dim=-1)
    q = F.softmax(10 * m.cache_keys @ m.weights.T, dim=-1)
    sigma = semantic_similarity(F.softmax(10 * f @ m.weights.T, dim=-1), q)
    expected = 100 * f @ m.weights.T + 0.3 * torch.exp(-(1 - sigma * (f @ m.cache_keys.T))) @ m.cache_values
    torch.testing.assert_close(m(x), expected, atol=1e-4, rtol=1e-5)
    # the text classifier: the normalised mean of the unnormalised description features
    descs = store.load_descriptions("pocket_dark", NAMES)
    raw = ctx.encoder.encode(ctx.backbone.tokenizer(descs["green star"])).mean(0)
    torch.testing.assert_close(m.weights[2], F.normalize(raw, dim=0), atol=1e-5, rtol=1e-5)
    m.set_classes(NEW)  # new classes: a cache rebuilt from the same images
    assert m.cache_values.shape[1] == len(NEW) and m(x).shape == (4, len(NEW))


def test_tfup_without_unlabelled_images_says_which_option(pocket_random_backbone):
    with pytest.raises(MethodError, match="`unlabelled`"):
        build("tfup", context(pocket_random_backbone))


# ---------------------------------------------------------------- TPT


def reference_tpt(model, views, lr=5e-3, share=0.1):
    """One image at a time, as azshue/TPT tpt_classification.py: reset, select, one AdamW step, predict."""
    out = []
    init = model.prompt_learner.ctx.detach().clone()
    for v in views:  # (V, D)
        ctx = torch.nn.Parameter(init.clone())
        opt = torch.optim.AdamW([ctx], lr)  # the reference: AdamW(params, lr), fresh state per image
        x = F.normalize(v, dim=-1)
        text = F.normalize(model.prompt_learner(ctx), dim=-1)
        logits = model.logit_scale * x @ text.T
        ent = -(logits.softmax(1) * logits.log_softmax(1)).sum(1)
        sel = logits[ent.argsort()[: int(len(v) * share)]]
        logp = sel - sel.logsumexp(-1, keepdim=True)
        avg = logp.logsumexp(0) - math.log(len(sel))
        loss = -(avg * avg.exp()).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            out.append(model.logit_scale * x[0] @ F.normalize(model.prompt_learner(ctx), dim=-1).T)
    return torch.stack(out)


@pytest.fixture(scope="module")
def trained_ctx():
    """The shipped pocket CLIP (the random one's text features hardly move with the context) and random views."""
    from vlprompt.clip.backbone import POCKET_MODEL, load_backbone

    return context(load_backbone(POCKET_MODEL, "pocket"))


@pytest.fixture(scope="module")
def views(trained_ctx):
    gen = torch.Generator().manual_seed(3)
    dim = trained_ctx.backbone.embed_dim
    centres = torch.randn(len(NAMES), dim, generator=gen)
    y = torch.arange(len(NAMES)).repeat(3)
    return centres[y][:, None] + 0.8 * torch.randn(len(y), 20, dim, generator=gen)


def test_tpt_selection_and_entropy_equal_the_reference_formulas():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 20, 5, generator=gen) * 3
    keep = select_confident(logits, 0.1)
    assert keep.shape == (2, 2)
    for b in range(2):
        ent = -(logits[b].softmax(1) * logits[b].log_softmax(1)).sum(1)
        assert keep[b].tolist() == ent.argsort()[:2].tolist()
    p = logits[0].softmax(-1).mean(0)
    assert average_entropy(logits[:1])[0].item() == pytest.approx(-(p * p.log()).sum().item(), rel=1e-5)


def test_tpt_tunes_each_image_from_the_initial_prompt_as_the_reference(trained_ctx, views):
    m = build("tpt", trained_ctx, batch_images=5).eval()
    before = m.prompt_learner.ctx.detach().clone()
    with torch.no_grad():  # as evaluate() calls it
        logits = m(views)
    torch.testing.assert_close(logits, reference_tpt(m, views), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(m.prompt_learner.ctx, before, atol=0, rtol=0)  # the method's prompt never moves
    with torch.no_grad():
        plain = m(views[:, 0])  # no views: CoOp's zero-shot-initialised logits, which tuning changed
    assert (plain - logits).abs().max() > 0.05


def test_tpt_resets_between_images(trained_ctx, views):
    """An image's prediction does not depend on which images came before it, nor on how they are batched."""
    m = build("tpt", trained_ctx, batch_images=4).eval()
    with torch.no_grad():
        forward = m(views)
        order = torch.randperm(len(views), generator=torch.Generator().manual_seed(0))
        shuffled = m(views[order])
        alone = torch.cat([m(views[i : i + 1]) for i in range(len(views))])
        m_one = build("tpt", trained_ctx, batch_images=1).eval()
        one_by_one_reversed = m_one(views.flip(0)).flip(0)
    torch.testing.assert_close(shuffled, forward[order], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(alone, forward, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(one_by_one_reversed, forward, atol=1e-5, rtol=1e-5)


def test_tpt_coop_tunes_from_its_trained_context(trained_ctx, views):
    m = build("tpt_coop", trained_ctx, batch_images=6).eval()
    with torch.no_grad():
        m.prompt_learner.ctx.add_(0.05 * torch.randn_like(m.prompt_learner.ctx))  # as after CoOp training
        logits = m(views)
    torch.testing.assert_close(logits, reference_tpt(m, views), atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------- MVLPT


def test_merge_sources_joins_classes_by_name(pocket_random_backbone):
    a = context(pocket_random_backbone, ["red circle", "blue square"])
    b = context(pocket_random_backbone, ["blue square", "green star"], seed=1)
    merged = merge_sources([a, b])
    assert merged.classnames == ["red circle", "blue square", "green star"]
    assert merged.train_features.shape[1] == a.train_features.shape[1] + b.train_features.shape[1]
    n = len(a.train_labels)
    assert merged.train_labels[:n].tolist() == a.train_labels.tolist()
    assert merged.train_labels[n:].tolist() == (b.train_labels + 1).tolist()  # blue square is class 1 in both


def test_mvlpt_starts_from_the_multitask_prompt(pocket_random_backbone):
    c = context(pocket_random_backbone)
    prompt = torch.randn(8, 128)
    m = build(
        "mvlpt",
        MethodContext(**{**vars(c), "multitask_prompt": {"prompt_learner.ctx": prompt, "source": "the test's prompt"}}),
        n_ctx=8,
    )
    torch.testing.assert_close(m.prompt_learner.ctx.detach(), prompt, atol=0, rtol=0)
    assert m.run_info()["initialised_from"] == "the test's prompt"
    with pytest.raises(MethodError, match="n_ctx changed"):
        build("mvlpt", MethodContext(**{**vars(c), "multitask_prompt": {"prompt_learner.ctx": prompt}}), n_ctx=4)
    assert "random" in build("mvlpt", c, n_ctx=8).run_info()["initialised_from"]


# ---------------------------------------------------------------- PAC-Bayes prompt search


def test_bounds_by_hand():
    kl, n, d = 4 * math.log(49406), 512, 0.05
    assert kl == pytest.approx(43.23, abs=0.01)
    assert mcallester_bound(0.2, kl, n, d) == pytest.approx(0.2 + math.sqrt((kl + math.log(n / d)) / 1022))
    r = kl_inverse_bound(0.2, kl, n, d)
    budget = (kl + math.log(2 * math.sqrt(n) / d)) / n
    assert 0.2 * math.log(0.2 / r) + 0.8 * math.log(0.8 / (1 - r)) == pytest.approx(budget, rel=1e-6)
    assert 0.2 < r < mcallester_bound(0.2, kl, n, d)  # the kl form is the tighter
    assert mcallester_bound(0.9, kl, 10, d) == 1.0


def test_greedy_search_takes_the_best_token_of_each_position(ctx):
    m = build("pacbayes_prompt", ctx, n_tokens=2, candidates=12)
    assert m.fit(ctx) is True
    x, y = F.normalize(ctx.train_features[0], dim=-1), ctx.train_labels  # no plain features given: view 0
    names = m.class_tokens(NAMES)

    def score(prefix):
        logits = m.logit_scale * x @ m.text_features(torch.tensor([prefix]), names)[0].T
        return (logits.argmax(-1) == y).float().mean().item(), F.cross_entropy(logits, y).item()

    first = max(m.candidate_tokens(0).tolist(), key=lambda t: (score([t])[0], -score([t])[1], -t))
    second = max(m.candidate_tokens(1).tolist(), key=lambda t: (score([first, t])[0], -score([first, t])[1], -t))
    assert m.prompt_tokens.tolist() == [first, second]
    assert not torch.equal(m.candidate_tokens(0), m.candidate_tokens(1))  # drawn anew per position
    bound = m.run_info()["bound"]
    acc, _ = score([first, second])
    assert bound["train_accuracy"] == pytest.approx(100 * acc, abs=1e-3)
    assert bound["kl"] == pytest.approx(2 * math.log(49406), abs=1e-3) and bound["n"] == len(y)
    assert bound["accuracy_bound"] == pytest.approx(
        100 * (1 - mcallester_bound(1 - acc, bound["kl"], len(y), 0.05)), abs=1e-3
    )
    assert "uniform over the 49406 tokens" in bound["prior"] and "view 0" in m.run_info()["training_features"]
    # the found prompt is the model: saved, loaded, and written before new classes' names
    other = build("pacbayes_prompt", ctx, n_tokens=2, candidates=12)
    other.load_trainable_state(m.trainable_state())
    torch.testing.assert_close(other(x), m(x))
    other.set_classes(NEW)
    expected = m.text_features(torch.tensor([[first, second]]), m.class_tokens(NEW))[0]
    torch.testing.assert_close(other.weights, expected)


# ---------------------------------------------------------------- the pocket miniature, through the CLI


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    """pocket_noisy (target) and pocket_sketch (MVLPT's source), extracted as the DAG's jobs do."""
    root = tmp_path_factory.mktemp("wave3")
    cfg = yaml.safe_load(open("config/pocket_v1.yaml"))  # the world config/pocket_wave3.yaml runs on (64 classes)
    cfg.update(
        experiment="wave3",
        data_root=str(root / "data"),
        results_root=str(root / "results"),
        reports_root=str(root / "reports"),
        datasets=["pocket_noisy"],
        shots=[2],
        seeds=[1],
        methods=["zeroshot", "tfup", "tpt", "mvlpt", "pacbayes_prompt"],
        unlabelled="train",
        sources=["pocket_sketch"],
        method_overrides={
            "tpt": {"views": 6, "view_crop_scale_min": 0.5},
            "mvlpt": {"n_ctx": 4, "epochs": 2, "source_epochs": 3},
            "pacbayes_prompt": {"n_tokens": 1, "candidates": 8},
        },
    )
    cfg["pocket"]["per_class"] = {"train": 3, "val": 2, "test": 2}
    cfg["features"]["train_views"] = 2
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    for dataset in ("pocket_noisy", "pocket_sketch"):
        prepare_run_inputs(path, dataset, shots=2, test_bank=False)
    for extra in ([], ["--part", "train"], ["--part", "test_views", "--views", "6", "--crop", "0.5"]):
        assert cli(["extract", *extra, "--config", str(path), "--dataset", "pocket_noisy", "--quiet"]) == 0
    return root, path, load_config(path)


def train(path, method, out, shots=2, seed=1):
    return cli(
        [
            "train",
            "--config",
            str(path),
            "--dataset",
            "pocket_noisy",
            "--method",
            method,
            "--shots",
            str(shots),
            "--seed",
            str(seed),
            "--out",
            str(out),
            "--quiet",
        ]
    )


def test_tfup_reads_no_label(mini, tmp_path):
    """The run's context hands TFUP features only; with the unlabelled bank's labels shuffled, or its rows removed
    altogether, every prediction is the same."""
    from vlprompt.training.context import build_context

    root, path, cfg = mini
    ctx, _, _ = build_context(cfg, "pocket_noisy", get_method("tfup"), 0, 0, torch.device("cpu"))
    assert ctx.train_labels is None and ctx.val_labels is None and ctx.load_split is None
    pool = ctx.unlabelled()
    assert isinstance(pool, torch.Tensor) and pool.shape == (64 * 3, 64)  # every training image, every class
    sidecar = grid.features_dir(cfg, "pocket_noisy") / "train.json"
    intact = sidecar.read_text()
    meta = json.loads(intact)
    assert {r[1] for r in meta["rows"]} == set(range(64))  # the bank does hold labels

    def predictions(out):
        assert train(path, "tfup", out, 0, 0) == 0
        m = json.loads((out / "metrics.json").read_text())
        return [m[k] for k in ("base_acc", "new_acc", "base_per_class", "new_per_class")]

    try:
        baseline = predictions(tmp_path / "intact")
        shuffled = [[r[0], (r[1] * 7 + 3) % 64, "no class"] for r in meta["rows"]]
        sidecar.write_text(json.dumps({**meta, "rows": shuffled}))
        assert predictions(tmp_path / "shuffled") == baseline
        sidecar.write_text(json.dumps({k: v for k, v in meta.items() if k != "rows"}))
        assert predictions(tmp_path / "absent") == baseline
    finally:
        sidecar.write_text(intact)
    assert json.loads((tmp_path / "intact" / "metrics.json").read_text())["method_info"]["unlabelled"] == "train"


def test_test_views_hold_the_original_first(mini):
    from vlprompt.clip.features import FeatureBank

    root, path, cfg = mini
    stem = grid.test_views_stem(cfg, "pocket_noisy", "tpt", 0)
    assert stem.name == "test_views6_crop0.5" and stem.parent == grid.features_dir(cfg, "pocket_noisy")
    bank = FeatureBank(stem.parent)
    rows = bank.rows("test")
    views = bank.take(stem.name, [r[0] for r in rows])  # (V, N, D)
    assert views.shape == (6, len(rows), 64) and bank.meta(stem.name)["scale_min"] == 0.5
    torch.testing.assert_close(views[0], bank.take("test", [r[0] for r in rows]), atol=2e-3, rtol=2e-3)
    assert (views[1] - views[0]).abs().max() > 0.05 and (views[2] - views[1]).abs().max() > 0.05


def test_tpt_runs_on_the_test_views(mini, tmp_path):
    root, path, cfg = mini
    assert train(path, "tpt", tmp_path, 0, 0) == 0
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert 0 <= m["base_acc"] <= 100 and m["base_n"] == 32 * 2


def test_mvlpt_targets_start_from_the_multitask_prompt(mini, tmp_path):
    root, path, cfg = mini
    stage = grid.multitask_dir(cfg, "mvlpt", 2, 1)
    assert (
        cli(
            [
                "train-multitask",
                "--config",
                str(path),
                "--method",
                "mvlpt",
                "--shots",
                "2",
                "--seed",
                "1",
                "--out",
                str(stage),
                "--quiet",
            ]
        )
        == 0
    )
    record = json.loads((stage / "metrics.json").read_text())
    assert record["sources"] == ["pocket_sketch"] and record["classes"] == 32  # the source's base classes
    assert len(record["train"]["loss_history"]) == 3
    prompt = torch.load(stage / "model.pt", weights_only=False)["state"]["prompt_learner.ctx"]
    # zero epochs: the target's model is the multitask prompt itself
    zero = yaml.safe_load(path.read_text())
    zero["method_overrides"]["mvlpt"]["epochs"] = 0
    (tmp_path / "zero.yaml").write_text(yaml.safe_dump(zero))
    assert train(tmp_path / "zero.yaml", "mvlpt", tmp_path / "zero") == 0
    saved = torch.load(tmp_path / "zero" / "model.pt", weights_only=False)["state"]["prompt_learner.ctx"]
    torch.testing.assert_close(saved, prompt, atol=0, rtol=0)
    # two epochs: trained from there
    assert train(path, "mvlpt", tmp_path / "two") == 0
    run = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert run["method_info"]["initialised_from"] == str(stage / "model.pt")
    trained = torch.load(tmp_path / "two" / "model.pt", weights_only=False)["state"]["prompt_learner.ctx"]
    assert not torch.equal(trained, prompt)
    # a damaged prompt stops the run with the file's name
    shutil.copy(stage / "model.pt", tmp_path / "prompt.bak")
    try:
        (stage / "model.pt").write_bytes(b"not a prompt")
        assert train(path, "mvlpt", tmp_path / "damaged") == 2
    finally:
        shutil.copy(tmp_path / "prompt.bak", stage / "model.pt")


def test_the_bound_reaches_the_summary(mini, tmp_path):
    from vlprompt.analysis.aggregate import summary_table

    root, path, cfg = mini
    assert train(path, "pacbayes_prompt", tmp_path / "pb") == 0
    assert train(path, "zeroshot", tmp_path / "zs", 0, 0) == 0
    df = summary_table(cfg, [tmp_path / "pb" / "metrics.json", tmp_path / "zs" / "metrics.json"])
    pb = df[df.method == "pacbayes_prompt"].iloc[0]
    m = json.loads((tmp_path / "pb" / "metrics.json").read_text())
    assert pb.acc_bound == m["method_info"]["bound"]["accuracy_bound"] and 0 <= pb.acc_bound <= pb.train_acc
    assert m["method_info"]["bound"]["n"] == 32 * 2  # the un-augmented few-shot images of the base classes
    assert "training_features" not in m["method_info"]  # the bank's plain part was there
    assert df[df.method == "zeroshot"].acc_bound.isna().all()


@pytest.mark.slow
def test_transfer_reads_the_targets_unlabelled_images_and_views(tmp_path):
    """Cross-dataset transfer through Snakemake: TFUP caches the target's unlabelled images, TPT + CoOp tunes on the
    target's test views, MVLPT trains from its multitask prompt; every job the DAG plans for them runs."""
    import os
    import subprocess
    import sys

    import pandas as pd

    repo = grid.Path(__file__).resolve().parents[1]
    cfg = yaml.safe_load((repo / "config" / "pocket_crossdataset.yaml").read_text())
    cfg.update(
        targets=["pocket_dark"],
        shots=[2],
        seeds=[1],
        methods=["zeroshot", "tfup", "tpt_coop", "mvlpt"],
        unlabelled="train",
        sources=["pocket_sketch"],
        method_overrides={
            "tpt_coop": {"epochs": 2, "views": 4, "view_crop_scale_min": 0.5},
            "mvlpt": {"n_ctx": 4, "epochs": 2, "source_epochs": 2},
        },
    )
    cfg["pocket"] = {"per_class": {"train": 3, "val": 2, "test": 2}}
    cfg["features"]["train_views"] = 2
    (tmp_path / "xd.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PATH": f"{grid.Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "-s",
            str(repo / "Snakefile"),
            "-d",
            str(tmp_path),
            "--cores",
            "2",
            "--configfile",
            str(tmp_path / "xd.yaml"),
            "--",
            f"results/{cfg['experiment']}/summary.csv",
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    df = pd.read_csv(tmp_path / "results" / cfg["experiment"] / "summary.csv")
    assert set(df.method) == {"zeroshot", "tfup", "tpt_coop", "mvlpt"} and df.all_acc.between(0, 100).all()
    assert set(df.dataset) == {"pocket_photo", "pocket_dark"}
    out = tmp_path / "results" / cfg["experiment"] / "runs" / "pocket_photo"
    assert (out / "tfup" / "0shot" / "seed0" / "transfer" / "pocket_dark.json").exists()
    feats = tmp_path / "results" / "features"
    assert sorted(p.name for p in feats.rglob("test_views*.npy")) == ["test_views4_crop0.5.npy"] * 2  # source, target
    assert len(list(feats.rglob("train.npy"))) == 2
