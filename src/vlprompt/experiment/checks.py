"""Everything wrong with an experiment config, one line per problem, each naming the key and the fix.

Three kinds of checks, in the order a user meets them:

- :func:`schema_problems`: the JSON Schema (``schemas/config.schema.yaml``) in words: a missing key (what it is
  and what the default experiment sets), an unknown key (the nearest valid name), a wrong type or value (the key
  path, the value, what is allowed). Never the schema itself.
- :func:`name_problems`: names against the registries (datasets, targets, sources, methods, hyperparameters) and
  the inputs the methods declare (``unlabelled``, ``sources``).
- :func:`plan_problems`: what is known when the DAG is planned and would otherwise fail only when a job runs:
  shots against the images per class of a pocket world (its sizes are in the config) or of a real dataset
  already prepared, and methods against the protocol.

:func:`file_problems` is ``python -m vlprompt check-config FILE``: the YAML parse (with line and column) and
then all of the above. The Snakefile runs the same checks on Snakemake's config before it plans anything.
"""

from __future__ import annotations

import difflib
import functools
import json
from pathlib import Path
from typing import Any

import yaml

from vlprompt.experiment.distillation import distilling_methods, teacher_problems
from vlprompt.experiment.schema import fill_defaults, load_schema


def nearest(name: object, choices, n: int = 1) -> list[str]:
    """The valid names closest to ``name`` (difflib, ignoring case), best first; none when nothing is close."""
    by_lower = {str(c).lower(): str(c) for c in choices}
    close = difflib.get_close_matches(str(name).lower(), list(by_lower), n=n, cutoff=0.6)
    return [by_lower[c] for c in close]


def _did_you_mean(name: object, choices) -> str:
    close = nearest(name, choices)
    return f"did you mean {close[0]!r}? " if close else ""


