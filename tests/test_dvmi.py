"""DVMI (issue 15): each MI estimator against values computed by hand, the augmentations' labels, the learnable
critics' gradients, the preset's selection rule, and the diagnostics and validation accuracy a run records."""

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from conftest import prepare_run_inputs
from test_methods import FAST, NAMES, build, context  # the method tests' toy context
from vlprompt.clip.backbone import encode_prompts
from vlprompt.methods import MethodError, get_method
from vlprompt.methods.dual_view import (
    CANDIDATES,
    READINGS,
    Critic,
    choose_default,
    jsd_bound,
    mix,
    nce_from_scores,
    prediction_mi,
)


@pytest.fixture(scope="module")
def ctx(pocket_random_backbone):
    return context(pocket_random_backbone)


# ---------------------------------------------------------------- estimators by hand


def test_info_nce_on_3x2_features_by_hand():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    b = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    # cos(a_i, b_j) / τ with τ = 0.5: [[2, 1.2, 0], [0, 1.6, 2], [-2, -1.2, 0]]; the diagonal holds the positives
    e = math.exp
    rows = [-2 + math.log(e(2) + e(1.2) + 1), -1.6 + math.log(1 + e(1.6) + e(2)), math.log(e(-2) + e(-1.2) + 1)]
    cols = [-2 + math.log(e(2) + 1 + e(-2)), -1.6 + math.log(e(1.2) + e(1.6) + e(-1.2)), math.log(2 + e(2))]
    scores = Critic("infonce", 2, 0.5, hidden=4, lr_scale=1.0)(a, b)  # the fixed cosine critic
    assert nce_from_scores(scores, symmetric=False).item() == pytest.approx(sum(rows) / 3, abs=1e-6)
    assert nce_from_scores(scores).item() == pytest.approx((sum(rows) + sum(cols)) / 6, abs=1e-6)
    # the estimate log C − L is below its bound log C, and reaches it only as the pairs become separable
    assert 0 < math.log(3) - nce_from_scores(scores).item() < math.log(3)
    separable = nce_from_scores(torch.eye(3) * 100)
    assert math.log(3) - separable.item() == pytest.approx(math.log(3), abs=1e-6)


def test_prediction_mi_on_known_joint_distributions():
    one_hot = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # joint P = (1/B) Σ_b p_b r_bᵀ = [[3/8, 1/8], [1/8, 3/8]], uniform marginals
    soft = torch.tensor([[0.75, 0.25], [0.25, 0.75]])
    expected = 2 * 0.375 * math.log(0.375 / 0.25) + 2 * 0.125 * math.log(0.125 / 0.25)
    assert prediction_mi(one_hot, soft).item() == pytest.approx(expected, abs=1e-6)
    assert prediction_mi(one_hot, one_hot).item() == pytest.approx(math.log(2), abs=1e-6)  # the bound log 2
    same = torch.tensor([[0.9, 0.1], [0.9, 0.1]])  # the same prediction for every input: independent
    assert prediction_mi(same, soft).item() == pytest.approx(0.0, abs=1e-6)


def test_jsd_bound_by_hand():
    scores = torch.tensor([[2.0, -1.0], [0.5, 1.0]])
    sp = F.softplus
    pos = -(sp(torch.tensor(-2.0)) + sp(torch.tensor(-1.0))) / 2
    neg = (sp(torch.tensor(-1.0)) + sp(torch.tensor(0.5))) / 2
    assert jsd_bound(scores, torch.eye(2)).item() == pytest.approx((pos - neg).item(), abs=1e-6)


def test_text_mi_is_log_c_minus_info_nce_with_its_own_temperature(ctx):
    m = build("dvmi", ctx, mi_between="text", mi_estimator="infonce", mi_temperature=0.2, augment="none", mi_weight=0.5)
    x, y = ctx.train_features[0, :6], ctx.train_labels[:6]
    text = m.text_features()
    hand = encode_prompts(ctx.backbone, [f"a photo of a {c}." for c in NAMES])
    estimate = math.log(3) - nce_from_scores(F.normalize(text, dim=-1) @ hand.T / 0.2)  # hand: normalised
    assert m.mi_estimate(text, text[:0], text[:0]).item() == pytest.approx(estimate.item(), rel=1e-5)
    loss, parts = m.loss(x, y)
    assert loss.item() == pytest.approx((F.cross_entropy(m(x), y) - 0.5 * estimate).item(), rel=1e-5)
    assert parts["n_synthetic"] == 0 and parts["mi"] == pytest.approx(estimate.item(), rel=1e-5)


