"""Where every artefact lives and which runs an experiment needs: pure functions the DAG calls.

The run identity is spelled out in its path, as CoOp does (``{dataset}/{method}/{shots}shot/seed{seed}``),
so the path patterns double as Snakemake wildcard patterns.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from vlprompt.config import backbone_key, method_config_hash, stage_hash

FEWSHOT = "{results}/splits/{dataset}/shot{shots}_seed{seed}.json"
CLASSES = "{results}/splits/{dataset}/classes.json"
FEATURES = "{results}/features/{backbone}/{dataset}"
RUN = "{results}/{experiment}/runs/{dataset}/{method}/{shots}shot/seed{seed}"
TRANSFER = RUN + "/transfer/{target}.json"
SUMMARY = "{results}/{experiment}/summary.csv"
STATS = "{results}/{experiment}/stats.csv"
REPORT = "{reports}/{experiment}"


@dataclasses.dataclass(frozen=True)
class Run:
    dataset: str
    method: str
    shots: int  # 0 for methods that need no training data (zero-shot)
    seed: int  # 0 likewise

    def dir(self, cfg: dict) -> Path:
        return Path(RUN.format(results=cfg["results_root"], experiment=cfg["experiment"], **self.wildcards()))

    def wildcards(self) -> dict:
        return {"dataset": self.dataset, "method": self.method, "shots": self.shots, "seed": self.seed}


def runs(cfg: dict) -> list[Run]:
    """Every run of the experiment: method × dataset × shots × seed; zero-shot methods once per dataset."""
    from vlprompt.methods import get_method

    out = []
    for method in cfg["methods"]:
        trained = get_method(method).needs_training
        for dataset in cfg["datasets"]:
            if not trained:
                out.append(Run(dataset, method, 0, 0))
                continue
            for shots in cfg["shots"]:
                for seed in cfg["seeds"]:
                    out.append(Run(dataset, method, shots, seed))
    return out


def all_datasets(cfg: dict) -> list[str]:
    """Training datasets and transfer targets: every dataset the experiment prepares."""
    return list(dict.fromkeys(cfg["datasets"] + transfer_targets(cfg)))


def transfer_targets(cfg: dict) -> list[str]:
    return list(cfg.get("targets", [])) if cfg["protocol"] in ("crossdataset", "domain_generalization") else []


def transfer_paths(cfg: dict) -> list[Path]:
    """Metrics of every trained model evaluated on every transfer target."""
    return [Path(TRANSFER.format(results=cfg["results_root"], experiment=cfg["experiment"], target=t,
                                 **run.wildcards()))
            for run in runs(cfg) for t in transfer_targets(cfg)]


def fewshot_path(cfg: dict, dataset: str, shots: int, seed: int) -> Path:
    return Path(FEWSHOT.format(results=cfg["results_root"], dataset=dataset, shots=shots, seed=seed))


def fewshot_paths(cfg: dict, dataset: str) -> list[Path]:
    return [fewshot_path(cfg, dataset, k, s) for k in cfg["shots"] for s in cfg["seeds"]]


def classes_path(cfg: dict, dataset: str) -> Path:
    return Path(CLASSES.format(results=cfg["results_root"], dataset=dataset))


def features_dir(cfg: dict, dataset: str) -> Path:
    return Path(FEATURES.format(results=cfg["results_root"], backbone=backbone_key(cfg), dataset=dataset))


def summary_path(cfg: dict) -> Path:
    return Path(SUMMARY.format(results=cfg["results_root"], experiment=cfg["experiment"]))


def stats_path(cfg: dict) -> Path:
    return Path(STATS.format(results=cfg["results_root"], experiment=cfg["experiment"]))


def report_dir(cfg: dict) -> Path:
    return Path(REPORT.format(reports=cfg["reports_root"], experiment=cfg["experiment"]))


def needs_gpu(method: str) -> int:
    """1 for methods with the image encoder in the loop (GPU jobs on a cluster), else 0."""
    from vlprompt.methods import get_method

    return int(get_method(method).inputs == "images")



def train_inputs(cfg: dict, dataset: str, method: str, shots: int | str, seed: int | str) -> list[Path]:
    """Files a training run reads: the feature bank, or the images for encoder-in-the-loop methods."""
    from vlprompt.data.registry import split_path

    shots, seed = int(shots), int(seed)
    inputs = [classes_path(cfg, dataset)]
    if shots > 0:
        inputs.append(fewshot_path(cfg, dataset, shots, seed))
    if needs_gpu(method):
        return [split_path(cfg, dataset), *inputs]
    feats = features_dir(cfg, dataset)
    inputs += [feats / "test.npy", feats / "test.json"]
    if shots > 0:
        inputs += [feats / "train_views.npy", feats / "val.npy"]
    return inputs


def group_runs(cfg: dict) -> list[tuple[int, int]]:
    """The (shots, seed) runs one grouped training job holds (``train.job_granularity: dataset``)."""
    return [(k, s) for k in cfg["shots"] for s in cfg["seeds"]]


def group_inputs(cfg: dict, dataset: str, method: str) -> list[Path]:
    """Inputs of a grouped training job: the union of its runs' inputs."""
    paths: dict[Path, None] = {}
    for shots, seed in group_runs(cfg):
        paths.update(dict.fromkeys(train_inputs(cfg, dataset, method, shots, seed)))
    return list(paths)


__all__ = [
    "Run",
    "all_datasets",
    "backbone_key",
    "group_inputs",
    "group_runs",
    "method_config_hash",
    "needs_gpu",
    "runs",
    "stage_hash",
    "train_inputs",
    "transfer_paths",
]
