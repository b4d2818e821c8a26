"""Regenerate the fixtures of the searches with a language model (or a pool it wrote) in the loop, IPO, LLM-BBO and
ProAPO, from their official code:

    python tests/reference/regenerate_language_models.py --refs DIR

DIR holds checkouts of the repositories in ``REFERENCES`` (folder names as given there) at the commits listed.
Nothing of them is copied into vlprompt: each value in ``tests/data/language_model_fixtures.json`` is computed here
by the reference's own functions on the fixed inputs stored beside it. The functions are taken from the files' syntax
trees (``regenerate_extensions.function_from``), because the modules import what this machine lacks at import time
(OpenAI's client, Dassl, a GPU CLIP, transformers); what they are given instead:

* IPO (``optimization/opt_utils.py``): ``gen_meta_prompt``, ``gen_ins_and_score_pairs_substr`` and
  ``_bucketize_float`` with NumPy, called as ``run_evolution`` calls them with ``train.py``'s settings
  (gpt-3.5-turbo, "Q_beginning", both_instructions_and_exemplars, threshold 20, 30 instructions, 100 buckets).
  The loss is given as a float (the reference passes a tensor). ``polish_sentence`` from ``eval_utils.py`` on
  responses cut between <INS> and </INS> as ``run_evolution`` cuts them.
* LLM-BBO: ``prompt_pool.get_message`` (imported as is), ``getTopBotK`` and ``validate_message`` from ``utils.py``
  with Python's ``random`` seeded (``getTopBotK``'s third list is random; method_1 does not show it).
* GLOV (without guidance): ``generate_meta_prompt_llama`` and ``generate_examplers`` (``utils/opt_utils.py``; its
  ``mistakes`` None, as ``scripts/clip_opt.sh``), ``initialize_dict`` (``trainers/llama_model.py``),
  ``parse_json_respones`` with ``args.llm = "llama"`` and ``get_previous_prompts`` on a pandas frame
  (``utils/llm_opt_helpers.py``). ``--only glov`` rewrites that part of the file alone.
* ProAPO: ``get_acc_scores`` and ``get_redundant_matrix_score_l2_norm`` (``get_score_based_ACC.py``), ``accuracy``,
  ``get_fitness_score`` and ``random_weighted_choice`` (``utils/util_model.py``), on CPU (``Tensor.cuda`` returns
  the tensor), with the 1-shot template stage's weights.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from regenerate_extensions import function_from  # noqa: E402

REFERENCES = {  # folder under --refs: (repository, commit the fixtures were generated from)
    "IPO": ("lmsdss/IPO", "ac804a9"),
    "LLMBBO": ("shihongl1998/LLM-as-a-blackbox-optimizer", "6612c84"),
    "ProAPO": ("MorningStarOvO/ProAPO", "fefdf18"),
    "GLOV": ("jmiemirza/GLOV", "4c4fe64"),
}
OUT = Path(__file__).parents[1] / "data" / "language_model_fixtures.json"

IPO_HISTORIES = [
    [["a photo of a <CLASS>.", 62.5, 1.2345, -1]],
    [
        ["a photo of a <CLASS>.", 62.5, 1.2345, -1],
        ["A blurry picture of a <CLASS>.", 75.0, 0.9876, 0],
        ["A <CLASS> on a dark background.", 12.5, 2.5, 0],
        ["An image of a <CLASS> shape.", 75.0, 0.8, 1],
        ["A <CLASS>.", 20.0, 1.9, 1],
    ],
]
IPO_DESCRIPTIONS = "Image_0:The image shows a red circle.\n\nImage_1:The image shows a blue square.\n"
IPO_RESPONSES = [
    "<INS>a sketch of a <CLASS>.</INS>",
    "Sure! <INS> **a** photo of the <CLASS>, small.</INS> done",
    "no tags at all <CLASS>",
    "<INS>x",
]
BBO_POOLS = [
    {"a photo of a {}.": 0.5, "a {} in the wild.": 0.75, "art of a {}.": 0.25, "a {}.": 0.5, "my {}.": 0.0},
    {"t1 {}": 0.1, "t2 {}": 0.9, "t3 {}": 0.4, "t4 {}": 0.9},
]
BBO_RESPONSES = ["- a picture of a {}.", "Here:\n- a {} seen up close.\n- a {} drawing.", "- no slot", "- bad {0} {}"]


def gen_ipo(refs: Path) -> dict:
    path = refs / "IPO" / "optimization" / "opt_utils.py"
    ns: dict = {"np": np}
    for name in ("_bucketize_float", "gen_ins_and_score_pairs_substr", "gen_meta_prompt"):
        function_from(path, name, ns)
    polish = function_from(refs / "IPO" / "optimization" / "eval_utils.py", "polish_sentence", {})
    prompts = [
        ns["gen_meta_prompt"](
            old_instructions_and_scores=[tuple(h) for h in history],
            instruction_pos="Q_beginning",
            optimizer_llm_name="gpt-3.5-turbo",
            old_instruction_score_threshold=20,
            max_num_instructions=30,
            meta_prompt_type="both_instructions_and_exemplars",
            few_shot_qa_pairs=False,
            instructions_before_exemplars=True,
            num_score_buckets=100,
            dataset_name="prompt_learning",
            task_name="train",
            descrip_str=IPO_DESCRIPTIONS,
        )
        for history in IPO_HISTORIES
    ]
    accuracy = function_from(refs / "IPO" / "dassl" / "metrics" / "accuracy.py", "compute_accuracy", {})
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(7, 5, generator=gen) * 3  # 7 images: a percentage that float32 rounds
    labels = torch.tensor([0, 1, 2, 3, 4, 0, 1])
    scoring = {  # forward_backward_llm: compute_accuracy(output, label)[0].item() and F.cross_entropy
        "logits": logits.tolist(),
        "labels": labels.tolist(),
        "accuracy": accuracy(logits, labels)[0].item(),
        "loss": F.cross_entropy(logits, labels).item(),
    }
    parsed = []
    for raw in IPO_RESPONSES:  # run_evolution's cut, then polish_sentence
        start = raw.index("<INS>") + len("<INS>") if "<INS>" in raw else 0
        end = raw.index("</INS>") if "</INS>" in raw else len(raw)
        parsed.append(polish(raw[start:end].strip()))
    return {
        "histories": IPO_HISTORIES,
        "descriptions": IPO_DESCRIPTIONS,
        "meta_prompts": prompts,
        "responses": IPO_RESPONSES,
        "parsed": parsed,
        "scoring": scoring,
    }


def gen_llm_bbo(refs: Path) -> dict:
    root = refs / "LLMBBO"
    sys.path.insert(0, str(root))
    from prompt_pool import get_message

    ns: dict = {"random": random}
    top_bot = function_from(root / "utils.py", "getTopBotK", ns)
    validate = function_from(root / "utils.py", "validate_message", ns)
    messages, selections = [], []
    for pool in BBO_POOLS:
        ranked = sorted(pool.items(), key=lambda kv: kv[1], reverse=True)  # as the script ranks prompt_dict
        random.seed(0)
        good, bad, _ = top_bot(ranked, 3)
        selections.append([good, bad])
        messages.append(get_message("method_1", "\n".join(good), "\n".join(bad), "", 1, "dtd"))
    return {
        "pools": BBO_POOLS,
        "selections": selections,
        "messages": messages,
        "responses": BBO_RESPONSES,
        "validated": [validate(r) for r in BBO_RESPONSES],
    }


def gen_proapo(refs: Path) -> dict:
    root = refs / "ProAPO" / "tools"
    torch.Tensor.cuda = lambda self, *a, **k: self  # CPU
    util = function_from(root / "utils" / "util_model.py", "accuracy", {"torch": torch})
    ns: dict = {"torch": torch, "F": F, "accuracy": util}
    function_from(
        root / "models" / "APO_score_func" / "get_score_based_ACC.py", "get_redundant_matrix_score_l2_norm", ns
    )
    acc_scores = function_from(root / "models" / "APO_score_func" / "get_score_based_ACC.py", "get_acc_scores", ns)
    fitness = function_from(root / "utils" / "util_model.py", "get_fitness_score", {})
    choice = function_from(root / "utils" / "util_model.py", "random_weighted_choice", {"np": np})
    gen = torch.Generator().manual_seed(0)
    x = F.normalize(torch.randn(12, 16, generator=gen), dim=-1)
    y = torch.arange(12) % 6
    w = F.normalize(torch.randn(6, 16, generator=gen) + 2 * x[:6], dim=-1)
    model = types.SimpleNamespace(logit_scale=torch.tensor(100.0).log())
    *_, acc1, acc5, extra = acc_scores(x, y, w, model, return_detail_flag=True, analysis_flag=True)
    scores = {"top1": acc1, "top5": acc5, **{k: extra[k] for k in ("redundant_score_l2_norm", "inter_class_score_CE")}}
    args = types.SimpleNamespace(
        score_top_1_rate=0.005,
        score_top_5_rate=0.008,
        score_redundant_score_l2_norm=0.05,
        score_inter_class_score_CE=10,
    )
    items = [f"t{i} {{}}" for i in range(7)]
    weights = [3, 1, 2, 2, 1, 3, 1]
    draws = []
    for seed, k, reverse in ((0, 2, False), (1, 3, False), (2, 1, True), (3, 4, True)):
        np.random.seed(seed)
        draws.append({"seed": seed, "k": k, "reverse": reverse, "chosen": choice(items, weights, k, reverse=reverse)})
    return {
        "image_features": x.tolist(),
        "labels": y.tolist(),
        "text_features": w.tolist(),
        "logit_scale": 100.0,
        "scores": scores,
        "rates": vars(args),
        "fitness": fitness(args, scores),
        "choice_items": items,
        "choice_weights": weights,
        "choices": draws,
    }


class FaissKmeansStandIn:
    """``faiss.Kmeans(d, k, niter, seed)`` as ``split_group_based_on_Kmeans`` calls it (``train``, then
    ``index.search(x, 1)``). faiss is not installable here: Lloyd's iterations of scikit-learn from k points drawn by
    the seed, the call vlprompt's ``kmeans_clusters`` makes, so the fixture checks the reference's choice of k, its
    silhouette test and its grouping, not faiss's own draws."""

    def __init__(self, d: int, k: int, niter: int = 25, seed: int = 1):
        self.k, self.niter, self.seed = k, niter, seed

    def train(self, x):
        from sklearn.cluster import KMeans

        self.model = KMeans(n_clusters=self.k, init="random", n_init=1, max_iter=self.niter, random_state=self.seed)
        self.model.fit(np.asarray(x, dtype=np.float64))
        self.index = self

    def search(self, x, n):
        return None, self.model.predict(np.asarray(x, dtype=np.float64))[:, None]