def test_prediction_reading_uses_both_views_posteriors(ctx):
    m = build("dvmi_pred", ctx, augment="none")
    x = F.normalize(ctx.train_features[0, :6], dim=-1)
    text = m.text_features()
    p, r = F.softmax(m.logit_scale * x @ text.T, -1), F.softmax(m.logit_scale * x @ m.hand_crafted.T, -1)
    assert m.mi_estimate(text, x, None).item() == pytest.approx(prediction_mi(p, r).item(), rel=1e-5)


# ---------------------------------------------------------------- augmentation


def test_mix_by_hand():
    torch.testing.assert_close(
        mix(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]), torch.tensor([0.25])), torch.tensor([[0.25, 0.75]])
    )


def test_mixup_labels_are_distributions_that_mix_like_the_features(ctx):
    x = F.normalize(ctx.train_features[0], dim=-1)
    torch.manual_seed(0)
    z, q = build("dvmi", ctx, augment="mixup", mix_alpha=1.0).synthesize(x, ctx.train_labels)
    assert z.shape == x.shape and q.shape == (len(x), 3)
    torch.testing.assert_close(q.sum(1), torch.ones(len(x)))
    assert (q >= 0).all() and ((q > 0).sum(1) <= 2).all()
    assert ((q > 0).sum(1) == 2).any()  # cross-class pairs occur
    # Beta(a, a) with large a: λ ≈ ½, so a cross-class label is ≈ (½, ½) and the feature ≈ the pair's mean
    z, q = build("dvmi", ctx, augment="mixup", mix_alpha=1e5).synthesize(x, ctx.train_labels)
    two = (q > 0).sum(1) == 2
    torch.testing.assert_close(q[two][q[two] > 0], torch.full((2 * int(two.sum()),), 0.5), atol=0.02, rtol=0)
    pair_sums = (x[:, None] + x[None, :]).reshape(-1, x.shape[1])  # every x_i + x_j
    assert torch.cdist(2 * z, pair_sums).min(1).values.max() < 0.05


def test_within_class_and_mean_noise_keep_the_class(ctx):
    x = F.normalize(ctx.train_features[0], dim=-1)
    m = build("dvmi", ctx, augment="within_class")
    torch.manual_seed(0)
    z, q = m.synthesize(x, ctx.train_labels)
    torch.testing.assert_close(q, F.one_hot(ctx.train_labels, 3).float())
    # each synthetic feature lies on a segment between x_i and a feature of its own class: closest class mean
    assert (F.normalize(z, dim=-1) @ m.class_means.T).argmax(-1).eq(ctx.train_labels).float().mean() > 0.9
    means = build("dvmi", ctx, augment="mean_noise", noise_std=0.0, augment_ratio=2.0)
    z, q = means.synthesize(x, ctx.train_labels)
    assert len(q) == 2 * len(x)
    torch.testing.assert_close(z, means.class_means[q.argmax(1)])
    assert len(build("dvmi", ctx, augment="none").synthesize(x, ctx.train_labels)[1]) == 0


def test_loss_is_soft_cross_entropy_on_the_augmented_batch(ctx):
    m = build("dvmi", ctx, mi_weight=0.0, augment="mixup")
    x, y = ctx.train_features[0, :6], ctx.train_labels[:6]
    torch.manual_seed(3)
    loss, parts = m.loss(x, y)
    torch.manual_seed(3)
    z, q = m.synthesize(F.normalize(x, dim=-1), y)
    logits = m(torch.cat([F.normalize(x, dim=-1), z]))
    targets = torch.cat([F.one_hot(y, 3).float(), q])
    expected = -(targets * F.log_softmax(logits, -1)).sum(1).mean()
    assert parts["n_synthetic"] == 6 and loss.item() == pytest.approx(expected.item(), rel=1e-5)


