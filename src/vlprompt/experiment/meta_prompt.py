"""The meta stage of the methods that start from a meta-learned prompt (``Method.reads_meta_prompt``: GRAM): where
it lives and what defines it.

A meta stage learns on the backbone's image-text pretraining data (on the pocket world: the pocket CLIP's own
pretraining pool, :func:`vlprompt.training.meta_prompt.pretraining_pool`), not on any experiment's dataset, so it
is shared by every experiment, dataset, shots setting and seed that asks for the same one. Its folder is keyed by
everything that defines it: the backbone, the pool's world, the method and its meta settings
(``cls.meta_settings(config)``),

    <results>/meta_prompt/<backbone key>/<method>-<settings hash>/

with ``model.pt`` (the state the runs start from) and ``metrics.json`` (its record). Rule ``train_meta_prompt``
builds it; a run's declared inputs name it (:func:`meta_files`).
"""

from __future__ import annotations

from pathlib import Path

from vlprompt.experiment.config import backbone_key, config_hash, method_settings

META = "{results}/meta_prompt/{bkey}/{mkey}"
META_FILES = ("metrics.json", "model.pt")


def pool_world(cfg: dict) -> str:
    """The pocket world whose pretraining pool a meta stage reads: the config's ``pocket.world``."""
    return str((cfg.get("pocket") or {}).get("world", "v1"))


def meta_key(cfg: dict, method: str, dataset: str | None, shots: int | None) -> str | None:
    """``<method>-<hash>`` of the meta stage a run of ``method`` on ``dataset`` with ``shots`` reads, or None when
    that run reads none (GRAM with CoOp's initialisation and the identity regulator)."""
    from vlprompt.methods import get_method

    cls = get_method(method)
    if not cls.reads_meta_prompt:
        return None
    mcfg = cls.make_config(method_settings(cfg, method, dataset, shots))
    if not cls.needs_meta_stage(mcfg):
        return None
    return f"{method}-{config_hash({'world': pool_world(cfg), 'meta': cls.meta_settings(mcfg)})}"


def meta_dir(cfg: dict, mkey: str) -> Path:
    return Path(META.format(results=cfg["results_root"], bkey=backbone_key(cfg), mkey=mkey))


def meta_files(cfg: dict, method: str, dataset: str | None, shots: int | str | None) -> list[Path]:
    """The meta stage's files a run reads (none when it needs no meta stage)."""
    key = meta_key(cfg, method, dataset, None if shots is None else int(shots))
    return [] if key is None else [meta_dir(cfg, key) / name for name in META_FILES]


def meta_stages(cfg: dict) -> dict[str, tuple[str, str, int]]:
    """``{meta key: (method, dataset, shots)}``: every meta stage the experiment's runs read, each with the first
    run that names it (whose settings the rule trains it with)."""
    from vlprompt.methods import get_method

    out: dict[str, tuple[str, str, int]] = {}
    for method in cfg["methods"]:
        if not get_method(method).reads_meta_prompt:
            continue
        for dataset in cfg["datasets"]:
            for shots in cfg["shots"]:
                key = meta_key(cfg, method, dataset, int(shots))
                if key is not None:
                    out.setdefault(key, (method, dataset, int(shots)))
    return out