def _show(value: Any, limit: int = 60) -> str:
    """A value as the user wrote it, in YAML's flow style, cut to ``limit`` characters."""
    text = value if isinstance(value, str) and value else None
    if text is None:
        text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
        text = text.removesuffix("\n...").removesuffix("...").strip()
    else:
        text = repr(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _key_path(parts) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


_TYPE_NAMES = {
    "object": "a mapping (key: value)",
    "array": "a list ([a, b])",
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "null": "null",
}


def _type_name(value: Any) -> str:
    for name, kind in (("true or false", bool), ("an integer", int), ("a number", float), ("a string", str)):
        if isinstance(value, kind):
            return name
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return "empty (null)" if value is None else type(value).__name__


def _subschema(schema: dict, parts) -> dict:
    """The schema of the key at ``parts`` (through properties, items and additionalProperties)."""
    node = schema
    for p in parts:
        if not isinstance(node, dict):
            return {}
        if "$ref" in node:
            node = _resolve(schema, node["$ref"])
        if isinstance(p, int):
            node = node.get("items", {})
        elif p in node.get("properties", {}):
            node = node["properties"][p]
        else:
            extra = node.get("additionalProperties")
            node = extra if isinstance(extra, dict) else {}
    if isinstance(node, dict) and "$ref" in node:
        node = _resolve(schema, node["$ref"])
    return node if isinstance(node, dict) else {}


def _resolve(schema: dict, ref: str) -> dict:
    node: Any = schema
    for part in ref.removeprefix("#/").split("/"):
        node = node.get(part, {})
    return node


def _default_experiment_value(schema: dict, parts) -> Any:
    """What the default experiment (config/config.yaml) sets at ``parts``: the schema's ``examples`` of the
    top-level key (tests/test_config_checks.py keeps them equal to config/config.yaml)."""
    top = schema.get("properties", {}).get(parts[0], {}) if parts else {}
    if not top.get("examples"):
        return None
    value = top["examples"][0]
    for p in parts[1:]:
        if not isinstance(value, dict) or p not in value:
            return None
        value = value[p]
    return value


def _describe(sub: dict) -> str:
    text = " ".join(str(sub.get("title") or sub.get("description") or "").split())
    return text if len(text) <= 160 else text[:157] + "..."


def _schema_line(error, schema: dict) -> str:
    """One jsonschema error in words."""
    parts = list(error.absolute_path)
    where = _key_path(parts)
    value = error.instance
    kind = error.validator
    if kind == "required":
        missing = error.message.split("'")[1]
        key = _key_path([*parts, missing])
        what = _describe(_subschema(schema, [*parts, missing]))
        default = _default_experiment_value(schema, [*parts, missing])
        line = f"missing key `{key}`" + (f": {what}" if what else "")
        if default is not None:
            line += f"; the default experiment (config/config.yaml) has `{key}: {_show(default, 120)}`"
        return line + "; add it"
    if kind == "additionalProperties":
        allowed = sorted(_subschema(schema, parts).get("properties", {}))
        extras = [k for k in value if k not in allowed]
        lines = []
        for extra in extras:
            key = _key_path([*parts, extra])
            close = nearest(extra, allowed)
            hint = f"did you mean `{_key_path([*parts, close[0]])}`?" if close else ""
            place = f"under `{where}`" if where else "at the top level"
            lines.append(
                f"unknown key `{key}`; {hint or 'remove it or rename it'} (the keys {place}: {', '.join(allowed)})"
            )
        return "\n".join(lines)
    if kind == "type":
        value_types = error.validator_value
        wanted: list = [value_types] if isinstance(value_types, str) else list(value_types)
        types = " or ".join(_TYPE_NAMES.get(w, w) for w in wanted)
        return f"`{where}` is {_show(value)} ({_type_name(value)}); it must be {types}"
    if kind == "enum":
        choices = error.validator_value
        hint = _did_you_mean(value, choices)
        return f"`{where}` is {_show(value)}; {hint}allowed: {', '.join(map(str, choices))}"
    if kind in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        sign = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}[kind]
        return f"`{where}` is {_show(value)}; it must be {sign} {error.validator_value}"
    if kind == "minItems":
        return f"`{where}` is {_show(value)}; it must list at least {error.validator_value} item(s)"
    if kind == "uniqueItems":
        seen, dup = set(), []
        for item in value:
            key = json.dumps(item, sort_keys=True, default=str)
            if key in seen:
                dup.append(item)
            seen.add(key)
        return f"`{where}` lists {_show(dup)} more than once; list each once"
    if kind == "pattern":
        sub = _subschema(schema, parts)
        if "propertyNames" in error.schema_path:  # the value is a key of the mapping at ``where``
            what = sub.get("propertyNames", {}).get("title") or f"names matching {error.validator_value}"
            return f"`{where}` has the key {_show(value)}; its keys are {what}"
        what = _describe(sub) or f"it must match {error.validator_value}"
        return f"`{where}` is {_show(value)}, which is not allowed: {what}; rename it"
    if kind == "not":
        why = error.validator_value.get("description", "this is not allowed here")
        return f"`{where}`: {why}"
    message = error.message if len(error.message) <= 160 else error.message[:157] + "..."
    return f"`{where or 'the config'}`: {message}"


def schema_problems(cfg: Any) -> list[str]:
    """Every schema violation of ``cfg``, one line each (in the order of the file's keys)."""
    import jsonschema

    if not isinstance(cfg, dict):
        return [f"the config must be a mapping of keys (experiment: ..., methods: ...), not {_type_name(cfg)}"]
    schema = load_schema()
    validator = jsonschema.Draft202012Validator(schema)
    order = {key: i for i, key in enumerate(cfg)}
    errors = sorted(
        validator.iter_errors(cfg),
        key=lambda e: (order.get(e.absolute_path[0], -1) if e.absolute_path else -1, [str(p) for p in e.absolute_path]),
    )
    lines: list[str] = []
    for error in errors:
        for line in _schema_line(error, schema).split("\n"):
            if line not in lines:
                lines.append(line)
    return lines


def _unknown_names(key: str, names, known: list[str], what: str, command: str) -> list[str]:
    lines = []
    for name in names:
        if name not in known:
            listed = f"`python -m vlprompt {command}` lists them"
            hint = _did_you_mean(name, known)
            lines.append(f"`{key}`: unknown {what} {name!r}; " + (f"{hint}({listed})" if hint else listed))
    return lines


