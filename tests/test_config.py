import pytest
import yaml

from vlprompt.experiment.config import ConfigError, load_config, validate


def base():
    with open("config/config.yaml") as f:
        return yaml.safe_load(f)


def test_default_config_is_valid_and_gets_defaults():
    cfg = load_config("config/config.yaml")
    assert cfg["fewshot"]["allow_fewer"] is False
    assert cfg["train"]["threads"] == 1


def test_unknown_key_is_named():
    cfg = base()
    cfg["featurs"] = {}
    with pytest.raises(ConfigError, match="featurs"):
        validate(cfg)


def test_nested_unknown_key_and_wrong_type_are_named():
    cfg = base()
    cfg["features"]["train_view"] = 3
    cfg["shots"] = [1, "two"]
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert "train_view" in str(err.value) and "shots[1]" in str(err.value)


def test_unknown_dataset_method_and_hyperparameter_list_alternatives():
    cfg = base()
    cfg["datasets"] = ["pocket_skech"]
    with pytest.raises(Exception, match="unknown dataset 'pocket_skech'.*pocket_sketch"):
        validate(cfg)
    cfg = base()
    cfg["methods"] = ["coopp"]
    with pytest.raises(Exception, match="unknown method 'coopp'; did you mean 'coop'"):
        validate(cfg)
    cfg = base()
    cfg["method_overrides"] = {"coop": {"epoch": 3}}
    with pytest.raises(Exception, match="unknown hyperparameter.*epoch.*valid"):
        validate(cfg)


def test_each_experiment_reads_its_own_config_file(tmp_path):
    """Resolving another experiment, or the same one with other overrides (a dry run, say), while a
    pipeline runs must not change what that pipeline's jobs read; nothing is written outside the
    experiment's own folder."""
    import json

    from vlprompt.pipeline.workflow import resolve_config

    first, second = base(), base()
    first["results_root"] = second["results_root"] = str(tmp_path)
    second["experiment"], second["method_overrides"] = "other", {"coop": {"epochs": 3}}
    _, path_first = resolve_config(first)
    _, path_second = resolve_config(second)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other", "pocket"]  # no shared results/config.json
    assert path_first.startswith(str(tmp_path / "pocket" / "configs"))
    assert path_second.startswith(str(tmp_path / "other" / "configs"))
    assert json.loads(open(path_first).read())["method_overrides"]["coop"] == {"epochs": 20}
    assert json.loads(open(path_second).read())["method_overrides"]["coop"] == {"epochs": 3}
    before = open(path_first).read()
    changed = {**first, "method_overrides": {"coop": {"epochs": 7}}}  # the same experiment, re-planned
    _, path_changed = resolve_config(changed)
    assert path_changed != path_first and open(path_first).read() == before  # the running jobs' file
    latest = json.loads((tmp_path / "pocket" / "config.json").read_text())  # for people and DVC
    assert latest["method_overrides"] == {"coop": {"epochs": 7}}


def test_command_line_strings_become_the_schema_types():
    """`snakemake --config 'shots=[1,4,16]' train='{threads: 2}'` passes strings (YAML BaseLoader)."""
    from vlprompt.experiment.config import coerce_strings

    cfg = base()
    cfg.update(
        shots=["1", "4", "16"],
        seeds=["7"],
        train={"threads": "2", "device": "cpu"},
        method_overrides={"coop": {"epochs": "5"}},
        experiment="123",
    )
    out = validate(coerce_strings(cfg))
    assert out["shots"] == [1, 4, 16] and out["seeds"] == [7]
    assert out["train"]["threads"] == 2 and out["train"]["device"] == "cpu"
    assert out["experiment"] == "123"  # a string where the schema wants one
    assert out["method_overrides"]["coop"] == {"epochs": "5"}  # free-form: the method's Config judges
    with pytest.raises(ConfigError, match="shots"):
        validate(coerce_strings({**cfg, "shots": ["four"]}))


def test_notes_file_is_found_in_the_workflow_folder_when_run_elsewhere(tmp_path, monkeypatch):
    from pathlib import Path

    from vlprompt.pipeline.workflow import resolve_config

    repo = Path.cwd()
    cfg = base()
    cfg["results_root"] = str(tmp_path / "results")
    assert cfg["report"]["notes_file"] == "docs/pocket_findings.md"
    monkeypatch.chdir(tmp_path)  # snakemake -d tmp_path: the notes are not in the working directory
    resolved, _ = resolve_config(cfg, base_dir=repo)
    assert resolved["report"]["notes_file"] == str(repo / "docs/pocket_findings.md")
    resolved, _ = resolve_config(cfg)  # no workflow folder: left as written (the report names it if missing)
    assert resolved["report"]["notes_file"] == "docs/pocket_findings.md"
    # in neither folder: a config error naming the key and the fix, before any job (not Snakemake's
    # MissingInputException for the report rule)
    with pytest.raises(ConfigError, match=r"report.notes_file: 'docs/missing.md' does not exist .* write it"):
        resolve_config({**cfg, "report": {**cfg["report"], "notes_file": "docs/missing.md"}}, base_dir=repo)


