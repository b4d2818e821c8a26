"""Where every artefact lives and which runs an experiment needs: pure functions the DAG calls.

Two kinds of artefacts, two kinds of paths:

- **Shared** by every experiment that needs them, and keyed by everything that defines their content, so
  two experiments never write one path with different content: a prepared dataset
  (``<data>/<dataset key>/``, see :func:`vlprompt.data.registry.dataset_key`), its base/new classes and
  its few-shot subsets per (shots, seed) (``<results>/splits/<dataset key>/``), its frozen features per
  backbone (``<results>/features/<backbone key>/<dataset key>/``: the test images, and per few-shot
  subset its validation images and augmented training views under the view transform's key). A new
  shots grid adds files; it never rewrites one.
  Two parts of a bank exist only for experiments with a method that declares it reads them
  (``Method.reads_unlabelled``, ``reads_test_views``): the whole training split (``train``, the unlabelled images
  of the config's ``unlabelled: train``) and the test images in V views (``test_views<V>_crop<s>``, view 0 the
  original, keyed by the views and their crop scale).
- **Owned** by one experiment, under ``<results>/<experiment>/``: its runs, spelled out in their path as
  CoOp does (``{dataset}/{method}/{shots}shot/seed{seed}``), its tables, logs and resolved config, and the
  multitask prompts of methods that start from one (``reads_multitask_prompt``:
  ``multitask/{method}/{shots}shot/seed{seed}/``, trained on the config's ``sources``). Under the
  domain_adaptation protocol a run belongs to a (source, target) pair:
  ``adapt/{source}/{target}/{method}/{shots}shot/seed{seed}/`` (:func:`adaptation_runs`).

The path patterns double as Snakemake wildcard patterns.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from vlprompt.experiment.config import backbone_key, method_config_hash, method_settings, stage_hash

DATA = "{data}/{dkey}"
CLASSES = "{results}/splits/{dkey}/classes.json"
FEWSHOT = "{results}/splits/{dkey}/shot{shots}_seed{seed}.json"
FEATURES = "{results}/features/{backbone}/{dkey}"  # test.npy/.json, val.npy/.json (the whole validation split)
# per few-shot subset: <stem>.train.npy/.json (V augmented views), .plain (un-augmented), .val (its val images)
FEWSHOT_FEATURES = FEATURES + "/{views}/shot{shots}_seed{seed}"
TEST_VIEWS = FEATURES + "/test_views{views}_crop{crop}"  # .npy (V, N, D) and .json: V views of every test image
# .npy (G, N, D) and .json: G views of every test image drawn by a generator (DiffTPT's image variations)
TEST_GENERATED = FEATURES + "/test_generated{views}_{generator}"
RUN = "{results}/{experiment}/runs/{dataset}/{method}/{shots}shot/seed{seed}"
MULTITASK = "{results}/{experiment}/multitask/{method}/{shots}shot/seed{seed}"  # model.pt (the prompt), metrics.json
MULTITASK_FILES = ("metrics.json", "model.pt")
TRANSFER = RUN + "/transfer/{target}.json"
OOD = RUN + "/ood/{oodset}.json"  # protocol ood: the run's model scored on one OOD set against its ID test images
ADAPT = "{results}/{experiment}/adapt/{source}/{target}/{method}/{shots}shot/seed{seed}"  # domain_adaptation
# per image, the mean and std of every block's tokens of the image tower (vlprompt.clip.layer_statistics): test.npy,
# train.npy (N, 2·L·W); per few-shot subset <stem>.train.npy (V, N, 2·L·W) and .val.npy, as the feature bank's
LAYER_STATISTICS = "{results}/layer_statistics/{backbone}/{dkey}/{blocks}"
FEWSHOT_LAYER_STATISTICS = LAYER_STATISTICS + "/{views}/shot{shots}_seed{seed}"
SUMMARY = "{results}/{experiment}/summary.csv"
STATS = "{results}/{experiment}/stats.csv"
REPORT = "{reports}/{experiment}"
RUN_FILES = ("metrics.json", "model.pt")


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

    if cfg["protocol"] == "domain_adaptation":  # its runs belong to (source, target) pairs: adaptation_runs
        return []
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
    """Training datasets, transfer targets and multitask sources: every dataset the experiment prepares."""
    targets = transfer_targets(cfg) + [t for _, t in adaptation_pairs(cfg)]
    return list(dict.fromkeys(cfg["datasets"] + targets + multitask_sources(cfg) + ood_datasets(cfg)))


def multitask_sources(cfg: dict) -> list[str]:
    """The config's ``sources`` when a method of the experiment starts from a multitask prompt, else none."""
    from vlprompt.methods import get_method

    return list(cfg.get("sources", [])) if any(get_method(m).reads_multitask_prompt for m in cfg["methods"]) else []