def name_problems(cfg: dict) -> list[str]:
    """Names against the registries and the inputs the methods declare; ``cfg`` has passed the schema and has
    its defaults."""
    from vlprompt.data import user
    from vlprompt.data.registry import list_datasets
    from vlprompt.experiment.overrides import method_override_problems
    from vlprompt.methods import get_method, list_methods

    datasets, methods = list_datasets() + sorted(user.entries(cfg)), list_methods()
    lines = []
    for key in ("datasets", "targets", "sources"):
        lines += _unknown_names(key, cfg.get(key) or [], datasets, "dataset", "datasets")
    for key in ("allow_new_split", "split_files", "files"):  # a typo here would silently do nothing
        lines += _unknown_names(
            f"download.{key}", cfg["download"][key], list_datasets("real"), "real dataset", "datasets"
        )
    lines += _unknown_names("methods", cfg["methods"], methods, "method", "methods")
    stats = cfg.get("stats", {})
    for key in ("reference_methods", "methods"):
        lines += _unknown_names(f"stats.{key}", stats.get(key) or [], methods, "method", "methods")
    if cfg["protocol"] in ("crossdataset", "domain_generalization") and not cfg.get("targets"):
        lines.append(
            f"protocol {cfg['protocol']!r} needs `targets`: the datasets to evaluate the trained models "
            "on; list them, or use protocol fewshot or base2new"
        )
    lines += adaptation_problems(cfg, datasets, methods)
    lines += _unknown_names("generated_images", cfg.get("generated_images") or {}, datasets, "dataset", "datasets")
    known = [m for m in cfg["methods"] if m in methods]
    if cfg["protocol"] == "ood":
        lines += ood_problems(cfg, datasets, known)
    needing = [m for m in known if get_method(m).reads_unlabelled]
    if needing and cfg.get("unlabelled", "none") == "none":
        lines.append(
            f"{', '.join(needing)} need(s) the target's unlabelled images: set `unlabelled: train` (the "
            "training split without labels) or `unlabelled: test` (transductive), or drop the method"
        )
    statistics = [m for m in known if get_method(m).reads_layer_statistics]
    if statistics and cfg["protocol"] != "domain_adaptation":
        lines.append(
            f"`methods`: {', '.join(statistics)} adapt(s) a labelled source to an unlabelled target and run(s) "
            "under protocol domain_adaptation only; use that protocol with `pairs`, or drop the method"
        )
    multitask = [m for m in known if get_method(m).reads_multitask_prompt]
    if multitask and not cfg.get("sources"):
        lines.append(
            f"{', '.join(multitask)} start(s) from a multitask prompt: list its source datasets under "
            "`sources` (datasets other than `datasets` and `targets`)"
        )
    lines += teacher_problems(cfg, distilling_methods({**cfg, "methods": known}))
    overlap = sorted(set(cfg.get("sources") or []) & (set(cfg["datasets"]) | set(cfg.get("targets") or [])))
    if overlap:
        lines.append(
            f"`sources` must not hold a dataset that is trained on or evaluated: {overlap}; remove it from `sources`"
        )
    if not lines:  # the overrides are checked against every run of the grid: only with valid names
        lines += method_override_problems(cfg)
    return lines


def adaptation_problems(cfg: dict, datasets: list[str], methods: list[str]) -> list[str]:
    """The domain_adaptation protocol's own keys: its pairs (known datasets, sources among `datasets`, two
    datasets each), the target's training split as the unlabelled images, methods on the feature bank."""
    from vlprompt.methods import get_method

    if cfg["protocol"] != "domain_adaptation":
        return []
    pairs = cfg.get("pairs") or []
    if not pairs:
        return [
            "protocol 'domain_adaptation' needs `pairs`: [[source, target], ...], datasets with the same classes "
            "(every source one of `datasets`); list them, or use protocol domain_generalization"
        ]
    lines = _unknown_names("pairs", dict.fromkeys(d for pair in pairs for d in pair), datasets, "dataset", "datasets")
    for source, target in pairs:
        if source == target:
            lines.append(f"`pairs`: [{source}, {target}] adapts a dataset to itself; give two different datasets")
        elif source not in cfg["datasets"]:
            lines.append(f"`pairs`: the source {source!r} of [{source}, {target}] is not in `datasets`; add it there")
    idle = [d for d in cfg["datasets"] if d not in {s for s, _ in pairs}]
    if idle:
        lines.append(f"`datasets`: {', '.join(idle)} is the source of no pair in `pairs`; remove it or add a pair")
    known = [m for m in cfg["methods"] if m in methods]
    if cfg.get("unlabelled") == "test" and any(get_method(m).reads_unlabelled for m in known):
        lines.append(
            "`unlabelled`: domain_adaptation shows methods the target's training split without labels, never its "
            "test images; set `unlabelled: train`"
        )
    loop = [m for m in known if get_method(m).inputs == "images"]
    if loop:
        lines.append(
            f"`methods`: {', '.join(loop)} train(s) with the image encoder in the loop, which domain_adaptation "
            "does not run (feature-bank methods only); drop them"
        )
    return lines


