"""FuDD: follow-up differential descriptions (Esfandiarpoor & Bach, "Follow-Up Differential Descriptions: Language
Models Resolve Ambiguities for Image Classification", ICLR 2024, arXiv 2311.07593).

Reference implementation read (not copied): BatsResearch/fudd at commit 3226423, fudd_model.py (``FuDD.forward``,
``image_logit_pred``, ``get_text_embeddings``), prompt_factory.py (``get_prompts``, ``get_cls_pair_prompts``),
argument_parser.py and create_results.sh (``--follow_up --source gpt``, ``--topk 10``).

Step one is zero-shot CLIP with one template ("a photo of a {}.", the reference's ``single_template``). For an image
x, the ambiguous classes A(x) are its top-k classes (k = 10). For every pair of them a language model has written
differential descriptions, sentences that tell the two classes apart (the class's own side of each pair); class c's
follow-up embedding pools its side of every pair with the other ambiguous classes, each sentence once:

    S_c(x) = ∪_{c' ∈ A(x) \\ {c}} D(c | c'),        w_c(x) = normalize( mean_{s ∈ S_c(x)} normalize(E_text(s)) )
    logits_c(x) = s · normalize(f(x)) · w_c(x)ᵀ  for c ∈ A(x),   −∞ for the other classes

A pair the description file lacks contributes "a photo of a {class}." for both classes, as the reference does.
The language model runs offline: the descriptions come from the description store
(vlprompt.data.descriptions.differential_descriptions): FuDD's published files for the real datasets where they are
saved (none is shipped: the repository has no licence), and on the pocket world a documented rule that writes, for
two classes, one sentence per attribute in which they differ (colour, shape): a stand-in for the language model
that knows exactly what tells pocket classes apart. A user dataset without FuDD's files gets its template sentence
for every pair (so FuDD equals zero-shot CLIP there). Every run records which it used (``method_info``).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from vlprompt.clip.backbone import encode_prompts
from vlprompt.data.descriptions import differential_descriptions
from vlprompt.methods.base import MethodContext, MethodError, normalize, register
from vlprompt.methods.zeroshot import ZeroShot


@dataclasses.dataclass(frozen=True)
class FuDDConfig:
    top_k: int = 10  # ambiguous classes per image (the reference's --topk)
    template: str | None = "a photo of a {}."  # step one (the reference's single_template); None: the dataset's


@register
class FuDD(ZeroShot):
    name = "fudd"
    family = "class descriptions"
    paper = (
        "Esfandiarpoor & Bach, Follow-Up Differential Descriptions: Language Models Resolve Ambiguities for "
        "Image Classification, ICLR 2024"
    )
    description = "zero-shot top-k classes, then re-ranked with descriptions that tell those classes apart"
    Config = FuDDConfig

    def __init__(self, config: FuDDConfig, ctx: MethodContext):
        if config.top_k < 2:
            raise MethodError(f"fudd: top_k must be at least 2 (the ambiguous classes), got {config.top_k}")
        self.dataset = ctx.dataset
        self.sentence_features: dict[str, torch.Tensor] = {}  # every differential sentence encoded once
        super().__init__(config, ctx)  # step one: zero-shot CLIP with the template

    def set_classes(self, classnames: list[str]) -> None:
        self.classnames = list(classnames)
        self.store = differential_descriptions(self.dataset, self.classnames)
        super().set_classes(classnames)

    def follow_up_sentences(self, ambiguous: list[int]) -> list[list[str]]:
        """S_c for each ambiguous class c (index into the current classes), each sentence once, in a fixed order."""
        out: list[dict[str, None]] = [{} for _ in ambiguous]
        for i in range(len(ambiguous)):
            for j in range(i + 1, len(ambiguous)):
                si, sj = self.store.pair(self.classnames[ambiguous[i]], self.classnames[ambiguous[j]])
                out[i].update(dict.fromkeys(si))
                out[j].update(dict.fromkeys(sj))
        return [list(s) for s in out]

    def encode(self, sentences: list[str]) -> None:
        missing = sorted({s for s in sentences if s not in self.sentence_features})
        if missing:
            feats = encode_prompts(self.backbone, missing)  # (n, D) normalised
            self.sentence_features.update(zip(missing, feats, strict=True))

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        f = normalize(image_features)  # (B, D)
        k = min(self.config.top_k, len(self.classnames))
        top = (f @ self.weights.T).topk(k, dim=-1).indices  # (B, k) ambiguous classes, most likely first
        sentences = [self.follow_up_sentences(row.tolist()) for row in top]
        self.encode([s for per_image in sentences for group in per_image for s in group])
        logits = torch.full((len(f), len(self.classnames)), float("-inf"), device=f.device)
        for i, per_image in enumerate(sentences):
            w = F.normalize(
                torch.stack([torch.stack([self.sentence_features[s] for s in group]).mean(0) for group in per_image]),
                dim=-1,
            )  # (k, D)
            logits[i, top[i]] = self.logit_scale * f[i] @ w.T.to(f.device)
        return logits

    def run_info(self) -> dict:
        return {"differential_descriptions": self.store.source, "top_k": self.config.top_k}