def dataset_keys(cfg: dict) -> dict[str, str]:
    """``{dataset key: dataset name}`` for every dataset of the experiment (the DAG's ``dkey`` wildcard)."""
    from vlprompt.data.registry import dataset_key

    return {dataset_key(cfg, name): name for name in all_datasets(cfg)}


def dataset_key(cfg: dict, name: str) -> str:
    from vlprompt.data.registry import dataset_key as key

    return key(cfg, name)


def transfer_targets(cfg: dict) -> list[str]:
    return list(cfg.get("targets", [])) if cfg["protocol"] in ("crossdataset", "domain_generalization") else []


def transfer_paths(cfg: dict) -> list[Path]:
    """Metrics of every trained model evaluated on every transfer target."""
    return [
        Path(TRANSFER.format(results=cfg["results_root"], experiment=cfg["experiment"], target=t, **run.wildcards()))
        for run in runs(cfg)
        for t in transfer_targets(cfg)
    ]


def split_file(cfg: dict, dataset: str) -> Path:
    """The prepared dataset's split file (``split_zhou_<name>.json``), written last by ``prepare``."""
    from vlprompt.data.registry import split_path

    return split_path(cfg, dataset)


def fewshot_path(cfg: dict, dataset: str, shots: int, seed: int) -> Path:
    return Path(FEWSHOT.format(results=cfg["results_root"], dkey=dataset_key(cfg, dataset), shots=shots, seed=seed))


def classes_path(cfg: dict, dataset: str) -> Path:
    return Path(CLASSES.format(results=cfg["results_root"], dkey=dataset_key(cfg, dataset)))


def features_dir(cfg: dict, dataset: str) -> Path:
    return Path(
        FEATURES.format(results=cfg["results_root"], backbone=backbone_key(cfg), dkey=dataset_key(cfg, dataset))
    )


def views_key(cfg: dict) -> str:
    """The training-view transform's identity: views per image, crop scale, augmentation format."""
    from vlprompt.clip.features import FORMAT

    f = cfg["features"]
    return f"views{f['train_views']}_crop{f['crop_scale_min']:g}_f{FORMAT}"


def fewshot_features(cfg: dict, dataset: str, shots: int, seed: int) -> Path:
    """Stem of a few-shot subset's features: ``<stem>.train.npy`` (V, N, D) and ``<stem>.val.npy`` (N, D)."""
    return Path(
        FEWSHOT_FEATURES.format(
            results=cfg["results_root"],
            backbone=backbone_key(cfg),
            dkey=dataset_key(cfg, dataset),
            views=views_key(cfg),
            shots=shots,
            seed=seed,
        )
    )


FEWSHOT_PARTS = ("train", "plain", "val")  # augmented views, un-augmented training images, validation images
EVAL_PARTS = ("test", "val")  # every test image, the whole validation split


def fewshot_feature_files(cfg: dict, dataset: str, shots: int, seed: int) -> list[Path]:
    stem = fewshot_features(cfg, dataset, shots, seed)
    return [Path(f"{stem}.{part}.{ext}") for part in FEWSHOT_PARTS for ext in ("npy", "json")]


def eval_feature_files(cfg: dict, dataset: str) -> list[Path]:
    feats = features_dir(cfg, dataset)
    return [feats / f"{part}.{ext}" for part in EVAL_PARTS for ext in ("npy", "json")]


def summary_path(cfg: dict) -> Path:
    return Path(SUMMARY.format(results=cfg["results_root"], experiment=cfg["experiment"]))


def stats_path(cfg: dict) -> Path:
    return Path(STATS.format(results=cfg["results_root"], experiment=cfg["experiment"]))


def report_dir(cfg: dict) -> Path:
    return Path(REPORT.format(reports=cfg["reports_root"], experiment=cfg["experiment"]))


def unlabelled_feature_files(cfg: dict, dataset: str) -> list[Path]:
    """The features of ``dataset``'s unlabelled images (config ``unlabelled``): its training split (``train``) or
    its test images (``test``); none when the option is off."""
    split = cfg.get("unlabelled", "none")
    if split == "none":
        return []
    return [features_dir(cfg, dataset) / f"{split}.{ext}" for ext in ("npy", "json")]


