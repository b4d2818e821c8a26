"""A bad config gets one line per problem, naming the file, the key and the fix: through `check-config`, through
`snakemake -n --configfile`, and (shots against a dataset's images) through the job that would have failed."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vlprompt.cli import main as cli

REPO = Path(__file__).resolve().parents[1]

# a user's first own config: what they change, nothing else
FIRST_OWN = {
    "experiment": "mine",
    "protocol": "base2new",
    "datasets": ["pocket_dark"],
    "methods": ["zeroshot", "coop"],
    "shots": [4],
    "seeds": [1],
    "backbone": {"model": "PocketCLIP-ViT-T8", "pretrained": "pocket_v2"},
    "pocket": {"world": "v2", "label_order": "disjoint"},
}


def write(tmp_path, text_or_cfg, name="mine.yaml") -> Path:
    path = tmp_path / name
    text = text_or_cfg if isinstance(text_or_cfg, str) else yaml.safe_dump(text_or_cfg, sort_keys=False)
    path.write_text(text)
    return path


def config(tmp_path, drop=(), **changes) -> dict:
    cfg = {k: v for k, v in FIRST_OWN.items() if k not in drop}
    cfg.update(results_root=str(tmp_path / "results"), data_root=str(tmp_path / "data"), **changes)
    return cfg


def check_config(capsys, path) -> tuple[int, list[str]]:
    rc = cli(["check-config", str(path)])
    err = capsys.readouterr().err
    return rc, err.splitlines()


def dry_run(tmp_path, path) -> tuple[int, list[str]]:
    (tmp_path / "wd").mkdir(exist_ok=True)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "-n",
            "-s",
            str(REPO / "Snakefile"),
            "-d",
            str(tmp_path / "wd"),
            "--configfile",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return proc.returncode, (proc.stdout + proc.stderr).splitlines()


def test_a_good_config_passes(tmp_path, capsys):
    assert cli(["check-config", str(write(tmp_path, config(tmp_path)))]) == 0
    assert capsys.readouterr().out.strip().endswith("mine.yaml: ok")
    assert cli(["check-config", str(REPO / "config" / "config.yaml")]) == 0


def test_a_missing_key_is_one_line_with_what_it_is_and_the_default_experiments_value(tmp_path, capsys):
    path = write(tmp_path, config(tmp_path, drop=["backbone"]))
    rc, lines = check_config(capsys, path)
    assert rc == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"vlprompt check-config: {path}: missing key `backbone`: the frozen CLIP")
    assert "the default experiment (config/config.yaml) has `backbone: {model: PocketCLIP-ViT-T8, " in lines[0]


def test_several_problems_give_one_line_each_and_nothing_else(tmp_path, capsys):
    cfg = config(tmp_path, drop=["backbone", "seeds"], protocol="base2novel", shots=[1, "two"], featurs={})
    rc, lines = check_config(capsys, write(tmp_path, cfg))
    assert rc == 2 and len(lines) == 5, lines
    text = "\n".join(lines)
    for expected in (
        "missing key `backbone`",
        "missing key `seeds`",
        "`protocol` is 'base2novel'; did you mean 'base2new'? allowed: base2new, fewshot,",
        "`shots[1]` is 'two' (a string); it must be an integer",
        "unknown key `featurs`; did you mean `features`?",
    ):
        assert expected in text


def test_unknown_keys_name_the_nearest_valid_one_at_their_level(tmp_path, capsys):
    cfg = config(tmp_path, backbone={"model": "PocketCLIP-ViT-T8", "pretrained": "pocket_v2", "quickgelu": True})
    rc, lines = check_config(capsys, write(tmp_path, cfg))
    assert len(lines) == 1
    assert (
        "unknown key `backbone.quickgelu`; did you mean `backbone.quick_gelu`? (the keys under `backbone`: " in lines[0]
    )


def test_wrong_types_and_values_name_the_key_path_the_value_and_what_is_allowed(tmp_path, capsys):
    cfg = config(tmp_path, backbone="ViT-B-16", seeds=[1, 1], experiment="my exp", train={"threads": 0})
    rc, lines = check_config(capsys, write(tmp_path, cfg))
    assert len(lines) == 4, lines
    text = "\n".join(lines)
    assert "`backbone` is 'ViT-B-16' (a string); it must be a mapping" in text
    assert "`seeds` lists [1] more than once; list each once" in text
    assert "`experiment` is 'my exp', which is not allowed: the experiment's name" in text
    assert "`train.threads` is 0; it must be >= 1" in text


def test_unknown_names_suggest_the_registered_ones(tmp_path, capsys):
    cfg = config(tmp_path, datasets=["pocket_drak"], methods=["coopp", "kgcop"], method_overrides={"zeroshot": {}})
    rc, lines = check_config(capsys, write(tmp_path, cfg))
    assert len(lines) == 3, lines
    assert "`datasets`: unknown dataset 'pocket_drak'; did you mean 'pocket_dark'?" in lines[0]
    assert "`methods`: unknown method 'coopp'; did you mean 'coop'?" in lines[1]
    assert "`methods`: unknown method 'kgcop'; did you mean 'kgcoop'?" in lines[2]
    cfg = config(tmp_path, protocol="crossdataset", targets=["pocket_skech"], sources=["Imagenet"])
    rc, lines = check_config(capsys, write(tmp_path, cfg))
    assert len(lines) == 2, lines
    assert "`targets`: unknown dataset 'pocket_skech'; did you mean 'pocket_sketch'?" in lines[0]
    assert "`sources`: unknown dataset 'Imagenet'; did you mean 'ImageNet'?" in lines[1]
    cfg = config(tmp_path, method_overrides={"coop": {"epoch": 3}, "zeroshot": {"templat": "x"}})
    rc, lines = check_config(capsys, write(tmp_path, cfg))
    assert len(lines) == 2 and "method_overrides.coop: unknown hyperparameter(s) ['epoch']" in lines[0]
    assert "did you mean 'epochs'?" in lines[0]


@pytest.mark.parametrize(
    "text, where, what",
    [
        ("experiment: mine\nmethods: [coop\nshots: [1]\n", ":3:6:", "while parsing a flow sequence at line 2"),
        ("experiment: mine\n\tmethods: [coop]\n", ":2:1:", "found character '\\t'"),
        ('experiment: "mine\n', ":2:1:", "while scanning a quoted scalar at line 1"),
    ],
)
def test_a_yaml_syntax_error_names_the_file_line_and_column(tmp_path, capsys, text, where, what):
    path = write(tmp_path, text)
    rc, lines = check_config(capsys, path)
    assert rc == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"vlprompt check-config: {path}{where} YAML syntax error: ")
    assert what in lines[0]


def test_an_empty_or_missing_file_is_one_line(tmp_path, capsys):
    assert check_config(capsys, write(tmp_path, ""))[1] == [
        f"vlprompt check-config: {tmp_path / 'mine.yaml'}: the file is empty; an experiment config needs experiment, "
        "protocol, backbone, datasets, methods, shots and seeds (see config/config.yaml)"
    ]
    assert len(check_config(capsys, tmp_path / "nope.yaml")[1]) == 1


def test_the_schema_examples_are_the_default_experiments_values():
    """A missing key's line quotes the schema's `examples` as the default experiment's value: they must be it."""
    from vlprompt.experiment.config import load_schema

    schema, default = load_schema(), yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    for key in schema["required"]:
        assert schema["properties"][key]["examples"] == [default[key]], key
        assert schema["properties"][key]["title"], key