# --- plan time: what a job would find out only when it runs ----------------------------------------------------


def ood_problems(cfg: dict, datasets: list[str], methods: list[str]) -> list[str]:
    """Protocol ``ood``: OOD sets that exist and are not the ID classes themselves, methods on the feature bank."""
    from vlprompt.methods import get_method

    block = cfg.get("ood") or {}
    sets = [(group, entry) for group in ("near", "far") for entry in block.get(group, [])]
    lines = []
    if not sets:
        lines.append(
            "protocol 'ood' needs OOD sets: list them under `ood.near` and/or `ood.far` "
            "(each {dataset: NAME, classes: all|new|base}), or use protocol fewshot"
        )
    for group, entry in sets:
        lines += _unknown_names(f"ood.{group}", [entry["dataset"]], datasets, "dataset", "datasets")
        classes = entry.get("classes", "all")
        id_classes = block.get("id_classes", "all")
        if entry["dataset"] in cfg["datasets"] and (id_classes == "all" or classes in ("all", "base")):
            lines.append(
                f"ood.{group}: {entry['dataset']} with classes {classes} holds in-distribution classes "
                f"(ood.id_classes: {id_classes}); use classes: new with ood.id_classes: base, or another dataset"
            )
    names = [e["dataset"] if e.get("classes", "all") == "all" else f"{e['dataset']}.{e['classes']}" for _, e in sets]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        lines.append(f"ood: the OOD set(s) {twice} are listed more than once; list each once, in near or far")
    images = [m for m in methods if get_method(m).inputs == "images"]
    if images:
        lines.append(
            f"protocol 'ood' scores methods on the feature bank; {', '.join(images)} put(s) the image encoder in the "
            "loop: drop it (them) from `methods`"
        )
    return lines


def shots_problem(dataset: str, class_name: str, label: int, n: int, shots: int, what: str, pocket: bool) -> str:
    """The line a few-shot draw stops with when a class has fewer images than the shots (the job's
    ``vlprompt fewshot`` and the plan print the same)."""
    fix = "lower `shots`" + (f", raise `pocket.per_class.{what}`" if pocket else "")
    return (
        f"{dataset}: class {class_name!r} (label {label}) has only {n} {what} images, fewer than the {shots} "
        f"shots requested; {fix} or set `fewshot.allow_fewer: true` to keep all of them as Dassl does"
    )


def _fewshot_problems(dataset: str, counts: dict[str, list], shots: list[int], pocket: bool) -> list[str]:
    """``counts``: per split (train, val), ``[(label, class name, images)]`` in the order the draw meets them."""
    lines = []
    for k in sorted(shots, reverse=True):
        for what, need in (("train", k), ("val", min(k, 4))):
            short = [c for c in counts[what] if c[2] < need]
            if short:
                label, name, n = short[0]
                lines.append(shots_problem(dataset, name, label, n, need, what, pocket))
                return lines  # the largest shots setting that fails: one line per dataset
    return lines


def _pocket_counts(cfg: dict, dataset: str) -> dict[str, list]:
    from vlprompt.data.registry import pocket_settings, pocket_world

    per_class = pocket_settings(cfg)["per_class"]
    names = pocket_world(cfg).classnames
    return {what: [(label, name, per_class[what]) for label, name in enumerate(names)] for what in ("train", "val")}


def _counts(split: dict) -> dict[str, list]:
    """Per split (train, val), ``[(label, class name, images)]`` in the order the few-shot draw groups them."""
    out = {}
    for what in ("train", "val"):
        seen: dict[int, list] = {}
        for _, label, name in split[what]:  # first appearance order, as splits._by_label
            seen.setdefault(label, [label, name, 0])[2] += 1
        out[what] = [tuple(v) for v in seen.values()]
    return out


@functools.lru_cache(maxsize=64)
def _split_counts(path: str, size: int, mtime_ns: int) -> dict[str, list]:
    from vlprompt.data.splits import read_split

    return _counts(read_split(path))


