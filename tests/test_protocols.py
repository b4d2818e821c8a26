"""Each of the four protocols runs end to end on a pocket miniature (reduced) through Snakemake."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile")]
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
CONFIGS = ["config.yaml", "pocket_fewshot.yaml", "pocket_crossdataset.yaml", "pocket_domain_generalization.yaml"]


def reduce(cfg: dict) -> dict:
    cfg = dict(cfg)
    cfg["datasets"] = cfg["datasets"][:1]
    if cfg.get("targets"):
        cfg["targets"] = cfg["targets"][:2]
    cfg.update(shots=[2], seeds=[1], methods=["zeroshot", "coop"], method_overrides={"coop": {"epochs": 2}})
    cfg["pocket"] = {"per_class": {"train": 3, "val": 2, "test": 2}}
    cfg["features"] = {**cfg.get("features", {}), "train_views": 2}
    return cfg


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("protocols")


@pytest.mark.slow
@pytest.mark.parametrize("name", CONFIGS)
def test_protocol_runs_end_to_end(workdir, name):
    cfg = reduce(yaml.safe_load((REPO / "config" / name).read_text()))
    (workdir / "config").mkdir(exist_ok=True)
    path = workdir / "config" / f"reduced_{name}"
    path.write_text(yaml.safe_dump(cfg))
    target = f"results/{cfg['experiment']}/summary.csv"
    proc = subprocess.run(
        SNAKEMAKE + ["-d", str(workdir), "--cores", "2", "--configfile", str(path), "--", target],
        capture_output=True,
        text=True,
        env=ENV,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    df = pd.read_csv(workdir / target)
    assert set(df.method) == {"zeroshot", "coop"}
    assert (df.protocol == cfg["protocol"]).all()
    if cfg["protocol"] == "base2new":
        assert df.base_acc.notna().all() and df.new_acc.notna().all()
    else:
        assert df.all_acc.between(0, 100).all() and df.base_acc.isna().all()
    if cfg["protocol"] in ("crossdataset", "domain_generalization"):
        # the source model is evaluated on its own test set and on every target
        assert set(df.dataset) == set(cfg["datasets"] + cfg["targets"])
        assert set(df.train_dataset) == set(cfg["datasets"])
