"""GRAM (no official code): the meta stage over the pocket pretraining pool, keyed by backbone, and the target runs.

The faithfulness test the reading asks for: with CoOp's initialisation and the identity regulator a GRAM run is
CoOp's run exactly (model.pt and metrics). Then the regulating function against a hand computation, the
clustering's determinism, the meta stage's key and record, and a run starting from the stage's context.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import yaml

from conftest import prepare_run_inputs
from vlprompt.cli import main as cli
from vlprompt.experiment import grid
from vlprompt.experiment.config import backbone_key, load_config
from vlprompt.experiment.meta_prompt import meta_dir, meta_files, meta_key, meta_stages
from vlprompt.methods import get_method
from vlprompt.methods.gram import GradientRegulator, cluster_pairs

META = {"meta_steps": 4, "meta_pool_size": 48, "meta_clusters": 3, "meta_batch": 8}


# ---------------------------------------------------------------- pieces


def test_the_regulator_starts_as_the_identity():
    reg = GradientRegulator(width=6, hidden=3)
    g = torch.randn(4, 6)
    assert torch.equal(reg(g), g)  # 2σ(0) = 1 exactly


def test_the_regulator_against_a_hand_computation():
    """R(g)_i = g_i ⊙ 2σ(W₂ ReLU(W₁ g_i/|g_i| + b₁) + b₂), on a two-row gradient with hand-set weights."""
    reg = GradientRegulator(width=2, hidden=2)
    with torch.no_grad():
        reg.hidden.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, -1.0]]))
        reg.hidden.bias.copy_(torch.tensor([0.0, 0.5]))
        reg.out.weight.copy_(torch.tensor([[2.0, 0.0], [0.0, 1.0]]))
        reg.out.bias.copy_(torch.tensor([0.0, -1.0]))
    g = torch.tensor([[3.0, 4.0], [0.0, -2.0]])
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    # row 0: unit (0.6, 0.8); hidden ReLU(0.6, -0.8 + 0.5) = (0.6, 0); out (1.2, -1)
    # row 1: unit (0, -1); hidden ReLU(0, 1 + 0.5) = (0, 1.5); out (0, 0.5)
    expected = torch.tensor(
        [[3.0 * 2 * sig(1.2), 4.0 * 2 * sig(-1.0)], [0.0 * 2 * sig(0.0), -2.0 * 2 * sig(0.5)]], dtype=torch.float32
    )
    torch.testing.assert_close(reg(g), expected)
    assert (torch.sign(reg(g)) == torch.sign(g)).all()  # it rescales, never flips


def test_the_cross_modal_clustering_is_deterministic():
    gen = torch.Generator().manual_seed(0)
    images, texts = torch.randn(40, 8, generator=gen), torch.randn(40, 8, generator=gen)
    first = cluster_pairs(images, texts, 4)
    assert np.array_equal(first, cluster_pairs(images.clone(), texts.clone(), 4)) and len(set(first)) == 4
    # both modalities count: other captions for the same images change the clusters
    assert not np.array_equal(first, cluster_pairs(images, torch.randn(40, 8, generator=gen), 4))


def test_captions_too_long_for_the_prompt_are_dropped(pocket_random_backbone):
    from vlprompt.training.meta_prompt import fitting_captions, pretraining_pool

    ctx = type("Ctx", (), {"backbone": pocket_random_backbone})()
    _, captions = pretraining_pool("v2", 300, 0)
    keep = fitting_captions(ctx, captions, "a photo of a")
    longest = max(captions, key=lambda c: len(pocket_random_backbone.tokenizer([c])[0].nonzero()))
    assert 0 < len(keep) < len(captions) and captions.index(longest) not in keep  # the v2 pool has some
    assert fitting_captions(ctx, captions[:5], "") == list(range(5))


def test_the_meta_stage_keys_and_inputs():
    cfg = load_config("config/pocket_v1.yaml")
    cfg.update(methods=["coop", "gram"], datasets=["pocket_noisy"], shots=[2, 4], method_overrides={"gram": META})
    stages = meta_stages(cfg)
    assert list(stages.values()) == [("gram", "pocket_noisy", 2)]  # one stage for both shots settings
    key = next(iter(stages))
    assert meta_dir(cfg, key).parent.name == backbone_key(cfg)
    run_inputs = grid.train_inputs(cfg, "pocket_noisy", "gram", 4, 1)
    assert set(meta_files(cfg, "gram", "pocket_noisy", 4)) <= set(run_inputs)
    assert not any("meta_prompt" in str(p) for p in grid.train_inputs(cfg, "pocket_noisy", "coop", 4, 1))
    # a meta setting, or the pool's world, changes the key; a target-stage setting does not
    for change in ({"meta_steps": 5}, {"n_ctx": 8, "ctx_init": None}):
        other = {**cfg, "method_overrides": {"gram": {**META, **change}}}
        assert meta_key(other, "gram", "pocket_noisy", 2) != key
    assert meta_key({**cfg, "pocket": {**cfg["pocket"], "world": "v2"}}, "gram", "pocket_noisy", 2) != key
    assert meta_key({**cfg, "method_overrides": {"gram": {**META, "epochs": 3}}}, "gram", "pocket_noisy", 2) == key
    # CoOp's initialisation with the identity regulator reads no meta stage
    plain = {**cfg, "method_overrides": {"gram": {"init": "coop", "regulator": "identity"}}}
    assert meta_stages(plain) == {} and meta_files(plain, "gram", "pocket_noisy", 2) == []
    assert get_method("gram").reads_meta_prompt and not get_method("coop").reads_meta_prompt


# ---------------------------------------------------------------- the pocket miniature, through the CLI


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    root = tmp_path_factory.mktemp("gram")
    cfg = yaml.safe_load(open("config/pocket_v1.yaml"))
    cfg.update(
        experiment="gram",
        data_root=str(root / "data"),
        results_root=str(root / "results"),
        reports_root=str(root / "reports"),
        datasets=["pocket_noisy"],
        shots=[2],
        seeds=[1],
        methods=["coop", "gram"],
        method_overrides={"coop": {"epochs": 3}, "gram": {"epochs": 3, **META}},
    )
    cfg["pocket"]["per_class"] = {"train": 3, "val": 2, "test": 2}
    cfg["features"]["train_views"] = 2
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    prepare_run_inputs(path, "pocket_noisy", shots=2)
    return root, path, load_config(path)


def train(path, method, out):
    args = ["train", "--config", str(path), "--dataset", "pocket_noisy", "--method", method]
    return cli([*args, "--shots", "2", "--seed", "1", "--out", str(out), "--quiet"])


def with_gram(path, out_path, **settings):
    cfg = yaml.safe_load(path.read_text())
    cfg["method_overrides"]["gram"] = {**cfg["method_overrides"]["gram"], **settings}
    out_path.write_text(yaml.safe_dump(cfg))
    return out_path


def test_gram_with_coops_init_and_the_identity_is_coop(mini, tmp_path):
    root, path, cfg = mini
    plain = with_gram(path, tmp_path / "plain.yaml", init="coop", regulator="identity")
    assert train(path, "coop", tmp_path / "coop") == 0
    assert train(plain, "gram", tmp_path / "gram") == 0
    coop = torch.load(tmp_path / "coop" / "model.pt", weights_only=False)["state"]
    gram = torch.load(tmp_path / "gram" / "model.pt", weights_only=False)["state"]
    assert coop.keys() == gram.keys() == {"prompt_learner.ctx"}
    torch.testing.assert_close(gram["prompt_learner.ctx"], coop["prompt_learner.ctx"], atol=0, rtol=0)
    mc, mg = (json.loads((tmp_path / m / "metrics.json").read_text()) for m in ("coop", "gram"))
    for key in [k for k in mc if k.endswith(("_acc", "_per_class", "hm")) or k.startswith("val_")]:
        assert mg[key] == mc[key], key
    assert mg["train"]["loss_history"] == mc["train"]["loss_history"]
    assert mg["method_info"]["regulator"] == "identity"


def test_the_meta_stage_and_a_run_from_it(mini, tmp_path):
    root, path, cfg = mini
    (key,) = meta_stages(cfg)
    stage = meta_dir(cfg, key)
    assert cli(["train-meta-prompt", "--config", str(path), "--stage", key, "--out", str(stage), "--quiet"]) == 0
    record = json.loads((stage / "metrics.json").read_text())
    pool = {"world": "v1", "pairs": 48, "dropped_too_long": 0, "labels_read": False}
    assert {k: v for k, v in record["pool"].items() if k != "captions"} == pool
    assert len(record["clusters"]) == 3 and sum(record["clusters"]) == 48
    assert len(record["train"]["query_loss_history"]) == 4
    state = torch.load(stage / "model.pt", weights_only=False)["state"]
    assert state["regulator.out.weight"].abs().max() > 0  # the regulator left the identity
    # zero epochs: the run's context is the meta-learned one
    zero = with_gram(path, tmp_path / "zero.yaml", epochs=0)
    assert train(zero, "gram", tmp_path / "zero") == 0
    saved = torch.load(tmp_path / "zero" / "model.pt", weights_only=False)["state"]["prompt_learner.ctx"]
    torch.testing.assert_close(saved, state["prompt_learner.ctx"], atol=0, rtol=0)
    run = json.loads((tmp_path / "zero" / "metrics.json").read_text())
    assert run["method_info"]["initialised_from"] == str(stage / "model.pt")
    # the regulator changes training: with the meta init but the identity, the trained context differs
    assert train(path, "gram", tmp_path / "regulated") == 0
    ident = with_gram(path, tmp_path / "ident.yaml", regulator="identity")
    assert meta_key(load_config(ident), "gram", "pocket_noisy", 2) == key  # the same stage: a run setting
    assert train(ident, "gram", tmp_path / "identity") == 0
    a, b = (torch.load(tmp_path / d / "model.pt", weights_only=False)["state"] for d in ("regulated", "identity"))
    assert not torch.equal(a["prompt_learner.ctx"], b["prompt_learner.ctx"])
    # a damaged stage stops the run with one line (exit 2)
    shutil.copy(stage / "model.pt", tmp_path / "stage.bak")
    try:
        (stage / "model.pt").write_bytes(b"not a prompt")
        assert train(path, "gram", tmp_path / "damaged") == 2
    finally:
        shutil.copy(tmp_path / "stage.bak", stage / "model.pt")


def test_a_real_backbone_has_no_pool(mini, tmp_path):
    root, path, cfg = mini
    real = yaml.safe_load(path.read_text())
    real["backbone"] = {"model": "ViT-B-16", "pretrained": "openai", "quick_gelu": True}
    (tmp_path / "real.yaml").write_text(yaml.safe_dump(real))
    key = next(iter(meta_stages(load_config(tmp_path / "real.yaml"))))
    args = ["train-meta-prompt", "--config", str(tmp_path / "real.yaml"), "--stage", key, "--out", str(tmp_path)]
    assert cli([*args, "--quiet"]) == 2


def test_the_stage_config_plans_one_meta_stage_for_every_run(config_plans):
    """config/pocket_stages.yaml from a fresh clone: GRAM's three runs read one meta stage, PVP's and DAM-VP's
    one multitask stage per seed each (in the image loop)."""
    from test_real_protocols import dry_run_jobs

    cfg = load_config("config/pocket_stages.yaml")
    plan = config_plans("config/pocket_stages.yaml")
    assert plan.returncode == 0, plan.output[-4000:]
    jobs = dry_run_jobs(plan.output)
    assert jobs["train_meta_prompt"] == 1 and jobs["train"] == 1 + 3 + 3  # zeroshot once; coop and gram x 3 seeds
    assert jobs["train_images"] == 3 + 3 + 3  # vpt_deep, pvp, dam_vp
    assert jobs["train_multitask"] == 3 + 3  # PVP's source stages, DAM-VP's meta stages
    assert len(meta_stages(cfg)) == 1


def test_batched_seeds_train_as_single_runs(mini, tmp_path):
    """GRAM is batchable: two seeds trained in one computation (the regulator in each run's gradient hook) match
    the runs trained alone."""
    from vlprompt.training import batched, feature_runs

    root, path, cfg = mini
    (key,) = meta_stages(cfg)
    stage = meta_dir(cfg, key)
    if not (stage / "metrics.json").exists():
        assert cli(["train-meta-prompt", "--config", str(path), "--stage", key, "--out", str(stage), "--quiet"]) == 0
    prepare_run_inputs(path, "pocket_noisy", shots=2, seed=2, test_bank=False)
    assert batched.can_batch(get_method("gram"))
    todo = [(2, seed, tmp_path / f"batched{seed}") for seed in (1, 2)]
    batched.run_group(cfg, "pocket_noisy", "gram", todo)
    for seed in (1, 2):
        feature_runs.run(cfg, "pocket_noisy", "gram", 2, seed, tmp_path / f"alone{seed}", progress=False)
        a, b = (
            torch.load(tmp_path / f"{d}{seed}" / "model.pt", weights_only=False)["state"] for d in ("batched", "alone")
        )
        torch.testing.assert_close(a["prompt_learner.ctx"], b["prompt_learner.ctx"], rtol=1e-5, atol=1e-7)
