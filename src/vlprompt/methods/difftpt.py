"""DiffTPT: TPT on test views from a diffusion model as well as augmentations (Feng et al., "Diverse Data
Augmentation with Diffusions for Effective Test-time Prompt Tuning", ICCV 2023, arXiv 2308.06038).

Reference implementation read (not copied): chunmeifeng/DiffTPT at commit 03f1169: ``difftpt_utils.py``
(``diffuData``: the views of one test image; ``select_confident_samples_cosine``; ``avg_entropy``;
``test_time_tuning_difftpt``), ``tpt_classification.py`` (``--aug_mode difftpt``: ``AugMixAugmenter`` with
``n_views = batch_size``, the prediction on the original view, ``model.reset()`` per image) and
``scripts/do_tpt_difftpt.sh`` (batch 64, "a photo of a", lr 5e-3, 4 steps, cosine share 0.8, entropy share 0.3).

TPT (:mod:`vlprompt.methods.tpt`) with more views. For each test image: the original, ``views - 1`` augmented views
(the reference: 64, as ``AugMixAugmenter(n_views=64)`` returns the original and 64 crops) and ``generated_views``
views generated from it (the reference: 63 Stable Diffusion image variations, made beforehand). With the logits
l_0 (original), l_1 … l_{V+G−1} (the others, augmented first) at the initial context:

    k = ⌊(V + G − 1) · ρ_cos⌋ views i ≥ 1 of largest cos(l_0, l_i)        (the cosine filter, on logits as the code)
    S = the ⌊(k + 1) · ρ_ent⌋ of {0} ∪ those of lowest entropy H(softmax(l_i))
    L(v) = − Σ_c p̄_c log p̄_c,  p̄ = (1/|S|) Σ_{i ∈ S} softmax(l_i(v))           (TPT's average entropy)

with S fixed after the first of the ``tta_steps`` AdamW steps (lr 5e-3), the prediction on the original view with
the tuned context, and the context reset for the next image. :func:`select_cosine_then_confident` is checked against
the reference's formula on fixed tensors (tests/test_language_model_search.py).

The generator is the assumption. No diffusion model runs here. On the pocket world the renderer stands in as an
*idealised image-variation model* (:func:`vlprompt.data.pocket.render_variation`): it re-draws the test image's
object with fresh pose, position, size, colour jitter and background, in the dataset's style. It reads the image's
rendering record (its class), which Stable Diffusion never sees, so every view that keeps its class keeps it
exactly: an upper bound on what image variations preserve. ``wrong_class_rate`` (an assumption: the paper does not
measure how often a variation changes the class) is the share of generated views drawn as a visually close class
(one colour or one shape changed), which the cosine filter is there to remove. The generated views are a part of the
feature bank (``test_generated<G>_pocketvar-p<rate>``, under the test transform, as the reference loads its
generated images); each run's ``method_info`` names the generator. Real datasets (or any dataset whose
``generated_images.<dataset>.by_image`` the config names): the generated views are read from that folder, in the
layout the reference's ``image_generator_R.py`` writes and ``diffuData`` reads (``<folder>/<dir>/<stem>_<i>.<suffix>``
for the test image ``<dir>/<stem>.<suffix>``; :mod:`vlprompt.data.generated_images`), into the bank
``test_generated<G>_folder-<key>`` (the key a hash of the folder's listing), through the same extraction;
``wrong_class_rate`` is then unused.

Other deviations: TPT's (cached views, random resized crops without AugMix, fp32).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from vlprompt.methods.base import MethodContext, MethodError, register
from vlprompt.methods.tpt import TPT, TPTConfig


@dataclasses.dataclass(frozen=True)
class DiffTPTConfig(TPTConfig):
    views: int = 65  # the original and 64 augmented views (AugMixAugmenter(n_views=batch_size) in difftpt mode)
    generated_views: int = 63  # image variations per test image (batch_size - 1)
    wrong_class_rate: float = 0.0  # assumption: share of generated views of a close class (the stand-in's)
    selection_cosine: float = 0.8  # share of the non-original views kept by cosine similarity of logits
    selection: float = 0.3  # then the share of lowest entropy (selection_selfentro)
    tta_steps: int = 4


def select_cosine_then_confident(logits: torch.Tensor, cosine_share: float, entropy_share: float) -> torch.Tensor:
    """Indices (B, m) into the V views of the views DiffTPT averages; logits (B, V, C), view 0 the original.

    The ⌊(V − 1)·cosine_share⌋ other views whose logits are most cosine-similar to the original's, the original
    put first, then the ⌊(k + 1)·entropy_share⌋ of those of lowest entropy (``select_confident_samples_cosine``;
    ties in the order of the views)."""
    cos = F.cosine_similarity(logits[:, :1], logits[:, 1:], dim=-1)  # (B, V - 1)
    k = int(cos.shape[1] * cosine_share)
    near = cos.argsort(dim=-1, descending=True, stable=True)[:, :k] + 1  # (B, k) view indices
    kept = torch.cat([torch.zeros_like(near[:, :1]), near], dim=1)  # (B, k + 1), the original first
    chosen = logits.gather(1, kept.unsqueeze(-1).expand(-1, -1, logits.shape[-1]))
    logp = chosen.log_softmax(-1)
    entropy = -(logp.exp() * logp).sum(-1)  # (B, k + 1)
    m = max(1, int(kept.shape[1] * entropy_share))
    return kept.gather(1, entropy.argsort(dim=-1, stable=True)[:, :m])


@register
class DiffTPT(TPT):
    name = "difftpt"
    paper = "Feng et al., Diverse Data Augmentation with Diffusions for Effective Test-time Prompt Tuning, ICCV 2023"
    description = "TPT on augmented and generated views, kept by cosine similarity of logits to the original's"
    Config = DiffTPTConfig

    def __init__(self, config: DiffTPTConfig, ctx: MethodContext):
        if config.generated_views < 0 or not 0 < config.selection_cosine <= 1:
            raise MethodError("difftpt: generated_views >= 0 and 0 < selection_cosine <= 1")
        if not 0 <= config.wrong_class_rate <= 1:
            raise MethodError("difftpt: wrong_class_rate must be in [0, 1]")
        super().__init__(config, ctx)
        self.generated_folder = ctx.generated_views

    def select_views(self, logits: torch.Tensor) -> torch.Tensor:
        c = self.config
        expected = c.views + c.generated_views
        if logits.shape[1] != expected:
            raise MethodError(
                f"difftpt: {logits.shape[1]} views per test image, {expected} expected (views + generated_views); "
                "re-extract the test views"
            )
        return select_cosine_then_confident(logits, c.selection_cosine, c.selection)

    def run_info(self) -> dict:
        c = self.config
        if self.generated_folder:
            from vlprompt.data.generated_images import provenance

            return {
                "generator": {
                    "kind": "folder",
                    "about": "generated views read from a folder of images made elsewhere (by_image layout)",
                    "generated_views": c.generated_views,
                    **provenance(self.generated_folder),
                }
            }
        return {
            "generator": {
                "kind": "pocket_variation",
                "about": "the pocket renderer as an idealised image-variation model (stand-in for Stable Diffusion "
                "image variations): it re-draws the test image's class with fresh nuisance factors, reading the "
                "image's rendering record",
                "generated_views": c.generated_views,
                "wrong_class_rate": c.wrong_class_rate,
            }
        }
