"""Where methods read what their references read: MoCoOp's ImageNet templates (the reference's YAML,
trailing comments included), OGEN's new-class names under base-to-new (names only, declared and recorded), and
the smaller points where a reading and its reference part (ATPrompt's slicing, RESTORE's shift origin, MoCoOp's
part sizes, MVLPT's averaged source prompt), and description sources. Tiny random pocket CLIP, one thread."""

import json

import pytest
import torch
import torch.nn.functional as F
import yaml

from conftest import prepare_run_inputs
from reference.mocoop_templates import templates_and_groups
from test_methods_wave2 import build, context
from vlprompt.cli import main as cli
from vlprompt.clip.features import FeatureBank
from vlprompt.data import descriptions as store
from vlprompt.data.registry import split_path
from vlprompt.data.splits import read_split
from vlprompt.experiment import grid
from vlprompt.experiment.config import method_config_hash, validate
from vlprompt.methods import get_method
from vlprompt.methods.atprompt import per_dataset
from vlprompt.training.context import build_context

# A copy of the layout of dyabel/mocoop's configs/datasets/imagenet.yaml (commit 04b5d2a), shortened: whole-line
# comments (``##`` headings, ``# "..."`` commented-out templates) and entries with a trailing ``#`` comment.
IMAGENET_LAYOUT = """
DATASET:
  NAME: "ImageNet"
TRAINER:
  MoCoOp:
    LASP_PROMPTS: [
    ## Art and renditions
        "art of the {}.",
        "a rendering of a {}.",
        # "a rendition of the {}.",
    ## General photo prompts
        "a photo of a {}.",
        # "a photo of the {}.",
    ## Cropped photos
        "a cropped photo of the {}.", #
        "a cropped photo of a {}.", #
    ## Bright photos
        "a bright photo of the {}.", #
    # ## Texture photos
        "{} texture.",
    ]
    # GROUPS: [2, 1, 1] # LARS loss
    GROUPS: [2, 1, 2, 1, 1] # LARS loss
"""


def test_trailing_comments_are_list_items_and_whole_line_comments_are_not():
    templates, groups = templates_and_groups(IMAGENET_LAYOUT)
    assert templates == [
        "art of the {}.",
        "a rendering of a {}.",
        "a photo of a {}.",
        "a cropped photo of the {}.",
        "a cropped photo of a {}.",
        "a bright photo of the {}.",
        "{} texture.",
    ]
    assert groups == [2, 1, 2, 1, 1]  # the active GROUPS line, not the commented-out one
    with pytest.raises(ValueError, match="do not cover"):
        templates_and_groups(IMAGENET_LAYOUT.replace("[2, 1, 2, 1, 1]", "[2, 1, 2, 1]"))


def test_imagenet_and_its_variants_use_the_reference_list_of_32_templates_in_20_groups():
    entry = per_dataset("mocoop_templates.json", "ImageNet", "MoCoOp templates")
    assert len(entry["templates"]) == 32 and len(entry["groups"]) == 20 and sum(entry["groups"]) == 32
    assert entry["groups"] == [1, 1, 1, 1, 2, 2, 3, 1, 1, 1, 7, 2, 1, 2, 1, 1, 1, 1, 1, 1]
    for trailing in ("a cropped photo of the {}.", "a cropped photo of a {}.", "a bright photo of the {}."):
        assert trailing in entry["templates"]
    assert "a rendition of the {}." not in entry["templates"]  # commented out in the reference
    for variant in ("ImageNetV2", "ImageNetSketch", "ImageNetA", "ImageNetR"):  # trained on ImageNet: its experts
        assert per_dataset("mocoop_templates.json", variant, "MoCoOp templates") is entry


def test_mocoop_on_imagenet_builds_twenty_experts(pocket_random_backbone):
    m = build("mocoop", context(pocket_random_backbone, dataset="ImageNet"))
    assert len(m.experts) == 20 and m.prototypes.shape[:2] == (20, 4)
    assert m.router.out_features == 20


