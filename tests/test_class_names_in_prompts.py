"""Class names that users give (quotes, other scripts, braces, line breaks, very long names) in the methods whose
prompts mix learnable slots with words (MoCoOp, ATPrompt): a name the prompt can hold trains; one it cannot is one
line naming the class and the fix, never a traceback. Every registered method that writes class names into prompts
stops so on a name too long for the text encoder's context: when the plan knows the names (``check-config``,
``snakemake -n``), else when the job starts, else when the prompt is built.

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


def trains(method: str) -> bool:
    import dataclasses

    from vlprompt.methods import get_method

    return "epochs" in {f.name for f in dataclasses.fields(get_method(method).Config)}


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
        "method_overrides": {method: {"epochs": 1}} if trains(method) else {},
    }
    path = tmp_path / "names.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    return path


@pytest.mark.parametrize("method", ["mocoop", "atprompt", "coop", "kapt", "zeroshot", "maple"])
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
    assert "the text encoder holds 20" in err[0] and "Traceback" not in err[0]


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


def _methods():
    from vlprompt.methods import list_methods

    return list_methods()


@pytest.mark.parametrize("method", _methods())
def test_every_method_stops_a_name_too_long_for_its_prompt_with_one_line(method):
    """The check the plan and the job's start run, per registered method: a new method is covered by its
    ``name_prompt_tokens`` (the default counts the learnable text context); one whose classes enter no prompt
    says so."""
    from vlprompt.experiment.checks import class_name_problems
    from vlprompt.experiment.schema import fill_defaults
    from vlprompt.methods import get_method

    cfg = fill_defaults(
        {
            "experiment": "names",
            "backbone": {"model": "PocketCLIP-ViT-T8", "pretrained": "pocket"},
            "datasets": ["pocket_dark"],
            "methods": [method],
            "shots": [1],
            "seeds": [1],
        }
    )
    cls = get_method(method)
    lines = class_name_problems(cfg, "pocket_dark", ["plain ring", LONG, "another"], [method])
    if cls.name_prompt_tokens(cls.make_config({}), len) is None:
        assert lines == []
        return
    assert len(lines) == 1, lines
    line = lines[0]
    assert "a very long name" in line and "the text encoder holds 20" in line and "shorter name" in line
    assert f"(methods: {method})" in line and "plain ring" not in line
    needed = int(line.split(" needs at least ")[1].split()[0])
    assert needed >= 160 + 2  # the name alone is 160 tokens
    if getattr(cls.make_config({}), "n_ctx", 0) or getattr(cls.make_config({}), "n_ctx_text", 0):
        assert "fewer context tokens" in line and f"method_overrides.{method}." in line
    assert class_name_problems(cfg, "pocket_dark", ["plain ring", "another"], [method]) == []


def test_the_plan_names_a_class_too_long_for_the_prompt_before_any_job(tmp_path):
    """``check-config`` (and the Snakefile's plan) on a prepared user dataset: one line, the dataset's name first."""
    from conftest import prepare_run_inputs
    from vlprompt.experiment.checks import file_problems

    config = user_experiment(tmp_path, "coop", {"plain": "plain ring", "long": LONG})
    prepare_run_inputs(config, "mine", 1, test_bank=False)
    lines = file_problems(config)
    assert len(lines) == 1, lines
    assert "mine: the prompt for class 'a very long name" in lines[0] and "needs at least 166 tokens" in lines[0]
    assert "method_overrides.coop.ctx_init" in lines[0] and "(methods: coop)" in lines[0]


def test_prompts_check_their_length_exactly(pocket_random_backbone):
    """A prompt of exactly the context fits; one token more is one line with the tokens needed and available."""
    from vlprompt.clip.backbone import PromptedTextEncoder
    from vlprompt.clip.prompting import PromptFitError, PromptLearner, prompt_length, text_classifier

    bb = pocket_random_backbone
    encoder = PromptedTextEncoder(bb.model)
    fits = "red " * 13  # X X X X + 13 words + "." + SOS + EOS = 20
    assert prompt_length(bb.tokenizer, f"X X X X {fits.strip()}.") == 20
    PromptLearner(encoder, bb.tokenizer, [fits.strip()], n_ctx=4, ctx_init=None)
    with pytest.raises(PromptFitError) as err:
        PromptLearner(encoder, bb.tokenizer, [fits + "red"], n_ctx=4, ctx_init=None)
    assert "needs 21 tokens but the text encoder holds 20" in str(err.value) and "n_ctx, now 4" in str(err.value)
    assert "\n" not in str(err.value)
    with pytest.raises(PromptFitError, match="needs 21 tokens but the text encoder holds 20; give the class"):
        text_classifier(bb, ["a photo of a {}."], ["blue", ("red " * 14).strip()])
    text_classifier(bb, ["a photo of a {}."], [("red " * 13).strip()])


def test_the_plans_tokenizer_counts_as_the_backbones(pocket_random_backbone):
    """The plan builds CLIP's BPE tokenizer without importing open_clip; it counts as the loaded backbone's."""
    from vlprompt.clip.backbone import bpe_tokenizer
    from vlprompt.clip.prompting import prompt_length

    light = bpe_tokenizer("PocketCLIP-ViT-T8")
    assert light is not None and light.context_length == 20
    for text in [*NAMES.values(), LONG, "X X X X plain ring.", "Ünïcödé _ snake_case"]:
        assert prompt_length(light, text) == prompt_length(pocket_random_backbone.tokenizer, text)
    assert bpe_tokenizer("no-such-model") is None
