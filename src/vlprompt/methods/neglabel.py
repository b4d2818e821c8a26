"""NegLabel: zero-shot OOD detection with negative labels (Jiang et al., ICLR 2024).

Paper: "Negative Label Guided OOD Detection with Pretrained Vision-Language Models". Reference code for the score:
the ``OneOodPromptPostprocessor`` of YBZh/OpenOOD-VLM (804f331, ``openood/postprocessors/
oneoodprompt_postprocessor.py``, the score of ``scripts/ood/neglabel/official.sh`` and of LAPT's ``test.sh``;
read, not copied; ``tests/test_ood.py`` checks :func:`grouped_id_score` against a fixture written by it).

    NegMining:  d_i = percentile_η({ -cos(ỹ_i, w_c) }_c)  for every candidate label ỹ_i;  keep the M largest
    logits(x)  = [cos(x, w_1..C), cos(x, ỹ_1..M)] / τ
    group g of the negatives (a random permutation, seed 0, split into G groups; the remainder dropped):
        s_g(x) = Σ_{c ≤ C} softmax([logits_ID, logits_neg∈g])_c
    s(x) = mean_g s_g(x)

Classification is zero-shot CLIP's over the ID classes (the negatives never change a prediction). The candidates
come from a vocabulary (:mod:`vlprompt.data.negative_labels`): rule-made pocket words, or a WordNet list file the
user names (``negatives: file:<path>``). Defaults are the paper's (τ = 0.01, η = 0.05, M = 10 000); the number of
groups defaults to 1 because the pocket vocabulary holds tens of words (the paper groups 10 000 labels; set
``groups`` as it does for WordNet). The percentile is over ID labels as in the paper's equation; the vocabulary's
text features use the dataset's template, as the ID classes do.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch

from vlprompt.clip.prompting import text_classifier
from vlprompt.data.negative_labels import negative_labels
from vlprompt.methods.base import MethodContext, normalize, register
from vlprompt.methods.zeroshot import ZeroShot


def grouped_id_score(id_logits: torch.Tensor, neg_logits: torch.Tensor, groups: int, seed: int = 0) -> torch.Tensor:
    """(N,) mean over ``groups`` random groups of negatives of the softmax mass on the ID classes.

    ``id_logits`` (N, C), ``neg_logits`` (N, M); M % groups negatives are dropped from the end, the rest permuted
    by ``torch.randperm`` from ``seed`` and split into equal groups, as the reference does."""
    n, m = neg_logits.shape
    if not 1 <= groups <= m:
        raise ValueError(f"groups must be in [1, {m}] (the number of negative labels), got {groups}")
    keep = m - m % groups
    perm = torch.randperm(keep, generator=torch.Generator().manual_seed(seed)).to(neg_logits.device)
    grouped = neg_logits[:, :keep][:, perm].reshape(n, groups, keep // groups)  # (N, G, M/G)
    scores = [
        torch.cat([id_logits, grouped[:, g]], dim=-1).softmax(-1)[:, : id_logits.shape[1]].sum(-1)
        for g in range(groups)
    ]
    return torch.stack(scores, dim=-1).mean(-1)


def mine_negatives(id_text: torch.Tensor, candidates: torch.Tensor, count: int, percentile: float) -> torch.Tensor:
    """Indices of the ``count`` candidates farthest from the ID labels (NegMining): the ``percentile`` of each
    candidate's negative cosine similarities to the ID labels, largest first. Rows are unit vectors."""
    distance = torch.quantile(-(candidates @ id_text.T), percentile, dim=1)  # (M,)
    return distance.topk(min(count, len(distance))).indices.sort().values


@dataclasses.dataclass(frozen=True)
class NegLabelConfig:
    template: str | None = None  # None: the dataset's hand-crafted template, as zero-shot CLIP
    negatives: str = "pocket:words"  # the vocabulary (vlprompt.data.negative_labels): pocket:*, or file:<path>
    n_negatives: int = 10000  # M (the paper's); a smaller vocabulary is used whole
    percentile: float = 0.05  # η of NegMining (the paper's)
    temperature: float = 0.01  # τ on the cosine similarities (the paper's)
    groups: int = 1  # G; the paper groups its 10 000 WordNet labels, the pocket vocabulary has tens
    group_seed: int = 0  # the reference's permutation seed


@register
class NegLabel(ZeroShot):
    name = "neglabel"
    paper = "Jiang et al., Negative Label Guided OOD Detection with Pretrained Vision-Language Models, ICLR 2024"
    description = "zero-shot CLIP; OOD score: softmax mass on ID classes against mined negative labels"
    Config: ClassVar[type] = NegLabelConfig

    negative_weights: torch.Tensor  # (M, D) normalised text features of the mined negative labels

    def __init__(self, config: NegLabelConfig, ctx: MethodContext):
        super().__init__(config, ctx)
        self.mine(ctx.classnames)

    def mine(self, id_classnames: list[str]) -> None:
        """Choose the negative labels against ``id_classnames`` (the classes the model detects as ID)."""
        candidates = negative_labels(self.config.negatives, id_classnames)
        cand = text_classifier(self.backbone, self.templates, candidates)  # (M0, D)
        keep = mine_negatives(self.weights, cand, self.config.n_negatives, self.config.percentile)
        self.negative_names = [candidates[i] for i in keep.tolist()]
        self.register_buffer("negative_weights", cand[keep], persistent=False)

    @torch.no_grad()
    def ood_score(self, image_features: torch.Tensor) -> torch.Tensor:
        x = normalize(image_features)
        tau = self.config.temperature
        return grouped_id_score(
            x @ self.weights.T / tau, x @ self.negative_weights.T / tau, self.config.groups, self.config.group_seed
        )

    def run_info(self) -> dict:
        return {**super().run_info(), "negative_labels": self.negative_names}
