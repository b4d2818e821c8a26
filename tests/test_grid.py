from vlprompt import grid
from vlprompt.config import load_config


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
