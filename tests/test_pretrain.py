"""The pocket CLIPs' pretraining presets: what the rule pretrain_pocket_clip re-creates, and determinism."""

import dataclasses
import json
import os
import sys
from pathlib import Path

import pytest
import torch

from vlprompt.clip import backbone
from vlprompt.data import pocket
from vlprompt.training import pretrain

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["v1", "v2"])
def test_each_preset_is_the_recipe_its_shipped_checkpoint_records(name):
    """The rule re-creates a shipped checkpoint only if its preset is the recipe the checkpoint was made with."""
    weights = backbone.resolve_pretrained(f"pocket_{name}")
    record = json.loads(Path(weights).with_suffix(".json").read_text())
    cfg, world = pretrain.PRESETS[name]
    assert {k: v for k, v in dataclasses.asdict(cfg).items() if k in record["config"] or v} == record["config"]
    assert all(record["world"][k] == v for k, v in dataclasses.asdict(world).items() if k in record["world"])


def test_pocket_names_resolve_to_the_shipped_files():
    assert (
        backbone.resolve_pretrained("pocket")
        == backbone.resolve_pretrained("pocket_v1")
        == str(backbone.POCKET_WEIGHTS)
    )
    assert backbone.resolve_pretrained("pocket_v2").endswith("pocket_clip_v2_fp16.pt")
    assert backbone.resolve_pretrained("openai") == "openai"


def test_an_unshipped_pocket_clip_names_the_rule_that_creates_it(monkeypatch, tmp_path):
    monkeypatch.setitem(backbone.POCKET_ASSETS, "pocket_v2", tmp_path / "pocket_clip_v2_fp16.pt")
    with pytest.raises(backbone.BackboneError, match="pocket_v2 CLIP is not shipped.*pretrain_pocket_clip"):
        backbone._check_request(
            backbone.open_clip(), backbone.POCKET_MODEL, backbone.resolve_pretrained("pocket_v2"), None
        )


def test_v2_pretraining_names_every_word_but_not_the_held_out_compositions():
    _, world = pretrain.PRESETS["v2"]
    seen = pretrain.pretraining_classes(world)
    assert len(seen) == 144 - 18 and not any(pocket.held_out_in_pretraining(*cs) for cs in seen)
    assert {c for c, _ in seen} == set(pocket.COLOURS) and {s for _, s in seen} == set(pocket.SHAPES)
    assert pretrain.name_texture("a dark photo of a red circle.", "striped") == (
        "a dark photo of a red circle on a striped background."
    )
    assert pretrain.pretraining_classes(pretrain.PRESETS["v1"][1]) == pocket.World(label_order="shuffled").classes


@pytest.mark.parametrize("name", ["v1", "v2"])
def test_pretraining_is_deterministic(tmp_path, name):
    """Two runs of a preset (shortened) give the same weights bit for bit: the rule can re-create a checkpoint."""
    torch.set_num_threads(1)
    cfg, world = pretrain.PRESETS[name]
    cfg = dataclasses.replace(cfg, steps=2, pool_size=200, batch_size=16)
    a = torch.load(pretrain.pretrain(tmp_path / "a.pt", cfg, world))
    b = torch.load(pretrain.pretrain(tmp_path / "b.pt", cfg, world))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert all(v.dtype == torch.float16 for v in a.values() if v.is_floating_point())
    # and the same file, so a re-created checkpoint has the shipped one's sha256 (and its feature-store key)
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()


@pytest.mark.parametrize("name", ["pocket_v1", "pocket_v2"])
def test_the_shipped_checkpoints_are_in_the_form_the_rule_writes(tmp_path, name):
    """Equal weights give an equal file: the shipped checkpoint is byte for byte what pretrain() writes for its
    tensors, so `sha256sum` compares a re-created checkpoint with it."""
    from vlprompt.io import atomic_torch_save

    shipped = Path(backbone.resolve_pretrained(name))
    atomic_torch_save(tmp_path / shipped.name, torch.load(shipped))
    assert (tmp_path / shipped.name).read_bytes() == shipped.read_bytes()


def test_the_rule_pretrains_the_experiments_world(tmp_path):
    from dry_runs import snakemake_calls  # the three dry runs in one process (tests/dry_runs.py)

    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    worlds = {
        "config/pocket_v1.yaml": "v1",
        "config/config.yaml": "v2",
        "config/explore/pocket_world/disjoint.yaml": "v2",
    }
    calls = [
        ["-s", str(REPO / "Snakefile"), "-d", str(tmp_path), "--configfile", str(REPO / config)]
        + ["-n", "-p", "pretrain_pocket_clip"]
        for config in worlds
    ]
    for proc, world in zip(snakemake_calls(calls, env), worlds.values(), strict=True):
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert f"pretrain-pocket --world {world} --out results/pocket_clip/pocket_clip_{world}_fp16.pt" in proc.stdout