def test_methods_against_the_protocol(tmp_path, capsys):
    cfg = config(tmp_path, protocol="crossdataset", targets=["pocket_sketch"], methods=["coop", "coop_csc"])
    rc, lines = check_config(capsys, write(tmp_path, cfg))
    assert len(lines) == 1 and "`methods`: coop_csc cannot classify classes other than those trained on" in lines[0]


def test_the_same_lines_through_snakemake(tmp_path, capsys):
    path = write(tmp_path, config(tmp_path, drop=["backbone"], methods=["coopp"]))
    rc, lines = dry_run(tmp_path, path)
    assert rc == 1 and len(lines) == 1, lines  # the schema's problem; names are checked once it passes
    assert lines[0].startswith(f"vlprompt: {path}: missing key `backbone`: the frozen CLIP")
    path = write(tmp_path, config(tmp_path, methods=["coopp", "kgcop"]))
    rc, lines = dry_run(tmp_path, path)
    assert rc == 1 and len(lines) == 2, lines
    assert lines == [line.replace("vlprompt check-config:", "vlprompt:") for line in check_config(capsys, path)[1]]


def test_shots_beyond_a_pocket_worlds_images_fail_the_plan_with_the_jobs_line(tmp_path, capsys):
    """The pocket world's sizes are in the config: `snakemake -n` stops with the line the few-shot job prints."""
    small = {"world": "v1", "n_colours": 2, "n_shapes": 2, "per_class": {"train": 2, "val": 4, "test": 1}}
    cfg = config(tmp_path, pocket=small, shots=[1, 3])
    path = write(tmp_path, cfg)
    rc, lines = check_config(capsys, path)
    assert len(lines) == 1, lines
    plan_line = lines[0].removeprefix(f"vlprompt check-config: {path}: ")
    assert (
        plan_line.startswith("pocket_dark: class ") and "has only 2 train images, fewer than the 3 shots" in plan_line
    )
    assert "raise `pocket.per_class.train`" in plan_line
    rc, lines = dry_run(tmp_path, path)
    assert rc == 1 and lines == [f"vlprompt: {path}: {plan_line}"]
    # the job: the same line (once the dataset exists, from its split file)
    args = ["--config", str(path), "--dataset", "pocket_dark", "--quiet"]
    assert cli(["prepare", *args]) == 0
    capsys.readouterr()
    assert cli(["fewshot", *args, "--shots", "3", "--seed", "1"]) == 2
    assert capsys.readouterr().err.splitlines() == [f"vlprompt fewshot: error: {plan_line}"]
    # allow_fewer keeps what there is, at plan time and in the job
    cfg["fewshot"] = {"allow_fewer": True}
    assert cli(["check-config", str(write(tmp_path, cfg))]) == 0