# ---------------------------------------------------------------- OGEN: the new classes' names under base-to-new


@pytest.fixture(scope="module")
def base2new_configs(tmp_path_factory):
    """The pocket default config (base2new) on a small pocket_noisy, prepared once, as the DAG's jobs read it:
    (config giving the new classes' names, the same config refusing them)."""
    tmp = tmp_path_factory.mktemp("names_only")
    cfg = yaml.safe_load(open("config/config.yaml"))
    cfg.update(
        experiment="names_only",
        data_root=str(tmp / "data"),
        results_root=str(tmp / "results"),
        reports_root=str(tmp / "reports"),
        datasets=["pocket_noisy"],
        shots=[2],
        seeds=[1],
        methods=["ogen"],
        method_overrides={"ogen": {"epochs": 5, "batch_size": 8, "warmup_epochs": 0}},
    )
    cfg["pocket"]["per_class"] = {"train": 2, "val": 2, "test": 1}
    cfg["features"]["train_views"] = 1
    paths = []
    for given in (True, False):
        path = tmp / f"config_{given}.json"
        path.write_text(json.dumps(validate({**cfg, "new_class_names": given})))
        paths.append(path)
    prepare_run_inputs(paths[0], "pocket_noisy", shots=2)
    return paths


def train_ogen(path, out):
    args = ["--dataset", "pocket_noisy", "--method", "ogen", "--shots", "2", "--seed", "1"]
    assert cli(["train", "--config", str(path), *args, "--out", str(out), "--quiet"]) == 0
    return json.loads((out / "metrics.json").read_text())


def test_ogen_gets_the_new_class_names_in_the_pocket_base2new_run_and_no_new_class_image(
    base2new_configs, tmp_path, monkeypatch
):
    path = base2new_configs[0]
    cfg = json.loads(path.read_text())
    classes = json.loads(grid.classes_path(cfg, "pocket_noisy").read_text())
    new_names = [classes["classnames"][i] for i in classes["new"]]

    read: list[str] = []  # every image whose features the run's context and the method's training read
    take = FeatureBank.take
    monkeypatch.setattr(FeatureBank, "take", lambda self, split, rows: read.extend(rows) or take(self, split, rows))
    cls = get_method("ogen")
    ctx, _, _ = build_context(cfg, "pocket_noisy", cls, 2, 1, torch.device("cpu"))
    assert ctx.unseen_classnames == new_names and not set(new_names) & set(ctx.classnames)
    m = cls(cls.make_config({"epochs": 5, "warmup_epochs": 0}), ctx)
    m.ogen_step.fill_(4)  # past the generator-only epoch: the unseen term is in the loss
    _, parts = m.loss(ctx.train_features[0], ctx.train_labels)
    assert "unseen" in parts and m.new_classnames_given == len(new_names)
    label_of = {row[0]: row[1] for rows in read_split(split_path(cfg, "pocket_noisy")).values() for row in rows}
    assert read and {label_of[r] for r in read} <= set(classes["base"])  # no new-class image read
    assert set(ctx.train_labels.tolist()) | set(ctx.val_labels.tolist()) <= set(range(len(classes["base"])))
    monkeypatch.undo()

    metrics = train_ogen(path, tmp_path / "given")
    assert metrics["new_class_names"] == len(new_names) and metrics["method_info"]["unseen_class_term"] is True


def test_a_config_can_refuse_the_new_class_names_and_the_run_records_it(base2new_configs, tmp_path):
    given, refused = (json.loads(p.read_text()) for p in base2new_configs)
    ctx, _, _ = build_context(refused, "pocket_noisy", get_method("ogen"), 2, 1, torch.device("cpu"))
    assert ctx.unseen_classnames is None
    metrics = train_ogen(base2new_configs[1], tmp_path / "refused")
    assert metrics["new_class_names"] == 0 and metrics["method_info"]["unseen_class_term"] is False
    assert method_config_hash(refused, "ogen") != method_config_hash(given, "ogen")  # a refused run is another run
    assert method_config_hash(refused, "coop") == method_config_hash(given, "coop")  # others are not re-run