def test_backbone_key_of_a_weights_file_hashes_it_once_and_follows_its_content(tmp_path, monkeypatch):
    """The DAG asks for the key of every path it plans: a local weights file is hashed once per process (a
    600 MB file hashed for each of base2novel's 916 paths took minutes), yet replaced weights get a new key."""
    import hashlib
    import os

    from vlprompt import io
    from vlprompt.experiment import config

    weights = tmp_path / "my_clip.pt"
    weights.write_bytes(b"weights one")
    calls, real_hash = [], io.sha256_file
    monkeypatch.setattr(io, "sha256_file", lambda path: calls.append(path) or real_hash(path))
    cfg = {"backbone": {"model": "ViT-B-16", "pretrained": str(weights), "quick_gelu": True}}
    first = config.backbone_key(cfg)
    assert first == f"ViT-B-16__my_clip-{hashlib.sha256(b'weights one').hexdigest()[:8]}__quickgelu"
    assert [config.backbone_key(cfg) for _ in range(50)] == [first] * 50 and len(calls) == 1
    weights.write_bytes(b"weights two")  # same size, new content and time
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    second = config.backbone_key(cfg)
    assert second == f"ViT-B-16__my_clip-{hashlib.sha256(b'weights two').hexdigest()[:8]}__quickgelu"
    assert len(calls) == 2


def test_a_job_reading_the_plans_config_skips_only_the_names_the_plan_checked(tmp_path):
    """A job's config ($VLPROMPT_CONFIG) is the file the plan pinned after validating it: its names (methods,
    datasets, overrides: a check that imports every method, hence torch) are not checked again; any other file,
    or a pinned one whose content changed, is checked in full."""
    import json

    from vlprompt.experiment.config import written_by_the_plan
    from vlprompt.pipeline.workflow import resolve_config

    cfg = base()
    cfg["results_root"] = str(tmp_path)
    _, pinned = resolve_config(cfg)
    pinned = tmp_path / "pocket" / "configs" / pinned.rsplit("/", 1)[-1]
    assert written_by_the_plan(pinned, json.loads(pinned.read_text()))
    assert load_config(pinned, planned=True) == load_config(pinned)
    # a file named like a pinned config whose content is not its name's: a hand edit, checked in full
    bad = json.loads(pinned.read_text())
    bad["methods"] = ["coopp"]
    edited = pinned.with_name("0" * 12 + ".json")
    edited.write_text(json.dumps(bad))
    assert not written_by_the_plan(edited, bad)
    with pytest.raises(ConfigError, match="unknown method 'coopp'"):
        load_config(edited, planned=True)
    # the same content under its own hash passes as the plan's (the plan would have refused it); not planned,
    # or not in a configs/ folder, it is checked
    from vlprompt.io import config_hash

    named = pinned.with_name(config_hash(bad) + ".json")
    named.write_text(json.dumps(bad))
    assert load_config(named, planned=True)["methods"] == ["coopp"]
    with pytest.raises(ConfigError, match="unknown method 'coopp'"):
        load_config(named)
    elsewhere = tmp_path / named.name
    elsewhere.write_text(json.dumps(bad))
    with pytest.raises(ConfigError, match="unknown method 'coopp'"):
        load_config(elsewhere, planned=True)
    # the schema is still checked
    bad["featurs"] = {}
    schema = pinned.with_name(config_hash(bad) + ".json")
    schema.write_text(json.dumps(bad))
    with pytest.raises(ConfigError, match="featurs"):
        load_config(schema, planned=True)


def test_a_job_that_trains_nothing_starts_without_torch(tmp_path):
    """`vlprompt prepare` as a job runs it (the config from $VLPROMPT_CONFIG, the plan's pinned file) imports
    neither torch nor open_clip (given with --config, the same file is checked in full: the test above)."""
    import os
    import subprocess
    import sys

    from vlprompt.pipeline.workflow import CONFIG_ENV, resolve_config

    cfg = yaml.safe_load(open("tests/configs/pocket_tiny.yaml"))
    cfg["results_root"], cfg["data_root"] = str(tmp_path / "results"), str(tmp_path / "data")
    _, pinned = resolve_config(cfg)
    code = (
        "import sys; from vlprompt.cli import main; rc = main(sys.argv[1:]); "
        "print(rc, 'torch' in sys.modules, 'open_clip' in sys.modules)"
    )
    args = ["prepare", "--dataset", "pocket_dark", "--quiet"]
    env = {**os.environ, CONFIG_ENV: pinned, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True)
    assert out.stdout.split()[-3:] == ["0", "False", "False"], out.stdout + out.stderr