def test_a_prepared_real_split_is_checked_against_the_shots(tmp_path, capsys, monkeypatch):
    """A real dataset's images per class are known once it is prepared: its split file is read at plan time."""
    import json

    from vlprompt.data import registry
    from vlprompt.experiment.checks import plan_problems
    from vlprompt.experiment.config import validate

    cfg = validate(config(tmp_path, datasets=["DTD"], shots=[2, 8]))
    assert plan_problems(cfg) == []  # not prepared: nothing known, nothing said
    rows = lambda n: [[f"{c}/{i}.jpg", label, c] for label, c in enumerate(["banded", "woven"]) for i in range(n)]  # noqa: E731
    split = registry.split_path(cfg, "DTD")
    split.parent.mkdir(parents=True)
    split.write_text(json.dumps({"train": rows(5), "val": rows(4), "test": rows(1)}))
    assert plan_problems(cfg) == [
        "DTD: class 'banded' (label 0) has only 5 train images, fewer than the 8 shots requested; lower `shots` or "
        "set `fewshot.allow_fewer: true` to keep all of them as Dassl does"
    ]


def _registered():
    from vlprompt.methods import list_methods

    return list_methods()


@pytest.mark.parametrize("method", _registered())
def test_every_methods_hyperparameters_are_one_line_each(method):
    """A typo, a word for a number and YAML's true for a number, in every registered method's block: one line
    each, naming the method, the hyperparameter and what it must be (the newest methods' Config fields too)."""
    import dataclasses

    from vlprompt.experiment.overrides import method_override_problems
    from vlprompt.experiment.schema import fill_defaults
    from vlprompt.methods import get_method

    fields = dataclasses.fields(get_method(method).Config)
    numbers = [f for f in fields if type(f.default) in (int, float)]
    first = fields[0].name
    blocks = {"typo": {first + "x": 1}}
    if numbers:
        blocks |= {"word": {numbers[0].name: "many"}, "yes": {numbers[-1].name: True}}
    for case, block in blocks.items():
        cfg = fill_defaults(config(Path("/nonexistent"), methods=[method], method_overrides={method: block}))
        lines = method_override_problems(cfg)
        assert len(lines) == 1 and "\n" not in lines[0], (case, lines)
        assert lines[0].startswith(f"method_overrides.{method}: "), lines
        if case == "typo":
            assert f"unknown hyperparameter(s) ['{first}x']" in lines[0] and f"did you mean '{first}'?" in lines[0]
        else:
            assert "must be of type" in lines[0] and ("'many'" in lines[0] or "got True" in lines[0]), lines