def proapo_group_case(n_cls: int, seed: int) -> dict:
    """Fixed inputs of one grouping case: class features in five clusters, one image per class near its class (a
    few near another's), and the offsets from the baseline fitness of the classes' importance scores."""
    gen = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(5, 16, generator=gen), dim=-1)
    w = F.normalize(centres[torch.arange(n_cls) % 5] + 0.15 * torch.randn(n_cls, 16, generator=gen), dim=-1)
    x = w + 0.3 * torch.randn(n_cls, 16, generator=gen)
    x[: n_cls // 4] += 0.8 * w[torch.arange(n_cls // 4) + 1]  # some images confused with the next class
    x = F.normalize(x, dim=-1)
    offsets = (torch.randn(n_cls, generator=gen) * 0.3).tolist()
    return {"text_features": w.tolist(), "image_features": x.tolist(), "labels": list(range(n_cls)), "offsets": offsets}


def gen_proapo_groups(refs: Path) -> dict:
    """``init_category_group_split_based_Kmeans`` (``tools/models/APO_split_group/split_group_by_Kmeans.py``) with
    option.py's defaults for 1 shot, on fixed class and image features: its own ``split_group_based_on_Kmeans``
    (faiss as :class:`FaissKmeansStandIn`), ``get_acc_scores_and_dict_quick_and_group``, ``sorted_dict`` and
    ``get_fitness_score``; the text features given (``get_prompt_dict`` and ``get_text_features`` return them) and the
    importance scores given as offsets from the baseline's fitness (``evaluate_category_important_score`` returns
    them sorted by the reference's ``sorted_dict`` in its insertion order: the baseline, then ``acc_dict``'s)."""
    import tempfile

    from sklearn import metrics

    root = refs / "ProAPO" / "tools"
    torch.Tensor.cuda = lambda self, *a, **k: self  # CPU
    util = root / "utils" / "util.py"
    ns: dict = {"torch": torch, "F": F, "np": np, "json": json, "os": __import__("os"), "tqdm": lambda it: it}
    ns["accuracy"] = function_from(root / "utils" / "util_model.py", "accuracy", {"torch": torch})
    ns["get_fitness_score"] = function_from(root / "utils" / "util_model.py", "get_fitness_score", {})
    for name in ("sorted_dict", "sorted_dict_by_key"):
        ns[name] = function_from(util, name, {})
    score_file = root / "models" / "APO_score_func" / "get_score_based_ACC.py"
    function_from(score_file, "get_redundant_matrix_score_l2_norm", ns)
    function_from(score_file, "get_acc_scores_and_dict_quick_and_group", ns)
    kmeans_file = root / "models" / "APO_split_group" / "split_group_by_Kmeans.py"
    ns.update(metrics=metrics, faiss=types.SimpleNamespace(Kmeans=FaissKmeansStandIn), save_json=lambda *a: None)
    function_from(kmeans_file, "split_group_based_on_Kmeans", ns)
    init = function_from(kmeans_file, "init_category_group_split_based_Kmeans", ns)
    model = types.SimpleNamespace(logit_scale=torch.tensor(100.0).log())
    cases = []
    for n_cls, seed in ((8, 0), (30, 1)):
        case = proapo_group_case(n_cls, seed)
        names = [f"class {i}" for i in range(n_cls)]
        w, x = torch.tensor(case["text_features"]), torch.tensor(case["image_features"])
        offsets = dict(zip(names, case["offsets"], strict=True))
        ns["get_prompt_dict"] = lambda args, template, classes: {c: [c] for c in classes}
        ns["get_text_features"] = lambda model, tokenizer, prompt_dict, w=w: w
        seen = {}

        def importance(args, model, acc_dict, *rest, offsets=offsets, seen=seen):
            baseline = rest[-1]["fitness_score"]
            seen["baseline"] = baseline
            return ns["sorted_dict"]({"baseline": baseline, **{c: baseline + offsets[c] for c in acc_dict}})

        ns["evaluate_category_important_score"] = importance
        args = types.SimpleNamespace(
            description_sample_flag=False,
            description_init_flag=False,
            unable_same_template_flag=False,
            threshold_confuse=4,
            threshold_group_mode="overall",
            max_num_consider=min(n_cls, int(np.log(n_cls) * 10)),
            task_analysis_dir=tempfile.mkdtemp(),
            task_name="fixture",
            seed=seed,
            unable_category_important_score_flag=False,
            delete_category_base_important_score_flag=False,
            num_bad_delete_rate=(1 - 0.2) * 0.5,
            num_consider_category_each_group=int(np.log(n_cls) * 2.5),
            not_consider_performance_flag=False,
            ablation_mode="full",
            num_K_means_max_rate=0.2,
            score_top_1_rate=0.08,
            score_top_5_rate=0,
            score_redundant_score_l2_norm=0,
            score_inter_class_score_CE=10,
        )
        groups, *_ = init(args, model, None, names, x, torch.tensor(case["labels"]), ["a photo of a {}."])
        case.update(
            seed=seed,
            baseline_fitness=seen["baseline"],
            groups=[[int(k), [names.index(c) for c in g]] for k, g in groups.items()],
        )
        cases.append(case)
    return {"cases": cases}


GLOV_DATASET = ("pocket_dark", "The pocket_dark dataset consists of small dark renderings of coloured shapes.")
GLOV_ROWS = [
    (["A photo of a <category>."], [41.66666666666667]),
    (["A dark photo of a <category>.", "A <category> shape.", "A picture of a <category>."], [50.0, 12.5, 41.0]),
    (["A <category> in the dark.", "An image of a <category>."], [75.5, 50.0]),
]
GLOV_RESPONSES = [
    "Here is a new prompt template: A dark photo of a <category>.",
    "assistant\n\nA sketch of a <category>: small",
    "A <category> on a dark background.",
    "no template here",
]


def gen_glov(refs: Path) -> dict:
    import pandas as pd

    root = refs / "GLOV"
    ns: dict = {"re": __import__("re"), "np": np}
    examplers = function_from(root / "utils" / "opt_utils.py", "generate_examplers", ns)
    ns["generate_examplers"] = examplers
    meta = function_from(root / "utils" / "opt_utils.py", "generate_meta_prompt_llama", ns)
    init_dict = function_from(root / "trainers" / "llama_model.py", "initialize_dict", ns)
    parse = function_from(root / "utils" / "llm_opt_helpers.py", "parse_json_respones", ns)
    previous = function_from(root / "utils" / "llm_opt_helpers.py", "get_previous_prompts", ns)
    name, info = GLOV_DATASET
    infos = {name: info}
    out: dict = {"dataset": name, "description": info, "rows": GLOV_ROWS, "responses": GLOV_RESPONSES}
    accuracy = np.array(GLOV_ROWS[0][1])
    _, _, step0 = meta(name, "a photo of a <category>.", 0, accuracy, infos, None, None, 5)
    out["meta_prompt_step0"] = step0
    out["meta_prompts"], out["histories"] = [], []
    for n_rows in (1, 2, 3):  # the history after 1, 2 and 3 logged rows (one row: k = 0)
        df = pd.DataFrame([{"Prompts": p, "Accuracy": a} for p, a in GLOV_ROWS[:n_rows]])
        prompts, accs = previous(df)
        out["histories"].append([[str(p), float(a)] for p, a in zip(prompts, accs, strict=True)])
        _, system, task = meta(name, "a photo of a <category>.", n_rows, accuracy, infos, prompts, accs, 5)
        out["meta_prompts"].append(task)
        out["system"] = system
    args = types.SimpleNamespace(llm="llama")
    parsed, _ = parse(init_dict(GLOV_RESPONSES), 0, args=args)
    out["parsed"] = parsed
    return out


GLOV_SOURCE = (
    "jmiemirza/GLOV utils/opt_utils.py generate_meta_prompt_llama, generate_examplers, trainers/llama_model.py "
    "initialize_dict, utils/llm_opt_helpers.py parse_json_respones, get_previous_prompts, commit 4c4fe64"
)


PROAPO_GROUPS_SOURCE = (
    "MorningStarOvO/ProAPO tools/models/APO_split_group/split_group_by_Kmeans.py "
    "init_category_group_split_based_Kmeans and split_group_based_on_Kmeans (faiss.Kmeans replaced by "
    "scikit-learn's, FaissKmeansStandIn), "
    "get_score_based_ACC.py get_acc_scores_and_dict_quick_and_group, commit fefdf18"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--refs", type=Path, required=True)
    parser.add_argument("--only", choices=["glov", "proapo_groups"], help="regenerate that part of the file alone")
    opts = parser.parse_args()
    refs = opts.refs
    if opts.only == "proapo_groups":
        data = json.loads(OUT.read_text())
        data["_source"]["proapo_groups"] = PROAPO_GROUPS_SOURCE
        data["proapo_groups"] = gen_proapo_groups(refs)
        OUT.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
        print(f"wrote {OUT} (proapo_groups)")
        return
    if opts.only == "glov":
        data = json.loads(OUT.read_text())
        data["_source"]["glov"] = GLOV_SOURCE
        data["references"]["GLOV"] = {"repository": REFERENCES["GLOV"][0], "commit": REFERENCES["GLOV"][1]}
        data["glov"] = gen_glov(refs)
        OUT.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
        print(f"wrote {OUT} (glov)")
        return
    data = {
        "_source": {
            "ipo": "lmsdss/IPO optimization/opt_utils.py gen_meta_prompt, eval_utils.py polish_sentence and "
            "dassl/metrics/accuracy.py compute_accuracy, commit ac804a9",
            "llm_bbo": "shihongl1998/LLM-as-a-blackbox-optimizer prompt_pool.py get_message and utils.py getTopBotK, "
            "validate_message, commit 6612c84",
            "proapo": "MorningStarOvO/ProAPO tools/models/APO_score_func/get_score_based_ACC.py get_acc_scores and "
            "tools/utils/util_model.py get_fitness_score, random_weighted_choice, commit fefdf18",
        },
        "references": {k: {"repository": r, "commit": c} for k, (r, c) in REFERENCES.items()},
        "ipo": gen_ipo(refs),
        "llm_bbo": gen_llm_bbo(refs),
        "proapo": gen_proapo(refs),
        "glov": gen_glov(refs),
    }
    data["_source"]["glov"] = GLOV_SOURCE
    data["_source"]["proapo_groups"] = PROAPO_GROUPS_SOURCE
    data["proapo_groups"] = gen_proapo_groups(refs)
    OUT.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