# ---------------------------------------------------------------- descriptions per named source


def test_each_description_method_names_its_references_source_and_a_config_overrides_it():
    names = ("cupl", "cupl_ensemble", "msgcoop", "coprompt")
    presets = {name: get_method(name).make_config().descriptions for name in names}
    assert presets == {"cupl": "cupl", "cupl_ensemble": "cupl", "msgcoop": "msgcoop", "coprompt": "coprompt"}
    assert get_method("kapt").make_config().descriptions == "cupl"  # no reference code (assumption)
    assert get_method("tfup").make_config().descriptions == "cupl"  # its own files cover none of ours
    assert get_method("cupl").make_config({"descriptions": "msgcoop"}).descriptions == "msgcoop"
    assert set(store.list_sources()) == {"cupl", "msgcoop", "coprompt", "tfup", "pocket"}
    assert store.reference_file("coprompt", "OxfordPets")["path"] == "gpt_file/oxford_pets_prompt.json"


def test_cupl_on_imagenet_names_the_file_its_imagenet_script_reads(tmp_path, monkeypatch):
    ref = store.reference_file("cupl", "ImageNet")
    assert ref["path"] == "imagenet_prompts/CuPL_image_prompts.json"  # classify_imagenet.py's PATH_TO_PROMPTS
    assert ref["git_blob"] == "b5796c20e12c7448a9d78147fc9869b421d908d7"
    assert store.reference_file("cupl", "ImageNetSketch") is ref  # evaluated with ImageNet's classes
    assert store.reference_file("msgcoop", "DTD")["path"].endswith("descriptions_top4/DescribableTextures.json")
    monkeypatch.setenv("VLPROMPT_DESCRIPTIONS", str(tmp_path))
    with pytest.raises(store.DescriptionError) as err:
        store.load_descriptions("ImageNetV2", ["tench"], "cupl")
    message = str(err.value)
    assert "\n" not in message and "cupl/ImageNet.json does not exist" in message
    assert "imagenet_prompts/CuPL_image_prompts.json" in message and "b5796c20e12c" in message
    with pytest.raises(store.DescriptionError, match=r"unknown description source 'gpt'.*known"):
        store.load_descriptions("pocket_dark", ["red circle"], "gpt")


def test_two_methods_of_one_experiment_read_their_own_sources_and_record_them(
    pocket_random_backbone, tmp_path, monkeypatch
):
    names = ["banded", "blotchy"]
    monkeypatch.setenv("VLPROMPT_DESCRIPTIONS", str(tmp_path))
    for source, sentences in (("cupl", ["stripes.", "lines.", "bands."]), ("msgcoop", ["a striped texture."])):
        (tmp_path / source).mkdir()
        (tmp_path / source / "DTD.json").write_text(json.dumps({n: [f"{n} {s}" for s in sentences] for n in names}))
    ctx = context(pocket_random_backbone, names=names, dataset="DTD")
    records = {name: build(name, ctx).run_info()["descriptions"] for name in ("cupl", "msgcoop")}
    for name, record in records.items():
        path = tmp_path / name / "DTD.json"
        assert record["source"] == name and record["file"] == str(path)
        assert record["sha256"] == __import__("hashlib").sha256(path.read_bytes()).hexdigest()
        assert record["matches_reference"] is False and record["reference_file"].endswith(".json")
    assert build("msgcoop", ctx).anchors.shape[0] == 2
    overridden = build("cupl", ctx, descriptions="msgcoop").run_info()["descriptions"]
    assert overridden["file"] == str(tmp_path / "msgcoop" / "DTD.json")
    pocket = build("msgcoop", context(pocket_random_backbone)).run_info()["descriptions"]
    assert (pocket["source"], pocket["stands_in_for"], pocket["file"]) == ("pocket", "msgcoop", "pocket.json")