def test_views_stem(cfg: dict, dataset: str, method: str, shots: int | str, trained_on: str | None = None) -> Path:
    """Stem of the test views a ``reads_test_views`` method reads on ``dataset``: its Config's ``views`` (the
    original and views - 1 augmented views) and ``view_crop_scale_min``, as its settings for the run (trained on
    ``trained_on``, default ``dataset``, with ``shots``) give them."""
    from vlprompt.experiment.config import method_settings
    from vlprompt.methods import get_method

    mcfg = get_method(method).make_config(method_settings(cfg, method, trained_on or dataset, int(shots)))
    return Path(
        TEST_VIEWS.format(
            results=cfg["results_root"],
            backbone=backbone_key(cfg),
            dkey=dataset_key(cfg, dataset),
            views=mcfg.views,
            crop=f"{mcfg.view_crop_scale_min:g}",
        )
    )


def generator_key(wrong_class_rate: float) -> str:
    """The name of the pocket renderer as an image-variation model with this rate of wrong-class views."""
    return f"pocketvar-p{wrong_class_rate:g}"


def generated_views_generator(cfg: dict, dataset: str, wrong_class_rate: float) -> str:
    """The generator of ``dataset``'s generated test views: ``folder-<key>`` where the config names a folder of
    generated views for it (``generated_images.<dataset>.by_image``; the key a hash of its listing,
    :func:`vlprompt.data.generated_images.folder_key`), else the pocket renderer with this rate of wrong-class views."""
    from vlprompt.data import generated_images

    found = generated_images.folder(cfg, dataset, "by_image")
    if found is not None:
        return f"folder-{generated_images.folder_key(found)}"
    return generator_key(wrong_class_rate)


def generated_views_stem(
    cfg: dict, dataset: str, method: str, shots: int | str, trained_on: str | None = None
) -> Path | None:
    """Stem of the generated test views a ``reads_test_views`` method reads besides its augmented ones (its
    Config's ``generated_views`` and ``wrong_class_rate``; the folder of ``dataset``'s generated views where the
    config names one); None when it reads none."""
    from vlprompt.experiment.config import method_settings
    from vlprompt.methods import get_method

    mcfg = get_method(method).make_config(method_settings(cfg, method, trained_on or dataset, int(shots)))
    if not getattr(mcfg, "generated_views", 0):
        return None
    return Path(
        TEST_GENERATED.format(
            results=cfg["results_root"],
            backbone=backbone_key(cfg),
            dkey=dataset_key(cfg, dataset),
            views=mcfg.generated_views,
            generator=generated_views_generator(cfg, dataset, mcfg.wrong_class_rate),
        )
    )


def multitask_dir(cfg: dict, method: str, shots: int | str, seed: int | str) -> Path:
    return Path(
        MULTITASK.format(
            results=cfg["results_root"], experiment=cfg["experiment"], method=method, shots=shots, seed=seed
        )
    )


def multitask_inputs(cfg: dict, method: str, shots: int | str, seed: int | str) -> list[Path]:
    """What the multitask stage reads: every source's classes, few-shot subset and its features."""
    paths = []
    if needs_gpu(method):  # the image loop (PVP): the sources' images, classes and few-shot subsets
        for source in multitask_sources(cfg):
            paths += [split_file(cfg, source), classes_path(cfg, source)]
            paths.append(fewshot_path(cfg, source, int(shots), int(seed)))
        return paths
    for source in multitask_sources(cfg):
        paths += [
            classes_path(cfg, source),
            fewshot_path(cfg, source, int(shots), int(seed)),
            *fewshot_feature_files(cfg, source, int(shots), int(seed)),
        ]
    return paths


