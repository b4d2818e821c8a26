"""Where the newer methods read what their references read: MoCoOp's ImageNet templates (the reference's YAML,
trailing comments included), OGEN's new-class names under base-to-new (names only, declared and recorded), and
the smaller points of the second fidelity pass. Tiny random pocket CLIP, one thread."""

import pytest

from reference.mocoop_templates import templates_and_groups
from test_methods_wave2 import build, context
from vlprompt.methods.atprompt import per_dataset

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
