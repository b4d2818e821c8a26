"""The tiny OpenAI-layout CLIP that the reference-equivalence fixtures are computed on.

Shared by ``regenerate.py`` (which loads it into each official reference's ``clip.build_model``) and
``tests/test_reference_equivalence.py`` (which loads it into vlprompt through open_clip, from a local
weights file, as a user's checkpoint would be loaded).

Architecture: ViT with 32 px images, 8 px patches, vision width 64 (1 head), text width 128 (2 heads; OpenAI's
``build_model`` derives the heads as width // 64), 3 blocks per tower, embedding dimension 32, OpenAI's 77-token
context and 49408-token vocabulary, QuickGELU. The two widths and the embedding dimension differ so that a
confusion between them cannot pass unnoticed; three blocks let prompts of depth 2 leave one block that carries
the prompt positions along.

Weights: ``fixtures/tiny_clip.pt`` holds every tensor (fp16 values, loaded as fp32, so both sides see the
same numbers exactly) except the token-embedding table, which would be 49408 × 128 values. Its rows are an
integer hash of (token id, column) instead, exact on every platform (:func:`token_embedding`).
The logit scale is ln 100 stored in fp16, like OpenAI CLIP's saturated value in its fp16 checkpoints, so
exp(logit_scale) = 100.03 (Tip-Adapter's reference hard-codes 100).
"""

from __future__ import annotations

from pathlib import Path

import torch

FIXTURES = Path(__file__).resolve().parent / "fixtures"
WEIGHTS = FIXTURES / "tiny_clip.pt"
MODEL_NAME = "VLPromptRefTinyCLIP"
VOCAB, CONTEXT = 49408, 77
EMBED_DIM, TEXT_WIDTH, VISION_WIDTH, LAYERS, IMAGE, PATCH = 32, 128, 64, 3, 32, 8

OPEN_CLIP_CONFIG = {  # the same architecture as an open_clip model config
    "embed_dim": EMBED_DIM,
    "quick_gelu": True,
    "vision_cfg": {"image_size": IMAGE, "layers": LAYERS, "width": VISION_WIDTH, "head_width": 64, "patch_size": PATCH},
    "text_cfg": {
        "context_length": CONTEXT,
        "vocab_size": VOCAB,
        "width": TEXT_WIDTH,
        "heads": TEXT_WIDTH // 64,
        "layers": LAYERS,
    },
}


def token_embedding(vocab: int = VOCAB, width: int = TEXT_WIDTH) -> torch.Tensor:
    """(vocab, width) values in [-0.025, 0.025): a multiplicative hash of (id, column) in int64, scaled by a power
    of two and 0.05, so every platform computes the same float32 numbers."""
    ids = torch.arange(vocab, dtype=torch.int64).unsqueeze(1)
    cols = torch.arange(width, dtype=torch.int64).unsqueeze(0)
    h = (ids * 1103515245 + cols * 2654435761 + 12345) % 2147483648
    h = (h * 1103515245 + 1013904223) % 2147483648  # a second round mixes ids and columns
    return ((h >> 15) % 65536).to(torch.float32) / 65536 * 0.05 - 0.025


def state_dict(path: Path = WEIGHTS) -> dict[str, torch.Tensor]:
    """The full OpenAI-layout state dict (fp32): the stored tensors plus the hashed token embedding."""
    stored = torch.load(path, map_location="cpu", weights_only=True)
    out = {k: v.float() for k, v in stored["weights"].items()}
    out["token_embedding.weight"] = token_embedding()
    return out


def inputs() -> dict:
    """The fixed inputs stored with the weights (images, labels, class names, views, validation images), fp32."""
    stored = torch.load(WEIGHTS, map_location="cpu", weights_only=True)
    return {
        k: (v.float() if torch.is_tensor(v) and v.is_floating_point() else v)
        for k, v in stored.items()
        if k != "weights"
    }