def fewshot_problem(cfg: dict, dataset: str, split: dict, shots: int) -> str | None:
    """The job's check before it draws ``shots`` images per class from ``split``: the plan's line, or None."""
    from vlprompt.data.registry import get_dataset

    if cfg["fewshot"].get("allow_fewer"):
        return None
    lines = _fewshot_problems(dataset, _counts(split), [shots], pocket=get_dataset(dataset).kind == "pocket")
    return lines[0] if lines else None


def dataset_fewshot_problems(cfg: dict, dataset: str) -> list[str]:
    """Shots against ``dataset``'s images per class: a pocket dataset's from the config, a real one's from its
    split file once it is prepared (before, nothing is known and nothing is said)."""
    from vlprompt.data.registry import get_dataset, split_path

    if cfg["fewshot"].get("allow_fewer"):
        return []
    if get_dataset(dataset).kind == "pocket":
        return _fewshot_problems(dataset, _pocket_counts(cfg, dataset), cfg["shots"], pocket=True)
    path = split_path(cfg, dataset)
    if not path.is_file():
        return []
    stat = path.stat()
    return _fewshot_problems(dataset, _split_counts(str(path), stat.st_size, stat.st_mtime_ns), cfg["shots"], False)


def _token_counter(tokenizer):
    """``count(text)``: the BPE tokens of ``text`` without SOS and EOS, uncut."""
    from vlprompt.clip.prompting import prompt_length, prompt_name

    return lambda text: prompt_length(tokenizer, prompt_name(text)) - 2


def _bytes(text: str) -> int:
    """An upper bound of ``text``'s tokens: a BPE token holds at least one byte."""
    from vlprompt.clip.prompting import prompt_name

    return len(prompt_name(text).encode())


def class_name_problems(
    cfg: dict, dataset: str, classnames: list[str], methods: list[str], tokenizer=None
) -> list[str]:
    """The first class name of ``dataset`` that no prompt of one of ``methods`` can hold within the text encoder's
    context (each method's :meth:`~vlprompt.methods.base.Method.name_prompt_tokens` besides the name): one line naming
    the class, the tokens needed and available, the methods and the fix; [] when every name fits. The tokenizer is
    loaded only when a name has more bytes than could fit (``tokenizer`` given: the job's)."""
    from vlprompt.clip.backbone import text_context_length, text_tokenizer
    from vlprompt.clip.prompting import too_long
    from vlprompt.experiment.overrides import method_settings
    from vlprompt.methods import get_method

    model = cfg["backbone"]["model"]
    available = text_context_length(model)
    configs = []  # (method, config) for every shots setting the grid runs
    for m in methods:
        cls = get_method(m)
        for shots in dict.fromkeys(cfg.get("shots") or [None]):
            configs.append((m, cls, cls.make_config(method_settings(cfg, m, dataset, shots))))
    bounds = [cls.name_prompt_tokens(c, _bytes) for _, cls, c in configs]
    if not classnames or all(b is None for b in bounds):
        return []
    if max(map(_bytes, classnames)) + max(b for b in bounds if b is not None) <= available:
        return []
    count = _token_counter(tokenizer if tokenizer is not None else text_tokenizer(model))
    overhead: dict[str, tuple[int, Any]] = {}  # method -> (fewest tokens besides the name, its config)
    for m, cls, c in configs:
        n = cls.name_prompt_tokens(c, count)
        if n is not None and (m not in overhead or n < overhead[m][0]):
            overhead[m] = (n, c)
    if not overhead:
        return []
    least = min(n for n, _ in overhead.values())
    for name in classnames:
        if _bytes(name) + least <= available:
            continue
        tokens = count(name)
        failing = [m for m, (n, _) in overhead.items() if tokens + n > available]
        if not failing:
            continue
        needed = tokens + min(overhead[m][0] for m in failing)
        with_ctx = [m for m in failing if overhead[m][0] > 2]
        fewer = ""
        if with_ctx:
            m = with_ctx[0]
            key = "ctx_init" if getattr(overhead[m][1], "ctx_init", None) else "n_ctx"
            fewer = f"`method_overrides.{m}.{key}`" + (": fewer words" if key == "ctx_init" else "")
        line = too_long(name, needed, available, at_least=True, fewer=fewer)
        return [f"{dataset}: {line} (methods: {', '.join(failing)})"]
    return []


