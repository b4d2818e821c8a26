"""Class names that users give (quotes, other scripts, braces, line breaks, very long names) in the methods whose
prompts mix learnable slots with words (MoCoOp, ATPrompt): a name the prompt can hold trains; one it cannot is one
line naming the class and the fix, never a traceback.

The end-to-end check trains on a user's folder through the CLI (tests/user_folders.py draws the images)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from user_folders import draw

# label (folder) -> the class name given in the classnames file
NAMES = {
    "quoted": 'the "quoted" one',
    "shout": 'say "hi"',
    "braces": "set {} of {0}",
    "lines": "sea\nurchin\tspine",
    "kana": "猫_ねこ",
    "plain": "plain ring",
}
LONG = "a very long name " * 40  # longer than the pocket CLIP's 20-token context


def user_experiment(tmp_path: Path, method: str, names: dict[str, str]) -> Path:
    root = tmp_path / "images"
    colours = ["red", "blue", "green", "yellow", "purple", "orange", "cyan"]
    for i, label in enumerate(names):
        (root / label).mkdir(parents=True)
        for k in range(6):
            draw(colours[i], "circle" if i % 2 else "square", k).save(root / label / f"{k}.png")
    (tmp_path / "names.json").write_text(json.dumps(names, ensure_ascii=False))
    cfg = {
        "experiment": "names",
        "protocol": "fewshot",
        "data_root": str(tmp_path / "data"),
        "results_root": str(tmp_path / "results"),
        "backbone": {"model": "PocketCLIP-ViT-T8", "pretrained": "pocket"},
        "datasets": ["mine"],
        "methods": [method],
        "shots": [1],
        "seeds": [1],
        "user_datasets": {"mine": {"root": str(root), "classnames": str(tmp_path / "names.json")}},
        "features": {"train_views": 1, "device": "cpu"},
        "train": {"device": "cpu"},
        "method_overrides": {method: {"epochs": 1}},
    }
    path = tmp_path / "names.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    return path


@pytest.mark.parametrize("method", ["mocoop", "atprompt"])
def test_hostile_names_train_and_a_too_long_one_is_one_line(tmp_path, method, capsys):
    from conftest import prepare_run_inputs
    from vlprompt.cli import main as cli

    config = user_experiment(tmp_path, method, {**NAMES, "long": LONG})
    prepare_run_inputs(config, "mine", 1)
    out = tmp_path / "run"
    args = ["train", "--config", str(config), "--dataset", "mine", "--method", method, "--shots", "1"]
    assert cli([*args, "--seed", "1", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "a very long name" in err[0] and "shorter name" in err[0], err
    assert "Traceback" not in err[0]


@pytest.mark.parametrize("method", ["mocoop", "atprompt"])
def test_names_with_quotes_braces_and_line_breaks_train(tmp_path, method):
    """A name ending in a quote merges with the prompt's final "." into one token; the slots before it stay put."""
    from conftest import prepare_run_inputs
    from vlprompt.cli import main as cli

    config = user_experiment(tmp_path, method, NAMES)
    prepare_run_inputs(config, "mine", 1)
    out = tmp_path / "run"
    args = ["train", "--config", str(config), "--dataset", "mine", "--method", method, "--shots", "1"]
    assert cli([*args, "--seed", "1", "--out", str(out), "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["all_acc"] <= 100


def test_a_slot_before_a_name_ending_in_punctuation_keeps_its_place(pocket_random_backbone):
    from vlprompt.clip.backbone import PromptedTextEncoder
    from vlprompt.clip.prompting import PLACEHOLDER, PatternPrompts

    bb = pocket_random_backbone
    names = ['say "hi"', "plain"]
    prompts = PatternPrompts(PromptedTextEncoder(bb.model), bb.tokenizer, names, "{ctx} {}.", {"ctx": 2}, {"ctx": 0.02})
    placeholder = int(bb.tokenizer([PLACEHOLDER])[0, 1])
    assert prompts.pos_ctx.tolist() == [[1, 2], [1, 2]]
    assert (prompts.tokens[:, 1:3] == placeholder).all()
    whole, alone = bb.tokenizer(['X X say "hi".', "X X plain."]), prompts.tokens
    assert torch.equal(whole, alone)
    # X X say " hi ". is 6 tokens (the closing quote and "." are one), 7 when its pieces are counted one by one
    assert int(prompts.eot[0]) == 1 + 6
