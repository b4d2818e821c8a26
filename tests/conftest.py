import os

import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def pocket_random_backbone():
    """The tiny pocket CLIP architecture with random weights (no checkpoint needed)."""
    from vlprompt.clip.backbone import POCKET_MODEL, load_backbone

    torch.manual_seed(0)  # random weights independent of test order
    return load_backbone(POCKET_MODEL, None)


def tiny_pocket(root, n_colours: int, n_shapes: int, per_class: dict) -> tuple:
    """A small pocket_noisy-style dataset generated under ``root``: (root, its split in CoOp's format)."""
    import json

    from vlprompt.data import pocket

    ds = pocket.PocketDataset(name="Tiny", style="noisy", per_class=per_class)
    world = pocket.World(n_colours=n_colours, n_shapes=n_shapes)
    return root, json.loads(pocket.generate(ds, world, root, progress=False).read_text())


def prepare_run_inputs(config_path, dataset: str, shots: int, seed: int = 1, test_bank: bool = True) -> None:
    """What the DAG's jobs build before a training run, by the CLI: the dataset, its base/new classes, the few-shot
    subset, the test (and validation) bank unless ``test_bank`` is false, and the few-shot subset's bank."""
    from vlprompt.cli import main as cli

    fewshot = ["--shots", str(shots), "--seed", str(seed)]
    for cmd in (
        ["prepare"],
        ["classes"],
        ["fewshot", *fewshot],
        *([["extract"]] if test_bank else []),
        ["extract", *fewshot],
    ):
        assert cli([*cmd, "--config", str(config_path), "--dataset", dataset, "--quiet"]) == 0