def declared_inputs(
    cfg: dict, dataset: str, method: str, shots: int | str, seed: int | str | None, trained_on: str | None = None
) -> list[Path]:
    """The further inputs a method declares (``Method.reads_*``) for a run on ``dataset``, or for evaluating on
    ``dataset`` a model trained on ``trained_on`` (``seed`` None: no multitask prompt)."""
    from vlprompt.methods import get_method

    cls = get_method(method)
    paths = []
    if cls.reads_unlabelled:
        paths += unlabelled_feature_files(cfg, dataset)
    if cls.reads_test_views:
        stem = test_views_stem(cfg, dataset, method, shots, trained_on)
        paths += [Path(f"{stem}.npy"), Path(f"{stem}.json")]
        generated = generated_views_stem(cfg, dataset, method, shots, trained_on)
        if generated is not None:
            paths += [Path(f"{generated}.npy"), Path(f"{generated}.json")]
    if cls.reads_multitask_prompt and int(shots) > 0 and seed is not None:
        mcfg = cls.make_config(method_settings(cfg, method, dataset, int(shots)))
        for stage_seed in cls.multitask_seeds(mcfg, int(seed)):
            paths += [multitask_dir(cfg, method, shots, stage_seed) / name for name in MULTITASK_FILES]
    if cls.reads_teacher and seed is not None:
        from vlprompt.experiment.teacher import teacher_files, teacher_logits_files

        paths += teacher_files(cfg, trained_on or dataset, shots, seed)
        paths += teacher_logits_files(cfg, trained_on or dataset, shots, seed)  # teacher.logits: bank
    if cls.reads_meta_prompt and int(shots) > 0 and seed is not None and trained_on is None:
        from vlprompt.experiment.meta_prompt import meta_files

        paths += meta_files(cfg, method, dataset, shots)
    if cls.reads_boosting_prompts and seed is not None:
        paths.append(
            Run(trained_on or dataset, cls.reads_boosting_prompts, int(shots), int(seed)).dir(cfg) / "model.pt"
        )
    return paths


def needs_gpu(method: str) -> int:
    """1 for methods with the image encoder in the loop (GPU jobs on a cluster), else 0."""
    from vlprompt.methods import get_method

    return int(get_method(method).inputs == "images")


def train_inputs(cfg: dict, dataset: str, method: str, shots: int | str, seed: int | str) -> list[Path]:
    """Files a training run reads: the feature bank, or the images for encoder-in-the-loop methods (and the trained
    teacher, or the boosting prompts' run, of a distillation method)."""
    from vlprompt.methods import get_method

    shots, seed = int(shots), int(seed)
    inputs = [classes_path(cfg, dataset)]
    if shots > 0:
        inputs.append(fewshot_path(cfg, dataset, shots, seed))
    if needs_gpu(method):
        cls = get_method(method)
        distils = cls.reads_teacher or cls.reads_boosting_prompts or cls.reads_multitask_prompt
        return [
            split_file(cfg, dataset),
            *inputs,
            *(declared_inputs(cfg, dataset, method, shots, seed) if distils else []),
        ]
    inputs += eval_feature_files(cfg, dataset)
    if shots > 0:
        inputs += fewshot_feature_files(cfg, dataset, shots, seed)
    return list(dict.fromkeys(inputs + declared_inputs(cfg, dataset, method, shots, seed)))


def group_runs(cfg: dict) -> list[int]:
    """The seeds one grouped training job runs (``train.job_granularity: shots``: one job per method ×
    dataset × shots): a new shots setting adds jobs and re-runs none of the others."""
    return list(cfg["seeds"])


def group_inputs(cfg: dict, dataset: str, method: str, shots: int | str) -> list[Path]:
    """Inputs of a grouped training job: the union of its runs' inputs."""
    paths: dict[Path, None] = {}
    for seed in group_runs(cfg):
        paths.update(dict.fromkeys(train_inputs(cfg, dataset, method, shots, seed)))
    return list(paths)


def transfer_inputs(
    cfg: dict, target: str, method: str, dataset: str | None = None, shots: int | str = 0
) -> list[Path]:
    """What evaluating a model trained on ``dataset`` with ``shots`` on ``target`` reads besides the model: the
    target's test features or images, and what the method declares it reads there (unlabelled images, test views)."""
    if needs_gpu(method):
        return [split_file(cfg, target), classes_path(cfg, target)]
    inputs = [*eval_feature_files(cfg, target), classes_path(cfg, target)]
    return list(dict.fromkeys(inputs + declared_inputs(cfg, target, method, shots, None, dataset)))


