from vlprompt.experiment import grid
from vlprompt.experiment.config import load_config


def test_runs_cover_the_grid_and_zero_shot_runs_once_per_dataset():
    cfg = load_config("config/config.yaml")
    runs = grid.runs(cfg)
    n_ds, n_k, n_s = len(cfg["datasets"]), len(cfg["shots"]), len(cfg["seeds"])
    untrained = {"zeroshot", "zeroshot_ensemble"}
    assert untrained <= set(cfg["methods"])
    trained = [m for m in cfg["methods"] if m not in untrained]
    assert len(runs) == n_ds * (len(untrained) + len(trained) * n_k * n_s)
    assert len(set(runs)) == len(runs)
    zs = [r for r in runs if r.method in untrained]
    assert {(r.shots, r.seed) for r in zs} == {(0, 0)}


def test_paths_spell_out_the_run_identity():
    cfg = load_config("config/config.yaml")
    run = grid.Run("pocket_dark", "coop", 16, 2)
    assert str(run.dir(cfg)) == "results/pocket/runs/pocket_dark/coop/16shot/seed2"
    assert grid.fewshot_path(cfg, "pocket_dark", 4, 1).name == "shot4_seed1.json"
    assert grid.features_dir(cfg, "pocket_dark").parts[:2] == ("results", "features")


def test_declared_inputs_become_the_runs_input_files():
    """The inputs a method declares (unlabelled images, test views, a multitask prompt) are files
    of its runs, keyed by what defines them; other methods' inputs do not change."""
    cfg = load_config("config/pocket_wave3.yaml")
    feats = grid.features_dir(cfg, "pocket_dark")
    tfup = grid.train_inputs(cfg, "pocket_dark", "tfup", 0, 0)
    assert feats / "train.npy" in tfup and feats / "train.json" in tfup
    tpt = grid.train_inputs(cfg, "pocket_dark", "tpt", 0, 0)
    assert feats / "test_views64_crop0.5.npy" in tpt and feats / "test_views64_crop0.5.json" in tpt
    assert feats / "test_views64_crop0.5.npy" in grid.train_inputs(cfg, "pocket_dark", "tpt_coop", 16, 1)
    mvlpt = grid.train_inputs(cfg, "pocket_dark", "mvlpt", 16, 2)
    stage = grid.multitask_dir(cfg, "mvlpt", 16, 2)
    assert stage == grid.Path("results/pocket_wave3/multitask/mvlpt/16shot/seed2")
    assert stage / "model.pt" in mvlpt and stage / "metrics.json" in mvlpt
    sources = grid.multitask_inputs(cfg, "mvlpt", 16, 2)
    assert grid.fewshot_path(cfg, "pocket_sketch", 16, 2) in sources
    assert set(grid.fewshot_feature_files(cfg, "pocket_blurry", 16, 2)) <= set(sources)
    assert grid.all_datasets(cfg)[-2:] == ["pocket_sketch", "pocket_blurry"]
    assert grid.train_inputs(cfg, "pocket_dark", "coop", 16, 1) == grid.train_inputs(
        load_config("config/pocket_v1.yaml") | {"experiment": "pocket_wave3"}, "pocket_dark", "coop", 16, 1
    )
    # test views under unlabelled: test are the test features themselves; a target's views for transfer
    test_cfg = {**cfg, "unlabelled": "test"}
    assert not [p for p in grid.train_inputs(test_cfg, "pocket_dark", "tfup", 0, 0) if p.name.startswith("train.")]
    target = grid.transfer_inputs(cfg, "pocket_noisy", "tpt_coop", "pocket_dark", 16)
    assert grid.features_dir(cfg, "pocket_noisy") / "test_views64_crop0.5.npy" in target
    # the default experiment plans none of them
    default = load_config("config/config.yaml")
    names = {p.name for p in grid.all_outputs(default)}
    assert not [n for n in names if n.startswith(("train.", "test_views"))] and "multitask" not in str(
        grid.all_outputs(default)
    )


def test_declared_inputs_are_checked_when_the_config_is_read(tmp_path):
    import pytest
    import yaml

    from vlprompt.experiment.config import ConfigError, method_config_hash

    base = yaml.safe_load(open("config/pocket_wave3.yaml"))

    def load(**changes):
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump({**base, **changes}))
        return load_config(path)

    with pytest.raises(ConfigError, match="tfup need.*`unlabelled: train`"):
        load(unlabelled="none")
    with pytest.raises(ConfigError, match="mvlpt start.*`sources`"):
        load(sources=[])
    with pytest.raises(ConfigError, match=r"`sources` must not hold .*'pocket_dark'"):
        load(sources=["pocket_dark", "pocket_sketch"])
    from vlprompt.data.registry import DatasetError

    with pytest.raises(DatasetError, match="unknown dataset 'pocket_nope'"):
        load(sources=["pocket_nope"])
    # the keys behind declared inputs change the hash of the runs that read them, and of no other
    a, b = load(), load(unlabelled="test", sources=["pocket_sketch"])
    assert method_config_hash(a, "tfup", "pocket_dark", 0) != method_config_hash(b, "tfup", "pocket_dark", 0)
    assert method_config_hash(a, "mvlpt", "pocket_dark", 16) != method_config_hash(b, "mvlpt", "pocket_dark", 16)
    assert method_config_hash(a, "coop", "pocket_dark", 16) == method_config_hash(b, "coop", "pocket_dark", 16)