# ---------------------------------------------------------------- learnable critics


@pytest.mark.parametrize(
    "estimator,target",
    [("bilinear", "text"), ("mlp", "text"), ("jsd", "text"), ("bilinear", "image_text"), ("mlp", "image_text")],
)
def test_learnable_critic_parameters_receive_gradients(ctx, estimator, target):
    m = build("dvmi", ctx, mi_estimator=estimator, mi_between=target, lr=0.05)
    critic = dict(m.critic.named_parameters())
    assert critic and all(p.requires_grad for p in critic.values())
    before = {k: v.detach().clone() for k, v in critic.items()}
    opt = torch.optim.SGD(m.parameters(), lr=0.05)
    for _ in range(2):  # the MLP's first layer gets a gradient once its zero-initialised output layer has moved
        opt.zero_grad()
        m.loss(ctx.train_features[0], ctx.train_labels)[0].backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in critic.values())
        opt.step()
    assert all(not torch.equal(before[k], critic[k]) for k in critic), "every critic parameter moved"
    assert set(critic) <= {k.removeprefix("critic.") for k in m.trainable_state()}  # saved with the prompt


def test_fixed_critics_have_no_parameters(ctx):
    assert not list(build("dvmi", ctx, mi_estimator="infonce").critic.parameters())
    assert not list(build("dvmi_pred", ctx).critic.parameters())


# ---------------------------------------------------------------- configs, readings, selection


def test_bad_options_are_named():
    with pytest.raises(MethodError, match="'plugin', and only it"):
        build_error({"mi_between": "predictions", "mi_estimator": "infonce"})
    with pytest.raises(MethodError, match="augment must be one of"):
        build_error({"augment": "mix"})
    with pytest.raises(MethodError, match="mi_temperature must be > 0"):
        build_error({"mi_temperature": 0.0})


def build_error(overrides):
    from vlprompt.methods.dual_view import check_config

    check_config(get_method("dvmi").make_config(overrides))


def test_readings_are_registered_with_their_presets():
    for name, (_, preset) in READINGS.items():
        cfg = get_method(name).make_config()
        assert all(getattr(cfg, k) == v for k, v in preset.items()), name
        assert get_method(name).name == name
    assert get_method("dvmi_text_logit_scale_within").make_config().mi_temperature == pytest.approx(1 / 21.5)
    assert set(CANDIDATES) <= set(READINGS) and "dvmi_mixup_only" not in CANDIDATES


def test_choose_default_takes_the_best_mean_validation_hm():
    val = {c: {"a": [50.0, 52.0], "b": [40.0, 40.0]} for c in CANDIDATES}
    val[CANDIDATES[2]] = {"a": [55.0, 55.0], "b": [39.0, 41.0]}  # 47.5 against 45.5
    choice, scores = choose_default(val)
    assert choice == CANDIDATES[2] and scores[CANDIDATES[2]] == pytest.approx(47.5)
    assert choose_default({c: {"a": [1.0]} for c in CANDIDATES})[0] == CANDIDATES[0]  # ties: the first
    with pytest.raises(MethodError, match="no validation results"):
        choose_default({CANDIDATES[0]: {"a": [1.0]}})
    uneven = {c: {"a": [1.0, 2.0]} for c in CANDIDATES}
    uneven[CANDIDATES[1]] = {"a": [1.0]}
    with pytest.raises(MethodError, match="different datasets or numbers of seeds"):
        choose_default(uneven)


# ---------------------------------------------------------------- a run records diagnostics and validation