def all_outputs(cfg: dict) -> list[Path]:
    """Every artefact the experiment needs, shared and owned, up to its tables.

    ``rule all`` asks for all of them, not only for the report: Snakemake does not re-create a missing
    intermediate file whose consumers are up to date, so without this a deleted feature bank or run
    would stay deleted (and a stale row would stay in ``summary.csv``).
    """
    paths: dict[Path, None] = {}
    for run in runs(cfg):
        paths.update(dict.fromkeys(train_inputs(cfg, run.dataset, run.method, run.shots, run.seed)))
        paths.update(dict.fromkeys(run.dir(cfg) / name for name in RUN_FILES))
    for run in runs(cfg):
        for target in transfer_targets(cfg):
            paths.update(dict.fromkeys(transfer_inputs(cfg, target, run.method, run.dataset, run.shots)))
    paths.update(dict.fromkeys(transfer_paths(cfg)))
    for run in runs(cfg):
        for oodset in ood_sets(cfg):
            paths.update(dict.fromkeys(ood_inputs(cfg, oodset.name, run.method, run.dataset, run.shots)))
    paths.update(dict.fromkeys(ood_paths(cfg)))
    for arun in adaptation_runs(cfg):
        paths.update(dict.fromkeys(adaptation_inputs(cfg, **arun.wildcards())))
        paths.update(dict.fromkeys(arun.dir(cfg) / name for name in RUN_FILES))
    paths.update(dict.fromkeys([summary_path(cfg), stats_path(cfg), summary_path(cfg).with_name("metrics.json")]))
    return list(paths)


@dataclasses.dataclass(frozen=True)
class OodSet:
    """One OOD set of the ``ood`` protocol: ``classes`` (all, new or base) of ``dataset``, in ``group`` near or
    far. Its ``name`` (the DAG's ``oodset`` wildcard) is the dataset's, with ``.new`` or ``.base`` for a part."""

    dataset: str
    classes: str
    group: str

    @property
    def name(self) -> str:
        return self.dataset if self.classes == "all" else f"{self.dataset}.{self.classes}"


def ood_sets(cfg: dict) -> list[OodSet]:
    """The config's ``ood.near`` then ``ood.far`` sets under protocol ``ood``; none under the other protocols."""
    if cfg["protocol"] != "ood":
        return []
    block = cfg.get("ood") or {}
    return [
        OodSet(entry["dataset"], entry.get("classes", "all"), group)
        for group in ("near", "far")
        for entry in block.get(group, [])
    ]


def ood_set(cfg: dict, name: str) -> OodSet:
    found = [s for s in ood_sets(cfg) if s.name == name]
    if not found:
        raise KeyError(f"no OOD set {name!r} in the config; its sets: {[s.name for s in ood_sets(cfg)]}")
    return found[0]


def ood_datasets(cfg: dict) -> list[str]:
    return list(dict.fromkeys(s.dataset for s in ood_sets(cfg)))


def ood_path(cfg: dict, run: Run, oodset: str) -> Path:
    return Path(OOD.format(results=cfg["results_root"], experiment=cfg["experiment"], oodset=oodset, **run.wildcards()))


def ood_paths(cfg: dict) -> list[Path]:
    """Every run scored on every OOD set."""
    return [ood_path(cfg, run, s.name) for run in runs(cfg) for s in ood_sets(cfg)]


def ood_inputs(cfg: dict, oodset: str, method: str, dataset: str, shots: int | str = 0) -> list[Path]:
    """What scoring a run on ``oodset`` reads besides the model: the ID dataset's and the OOD set's test features
    and classes, and what the method declares it reads on each."""
    target = ood_set(cfg, oodset).dataset
    inputs = [*eval_feature_files(cfg, dataset), classes_path(cfg, dataset)]
    inputs += [*eval_feature_files(cfg, target), classes_path(cfg, target)]
    extra = declared_inputs(cfg, dataset, method, shots, None)
    extra += declared_inputs(cfg, target, method, shots, None, dataset)
    return list(dict.fromkeys(inputs + extra))


# --- domain_adaptation: one run per method x (source, target) pair x shots x seed --------------------------------


def adaptation_pairs(cfg: dict) -> list[tuple[str, str]]:
    """The config's ``pairs`` as (source, target) under the domain_adaptation protocol, else none."""
    return [(s, t) for s, t in cfg.get("pairs", [])] if cfg["protocol"] == "domain_adaptation" else []


def pair_label(source: str, target: str) -> str:
    """A pair's name in the tables (the ``dataset`` of its runs' metrics), as the UDA papers write Ar→Cl."""
    return f"{source}→{target}"


@dataclasses.dataclass(frozen=True)
class AdaptationRun:
    source: str
    target: str
    method: str
    shots: int  # 0 for methods that need no training data (zero-shot)
    seed: int

    def dir(self, cfg: dict) -> Path:
        return Path(ADAPT.format(results=cfg["results_root"], experiment=cfg["experiment"], **self.wildcards()))

    def wildcards(self) -> dict:
        return dataclasses.asdict(self)