def test_the_reference_file_is_recognised_by_its_git_blob_id(tmp_path, monkeypatch):
    assert store.git_blob_id(b"hello\n") == "ce013625030ba8dba906f756967f9e9ca394464a"  # git hash-object
    content = json.dumps({"banded": ["bands."]}).encode()
    (tmp_path / "cupl").mkdir()
    (tmp_path / "cupl" / "DTD.json").write_bytes(content)
    monkeypatch.setenv("VLPROMPT_DESCRIPTIONS", str(tmp_path))
    monkeypatch.setitem(store.manifest()["cupl"]["files"]["DTD"], "git_blob", store.git_blob_id(content))
    assert store.source_record(None, "DTD", "cupl")["matches_reference"] is True


# ---------------------------------------------------------------- ATPrompt: the reference's slicing of attribute words


def test_atprompt_on_oxford_pets_offers_the_reference_slicing_by_default(pocket_random_backbone):
    tok = pocket_random_backbone.tokenizer
    ids = {w: int(tok([w])[0, 1]) for w in ("energy", "X")}
    play, fulness = (int(t) for t in tok(["playfulness"])[0, 1:3])
    ctx = context(pocket_random_backbone, dataset="OxfordPets")
    ref = build("atprompt", ctx)  # attributes "playfulness" (2 tokens), "energy"
    assert ref.config.attribute_tokens == "reference"
    pl = ref.prompt_learner
    assert pl.pos_att0[0].tolist() == [1, 2] and pl.pos_att1[0].tolist() == [4, 5] and pl.pos_ctx[0].tolist() == [7, 8]
    frozen = pl.tokens[0, [3, 6, 9]].tolist()  # what the reference keeps between its soft tokens
    assert frozen == [play, ids["X"], ids["X"]]  # "fulness" and "energy" are overwritten
    prompts = pl.prompts()
    assert torch.equal(prompts[0, 4], pl.slots["att1"][0]) and torch.equal(prompts[0, 7], pl.slots["ctx"][0])
    assert int(pl.tokens[0, 4]) == fulness and int(pl.tokens[0, 7]) == ids["energy"]

    full = build("atprompt", ctx, attribute_tokens="all").prompt_learner
    assert full.pos_att1[0].tolist() == [5, 6] and full.pos_ctx[0].tolist() == [8, 9]
    kept = full.tokens[0, [3, 4, 7]].tolist()
    assert kept == [play, fulness, ids["energy"]]
    with pytest.raises(Exception, match="attribute_tokens"):
        build("atprompt", ctx, attribute_tokens="some")


def test_atprompt_slicings_agree_where_every_attribute_is_one_token(pocket_random_backbone):
    ctx = context(pocket_random_backbone)  # pocket: "colour", "shape"
    ref, full = (build("atprompt", ctx, attribute_tokens=a).prompt_learner for a in ("reference", "all"))
    for name in ref.slots:
        assert torch.equal(getattr(ref, f"pos_{name}"), getattr(full, f"pos_{name}"))
    torch.testing.assert_close(ref(), full())


# ---------------------------------------------------------------- RESTORE: the text shift measured from the start


def test_restore_shift_is_zero_at_step_zero_whatever_the_datasets_template(pocket_random_backbone):
    ctx = context(pocket_random_backbone, dataset="DTD")
    ctx.template = "{} texture."  # DTD's: one of the 7 datasets whose template is not the context's initial words
    x, y = ctx.train_features[0, :6], ctx.train_labels[:6]
    m = build("restore", ctx)
    assert m.config.shift_from == "init"
    assert m.loss(x, y)[1]["shift"] == pytest.approx(0.0, abs=1e-10)
    old = build("restore", ctx, shift_from="template")  # measured from the template: non-zero before any step
    assert old.loss(x, y)[1]["shift"] > 1e-4
    torch.testing.assert_close(m.shift_origin, F.normalize(build("coop", ctx).prompt_learner(), dim=-1))
    with torch.no_grad():  # training moves the context: the origin stays the initial prompt, for new classes too
        m.prompt_learner.ctx.add_(0.5)
    m.set_classes(["cyan cross", "orange diamond"])
    reference = build("coop", ctx)
    reference.set_classes(["cyan cross", "orange diamond"])
    torch.testing.assert_close(m.shift_origin, F.normalize(reference.prompt_learner(), dim=-1))