def test_a_run_records_diagnostics_and_validation_accuracy(tmp_path):
    from vlprompt.cli import main as cli

    cfg = yaml.safe_load(open("config/pocket_v1.yaml"))  # the world of the DVMI ablation: 64 classes
    cfg.update(
        experiment="mini_dvmi",
        data_root=str(tmp_path / "data"),
        results_root=str(tmp_path / "results"),
        reports_root=str(tmp_path / "reports"),
        datasets=["pocket_noisy"],
        shots=[2],
        seeds=[1],
        methods=["dvmi_pred", "dvmi_text_bilinear"],
        method_overrides={"dvmi_pred": FAST, "dvmi_text_bilinear": FAST},
    )
    cfg["pocket"]["per_class"] = {"train": 3, "val": 2, "test": 2}
    cfg["features"]["train_views"] = 2
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    prepare_run_inputs(path, "pocket_noisy", shots=2)
    for method in ("dvmi_pred", "dvmi_text_bilinear"):
        out = tmp_path / method
        assert (
            cli(
                [
                    "train",
                    "--config",
                    str(path),
                    "--dataset",
                    "pocket_noisy",
                    "--method",
                    method,
                    "--shots",
                    "2",
                    "--seed",
                    "1",
                    "--out",
                    str(out),
                    "--quiet",
                ]
            )
            == 0
        )
        metrics = json.loads((out / "metrics.json").read_text())
        diag = metrics["method_info"]
        n_base = 32  # the pocket world's 64 classes, half of them base
        bound = math.log(min(FAST["batch_size"], n_base)) if method == "dvmi_pred" else math.log(n_base)
        assert diag["mi_bound"] == pytest.approx(bound)
        assert math.isfinite(diag["mi_estimate"]) and diag["mi_estimate"] <= bound + 1e-6
        assert -1 <= diag["cos_soft_hand"] <= 1
        assert 0 <= metrics["val_base_acc"] <= 100 and 0 <= metrics["val_new_acc"] <= 100
        assert metrics["val_hm"] == pytest.approx(
            2 * metrics["val_base_acc"] * metrics["val_new_acc"] / (metrics["val_base_acc"] + metrics["val_new_acc"])
        )
        assert metrics["val_base_n"] == 32 * 2 and metrics["val_new_n"] == 32 * 2  # min(shots, 4) per class