def adaptation_runs(cfg: dict) -> list[AdaptationRun]:
    """Every run of a domain_adaptation experiment; zero-shot methods once per pair."""
    from vlprompt.methods import get_method

    out = []
    for method in cfg["methods"]:
        grid = [(k, s) for k in cfg["shots"] for s in cfg["seeds"]] if get_method(method).needs_training else [(0, 0)]
        out += [AdaptationRun(src, tgt, method, k, s) for src, tgt in adaptation_pairs(cfg) for k, s in grid]
    return out


def adaptation_paths(cfg: dict) -> list[Path]:
    return [run.dir(cfg) / "metrics.json" for run in adaptation_runs(cfg)]


def adaptation_inputs(
    cfg: dict, source: str, target: str, method: str, shots: int | str, seed: int | str
) -> list[Path]:
    """What a run of ``method`` on the pair reads: the source's classes, few-shot subset and features (labelled),
    the target's classes and test features, and what the method declares it reads on the target (its training
    split's features without labels for ``reads_unlabelled``, test views)."""
    from vlprompt.methods import get_method

    shots, seed = int(shots), int(seed)
    inputs = [classes_path(cfg, source), *eval_feature_files(cfg, source)]
    if shots > 0:
        inputs += [fewshot_path(cfg, source, shots, seed), *fewshot_feature_files(cfg, source, shots, seed)]
    inputs += transfer_inputs(cfg, target, method, source, shots)
    cls = get_method(method)
    if cls.reads_layer_statistics:  # the source's few-shot images and the target's test (and unlabelled) images
        if shots > 0:
            inputs += fewshot_layer_statistics_files(cfg, source, shots, seed)
        inputs += layer_statistics_files(cfg, target, "test")
        if cls.reads_unlabelled:
            inputs += layer_statistics_files(cfg, target, "train")
    return list(dict.fromkeys(inputs))


# --- layer-statistics banks (methods with ``reads_layer_statistics``: AD-CLIP) ------------------------------------


def layer_statistics_dir(cfg: dict, dataset: str) -> Path:
    """The dataset's layer-statistics bank, keyed by the backbone, the prepared dataset and the blocks it holds."""
    from vlprompt.clip.layer_statistics import BLOCKS

    return Path(
        LAYER_STATISTICS.format(
            results=cfg["results_root"], backbone=backbone_key(cfg), dkey=dataset_key(cfg, dataset), blocks=BLOCKS
        )
    )


def layer_statistics_files(cfg: dict, dataset: str, part: str) -> list[Path]:
    """``part`` test (every test image) or train (the whole training split): its ``.npy`` and ``.json``."""
    return [layer_statistics_dir(cfg, dataset) / f"{part}.{ext}" for ext in ("npy", "json")]


def fewshot_layer_statistics(cfg: dict, dataset: str, shots: int, seed: int) -> Path:
    """Stem of a few-shot subset's statistics: ``<stem>.train`` (its training views), ``<stem>.val``."""
    return layer_statistics_dir(cfg, dataset) / views_key(cfg) / f"shot{shots}_seed{seed}"


def fewshot_layer_statistics_files(cfg: dict, dataset: str, shots: int, seed: int) -> list[Path]:
    stem = fewshot_layer_statistics(cfg, dataset, shots, seed)
    return [Path(f"{stem}.{part}.{ext}") for part in ("train", "val") for ext in ("npy", "json")]


__all__ = [
    "AdaptationRun",
    "Run",
    "adaptation_inputs",
    "adaptation_pairs",
    "adaptation_paths",
    "adaptation_runs",
    "all_datasets",
    "all_outputs",
    "backbone_key",
    "dataset_key",
    "dataset_keys",
    "fewshot_layer_statistics",
    "fewshot_layer_statistics_files",
    "generated_views_stem",
    "generated_views_generator",
    "generator_key",
    "group_inputs",
    "group_runs",
    "layer_statistics_dir",
    "layer_statistics_files",
    "method_config_hash",
    "multitask_dir",
    "multitask_inputs",
    "multitask_sources",
    "needs_gpu",
    "ood_inputs",
    "ood_paths",
    "ood_sets",
    "runs",
    "stage_hash",
    "test_views_stem",
    "train_inputs",
    "transfer_paths",
    "unlabelled_feature_files",
    "views_key",
]