# ---------------------------------------------------------------- MoCoOp: learnable parts by BPE tokens


def reference_words(part: str) -> int:
    """How the reference sizes a learnable part: words by ``split(" ")`` (0 for an empty part)."""
    return 0 if len(part) == 0 else len(part.split(" "))


@pytest.mark.parametrize(
    "template, agree",
    [
        ("a photo of a {}.", True),
        ("a photo of a {}, a type of aircraft.", True),
        ("itap of a {}.", False),  # "itap" is two BPE tokens, one word
        ("a pixelated photo of the {}.", False),
        ("{} texture.", False),  # after the name: " texture", two "words" for the reference
    ],
)
def test_mocoop_parts_are_sized_by_bpe_tokens_a_known_difference_from_the_reference(
    pocket_random_backbone, template, agree
):
    from vlprompt.clip.prompting import format_tokens
    from vlprompt.methods.mocoop import expert_pattern

    tok = pocket_random_backbone.tokenizer
    _, init = expert_pattern(template)
    ours = [format_tokens(tok, init[k]) if k in init else 0 for k in ("before", "after")]
    before, after = template.replace(".", "").split("{}")
    theirs = [reference_words(before[:-1]), reference_words(after)]  # the reference's prompt_template_before/after
    assert (ours == theirs) is agree


# ---------------------------------------------------------------- MVLPT: the source prompt averaged over three seeds


def test_mvlpt_runs_start_from_the_source_prompt_averaged_over_seeds_1_2_3_by_default():
    from vlprompt.experiment.config import load_config

    cfg = load_config("config/pocket_wave3.yaml")
    cls = get_method("mvlpt")
    assert cls.make_config().source_seeds == (1, 2, 3)  # the reference's avg_ckpt.py
    inputs = grid.train_inputs(cfg, "pocket_dark", "mvlpt", 16, 2)
    for seed in (1, 2, 3):
        assert grid.multitask_dir(cfg, "mvlpt", 16, seed) / "model.pt" in inputs
    own = {**cfg, "method_overrides": {"mvlpt": {"source_seeds": []}}}
    stages = [p for p in grid.train_inputs(own, "pocket_dark", "mvlpt", 16, 2) if "multitask" in str(p)]
    assert {p.parent for p in stages} == {grid.multitask_dir(cfg, "mvlpt", 16, 2)}


def test_the_averaged_source_prompt_is_the_mean_of_the_stages(tmp_path):
    from vlprompt.io import atomic_torch_save, atomic_write_json, file_record
    from vlprompt.training.context import load_multitask_prompt

    cfg = {"results_root": str(tmp_path), "experiment": "avg"}
    prompts = {s: torch.randn(4, 8, generator=torch.Generator().manual_seed(s)) for s in (1, 2, 3)}
    for seed, ctx in prompts.items():
        folder = grid.multitask_dir(cfg, "mvlpt", 2, seed)
        folder.mkdir(parents=True)
        atomic_torch_save(folder / "model.pt", {"state": {"prompt_learner.ctx": ctx}})
        atomic_write_json(folder / "metrics.json", {"artefacts": {"model.pt": file_record(folder / "model.pt")}})
    state = load_multitask_prompt(cfg, "mvlpt", 2, [1, 2, 3], torch.device("cpu"))
    torch.testing.assert_close(state["prompt_learner.ctx"], (prompts[1] + prompts[2] + prompts[3]) / 3)
    assert state["source"].startswith("mean of ") and state["source"].count("model.pt") == 3
    single = load_multitask_prompt(cfg, "mvlpt", 2, [2], torch.device("cpu"))
    assert torch.equal(single["prompt_learner.ctx"], prompts[2])