def known_classnames(cfg: dict, dataset: str) -> list[str]:
    """The class names the plan knows: a pocket world's (from the config), a dataset's prepared split's; [] else."""
    from vlprompt.data.registry import get_dataset, pocket_world, split_path

    if get_dataset(dataset).kind == "pocket":
        return list(pocket_world(cfg).classnames)
    path = split_path(cfg, dataset)
    if not path.is_file():
        return []
    stat = path.stat()
    counts = _split_counts(str(path), stat.st_size, stat.st_mtime_ns)
    return [name for _, name, _ in sorted({c[0]: c for w in ("train", "val") for c in counts[w]}.values())]


def generated_images_problems(cfg: dict) -> list[str]:
    """The folders of generated images the config names exist and hold images (their keys name artefacts)."""
    from vlprompt.data import generated_images

    lines = []
    for dataset in cfg.get("generated_images") or {}:
        for kind in generated_images.KINDS:
            found = generated_images.folder(cfg, dataset, kind)
            if found is None:
                continue
            if not found.is_dir():
                lines.append(
                    f"generated_images.{dataset}.{kind}: the folder {found} does not exist; create it or correct "
                    "the path"
                )
            elif not generated_images.listing(found):
                lines.append(f"generated_images.{dataset}.{kind}: the folder {found} holds no image; put them there")
    return lines


def plan_problems(cfg: dict) -> list[str]:
    """What the DAG knows when it is planned; ``cfg`` has passed :func:`name_problems`."""
    from vlprompt.methods import get_method

    lines = generated_images_problems(cfg)
    trained = any(get_method(m).needs_training for m in cfg["methods"])
    if trained:
        multitask = any(get_method(m).reads_multitask_prompt for m in cfg["methods"])
        for dataset in dict.fromkeys(cfg["datasets"] + (list(cfg.get("sources", [])) if multitask else [])):
            lines += dataset_fewshot_problems(cfg, dataset)
    for dataset in dict.fromkeys([*cfg["datasets"], *(cfg.get("targets") or [])]):
        lines += class_name_problems(cfg, dataset, known_classnames(cfg, dataset), cfg["methods"])
    if cfg["protocol"] == "crossdataset":
        closed = [m for m in cfg["methods"] if not get_method(m).supports_new_classes]
        if closed:
            lines.append(
                f"`methods`: {', '.join(closed)} cannot classify classes other than those trained on, and "
                "protocol crossdataset evaluates only the `targets`' classes: every result would be empty; drop "
                "them or use protocol fewshot"
            )
    return lines


def config_problems(cfg: Any, plan: bool = True) -> list[str]:
    """Every problem of a config as Snakemake or a YAML file gives it: schema, then names, then (``plan``) what
    the plan knows; a later kind only when the earlier found nothing (it needs the structure they check)."""
    lines = schema_problems(cfg)
    if lines:
        return lines
    cfg = fill_defaults(cfg)
    lines = name_problems(cfg)
    if lines or not plan:
        return lines
    return plan_problems(cfg)


def file_problems(path: str | Path, plan: bool = True) -> list[str]:
    """``check-config``: the YAML (or JSON) file's syntax, with line and column, then :func:`config_problems`;
    each line starts with the file's path."""
    path = Path(path)
    if not path.is_file():
        return [f"{path}: no such file; give the path of an experiment config (config/*.yaml)"]
    try:
        cfg = yaml.safe_load(path.read_text())
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = " ".join(str(err.problem or err.context or "invalid YAML").split())
        opened = err.context_mark if err.problem and err.context else None
        if opened and mark and opened.line != mark.line:  # an unclosed bracket or quote: where it opened
            problem += f" ({' '.join(err.context.split())} at line {opened.line + 1}, column {opened.column + 1})"
        return [
            f"{where}: YAML syntax error: {problem}; fix that line (a list is [a, b], a mapping key: value, "
            "indent with spaces, quote values holding ': ' or '#')"
        ]
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        return [f"{path}: not a YAML file ({' '.join(str(err).split())[:120]}); fix it or give another file"]
    if cfg is None:
        return [
            f"{path}: the file is empty; an experiment config needs experiment, protocol, backbone, datasets, "
            "methods, shots and seeds (see config/config.yaml)"
        ]
    return [f"{path}: {line}" for line in config_problems(cfg, plan=plan)]