def test_selection_script_recomputes_the_choice_from_recorded_metrics(tmp_path):
    import subprocess
    import sys

    for i, method in enumerate([*CANDIDATES, "coop"]):
        for dataset in ("pocket_dark", "pocket_noisy"):
            for seed in (1, 2):
                run = tmp_path / "runs" / dataset / method / "16shot" / f"seed{seed}"
                run.mkdir(parents=True)
                val_hm = 90.0 if method == "coop" else 40.0 + (i == 3) * 5 + seed  # coop is no candidate
                metrics = {
                    "method": method,
                    "dataset": dataset,
                    "val_hm": val_hm,
                    "val_base_acc": 50.0,
                    "val_new_acc": 50.0,
                    "hm": 1.0,
                    "base_acc": 1.0,
                    "new_acc": 1.0,
                    "method_info": {"mi_estimate": 1.0, "mi_bound": 2.0, "cos_soft_hand": 0.5},
                }
                (run / "metrics.json").write_text(json.dumps(metrics))
    out = subprocess.run(
        [sys.executable, "scripts/select_dvmi_default.py", str(tmp_path)], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip().endswith(f"chosen by mean validation HM over 2 datasets: {CANDIDATES[3]}")
    assert f"| {CANDIDATES[3]} | **chosen** | 50.00 | 50.00 | 46.50 |" in out


# ---------------------------------------------------------------- text views and Mixup features under one critic


def test_text_mixup_reading_scores_text_pairs_and_mixup_features_with_one_critic(ctx):
    m = build("dvmi_text_mixup_critic", ctx)
    assert (m.config.mi_between, m.config.mi_estimator, m.config.augment) == ("text_mixup", "bilinear", "mixup")
    with torch.no_grad():
        m.critic.residual.copy_(0.01 * torch.randn(m.critic.residual.shape, generator=torch.Generator().manual_seed(1)))
    text = m.text_features()
    real = F.normalize(ctx.train_features[0, :4], dim=-1)
    synthetic = F.normalize(ctx.train_features[1, 4:7], dim=-1)
    soft = torch.tensor([[0.7, 0.3, 0.0], [0.0, 0.0, 1.0], [0.5, 0.0, 0.5]])  # three classes (NAMES)
    targets = torch.cat([F.one_hot(ctx.train_labels[:4], len(NAMES)).float(), soft])
    # by hand: f(a, b) = â (I + A) b̂ᵀ / τ, A = √100 · A'; InfoNCE of the text pairs + InfoNCE of the synthetic rows
    a_mat = torch.eye(text.shape[1]) + 10 * m.critic.residual.detach()
    tau, c = m.config.mi_temperature, len(text)

    def f(a, b):
        return F.normalize(a, dim=-1) @ a_mat @ F.normalize(b, dim=-1).T / tau

    pairs = f(text, m.hand_crafted)
    nce = 0.5 * (F.cross_entropy(pairs, torch.arange(c)) + F.cross_entropy(pairs.T, torch.arange(c)))
    mix_nce = (-(soft * F.log_softmax(f(synthetic, text), -1)).sum(-1)).mean()
    expected = 2 * math.log(c) - nce - mix_nce
    got = m.mi_estimate(text, torch.cat([real, synthetic]), targets, n_real=4)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    # the real rows do not enter the Mixup term; without synthetic rows only the text pairs' term remains
    moved = m.mi_estimate(text, torch.cat([real.flip(0), synthetic]), targets, n_real=4)
    assert moved.item() == pytest.approx(got.item(), rel=1e-6)
    assert m.mi_estimate(text, real, targets[:4], n_real=4).item() == pytest.approx(
        (math.log(c) - nce).item(), rel=1e-5
    )
    m.critic.residual.grad = None
    m.mi_estimate(text, torch.cat([real, synthetic]), targets, n_real=4).backward()
    assert m.critic.residual.grad.abs().sum() > 0  # the critic learns from both terms
    _, parts = m.loss(ctx.train_features[0, :8], ctx.train_labels[:8])
    assert parts["n_synthetic"] == 8 and math.isfinite(parts["mi"])
    with pytest.raises(MethodError, match="text_mixup"):
        build("dvmi", ctx, mi_between="text_mixup", mi_estimator="jsd")


def test_ensemble_prediction_averages_the_two_views_on_any_classes(ctx):
    from vlprompt.clip.prompting import text_classifier

    m = build("dvmi_text_mixup_critic_ensemble", ctx)
    x = ctx.train_features[0, :5]
    soft = build("dvmi_text_mixup_critic", ctx)
    hand = text_classifier(ctx.backbone, [ctx.template], list(NAMES))
    expected = 0.5 * (soft(x) + m.logit_scale * F.normalize(x, dim=-1) @ hand.T)
    torch.testing.assert_close(m(x), expected, atol=1e-4, rtol=1e-5)
    new = ["cyan cross", "orange diamond"]
    m.set_classes(new)
    soft.set_classes(new)
    hand_new = text_classifier(ctx.backbone, [ctx.template], new)
    torch.testing.assert_close(
        m(x), 0.5 * (soft(x) + m.logit_scale * F.normalize(x, dim=-1) @ hand_new.T), atol=1e-4, rtol=1e-5
    )
    with pytest.raises(MethodError, match="predict_with"):
        build("dvmi", ctx, predict_with="both")


def test_the_readings_are_in_the_ablation_and_every_example_report_names_registered_methods():
    import csv

    from vlprompt.methods import list_methods

    ablation = yaml.safe_load(open("config/explore/dvmi_ablation.yaml"))
    for reading in ("dvmi_text_mixup_critic", "dvmi_text_mixup_critic_ensemble", "dvmi_text_logit_scale_within"):
        assert reading in ablation["methods"] and reading in CANDIDATES
    assert set(ablation["methods"]) <= set(list_methods())
    registered = set(list_methods())
    for cells in Path("reports/examples").glob("*/cells.csv"):
        with cells.open() as f:
            named = {row["method"] for row in csv.DictReader(f)}
        assert named <= registered, (str(cells), sorted(named - registered))
