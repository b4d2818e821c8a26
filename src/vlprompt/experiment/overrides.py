"""Hyperparameter overrides per method, per number of shots and per training dataset (config
``method_overrides``): resolved for a run by :func:`method_settings`, the one place training, transfer
evaluation, the run's hash (``config.method_config_hash``), its record and the report read them.
"""

from __future__ import annotations


class OverridesError(ValueError):
    """A method, dataset, number of shots or hyperparameter in ``method_overrides`` that does not exist, named
    with its place (``config.validate`` raises it as a ConfigError)."""


SCOPES = ("by_shots", "by_dataset")


def _shots_key(key, where: str) -> int:
    """A ``by_shots`` key as an int (YAML gives 16, JSON and ``--config`` give "16")."""
    try:
        shots = int(key)
    except (TypeError, ValueError):
        shots = 0
    if shots < 1 or str(shots) != str(key).strip():
        raise OverridesError(f"{where}: by_shots keys are numbers of shots (positive integers), got {key!r}")
    return shots


def _by_shots(block: dict, shots: int | None, where: str) -> dict:
    for key, values in (block.get("by_shots") or {}).items():
        if shots is not None and _shots_key(key, where) == shots:
            return values or {}
    return {}


def _own(block: dict) -> dict:
    """A block's hyperparameters, without its nested scopes."""
    return {k: v for k, v in (block or {}).items() if k not in SCOPES}


def method_settings(cfg: dict, method: str, dataset: str | None = None, shots: int | None = None) -> dict:
    """The hyperparameter overrides in force for a run of ``method`` trained on ``dataset`` with ``shots``.

    ``method_overrides.<method>`` holds hyperparameters for every run, and two nested scopes::

        coop:
          epochs: 200                       # every run
          by_shots: {1: {epochs: 50}}       # runs with 1 shot
          by_dataset:
            ImageNet:
              epochs: 50                    # runs on ImageNet
              by_shots: {16: {...}}         # runs on ImageNet with 16 shots

    Precedence, later wins: the method's preset < the method's block < its ``by_shots`` entry < its
    ``by_dataset`` entry < that entry's ``by_shots`` entry (the more specific scope wins; a dataset's
    setting beats a shots setting). The one place every consumer reads: training, transfer evaluation,
    the run's hash (``config.method_config_hash``), its recorded hyperparameters and the report.
    """
    entry = (cfg.get("method_overrides") or {}).get(method) or {}
    where = f"method_overrides.{method}"
    out = {**_own(entry), **_own(_by_shots(entry, shots, where))}
    if dataset is not None:
        block = (entry.get("by_dataset") or {}).get(dataset) or {}
        out.update({**_own(block), **_own(_by_shots(block, shots, f"{where}.by_dataset.{dataset}"))})
    return out


def check_method_overrides(cfg: dict) -> None:
    """Every method, dataset, number of shots and hyperparameter named in ``method_overrides`` exists, and
    every run of the grid gets a valid Config; else an OverridesError naming the place."""
    from vlprompt.data.registry import DatasetError, get_dataset
    from vlprompt.methods import MethodError, get_method

    for method, entry in (cfg.get("method_overrides") or {}).items():
        where = f"method_overrides.{method}"
        try:
            cls = get_method(method)
        except MethodError as err:
            raise OverridesError(f"{where}: {err}") from None
        blocks = [(where, entry or {})]
        for dataset, block in ((entry or {}).get("by_dataset") or {}).items():
            try:
                get_dataset(dataset, cfg)
            except DatasetError as err:
                raise OverridesError(f"{where}.by_dataset: {err}") from None
            blocks.append((f"{where}.by_dataset.{dataset}", block or {}))
        for place, block in list(blocks):
            blocks += [
                (f"{place}.by_shots.{k}", v or {})
                for k, v in (block.get("by_shots") or {}).items()
                if _shots_key(k, place)
            ]
        for place, block in blocks:
            try:
                cls.make_config(_own(block))
            except MethodError as err:
                raise OverridesError(f"{place}: {err}") from None
        for dataset in cfg.get("datasets", []):
            for shots in cfg.get("shots", []):
                try:
                    cls.make_config(method_settings(cfg, method, dataset, shots))
                except MethodError as err:
                    raise OverridesError(f"{where} for {dataset}, {shots} shots: {err}") from None


def override_rows(cfg: dict) -> list[tuple[str, str, dict]]:
    """(method, scope, hyperparameters) of every override block that applies to the experiment's methods,
    datasets and shots, in precedence order per method (for the report's provenance)."""
    rows = []
    for method in cfg.get("methods", []):
        entry = (cfg.get("method_overrides") or {}).get(method) or {}
        scopes = [("every run", entry)]
        scopes += [
            (f"{k} shots", v) for k, v in (entry.get("by_shots") or {}).items() if int(k) in cfg.get("shots", [])
        ]
        for dataset, block in (entry.get("by_dataset") or {}).items():
            if dataset in cfg.get("datasets", []):
                scopes.append((dataset, block or {}))
                scopes += [
                    (f"{dataset}, {k} shots", v)
                    for k, v in ((block or {}).get("by_shots") or {}).items()
                    if int(k) in cfg.get("shots", [])
                ]
        rows += [(method, scope, _own(block)) for scope, block in scopes if _own(block)]
    return rows
