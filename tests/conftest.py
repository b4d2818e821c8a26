import os

import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def pocket_random_backbone():
    """The tiny pocket CLIP architecture with random weights (no checkpoint needed)."""
    from vlprompt.backbone import POCKET_MODEL, load_backbone

    torch.manual_seed(0)  # random weights independent of test order
    return load_backbone(POCKET_MODEL, None)
