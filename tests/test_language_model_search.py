"""Searches with a language model in the loop (IPO, LLM-BBO) or a pool it wrote (ProAPO), and their proposers.

Against the references' own functions (``tests/data/language_model_fixtures.json``, written by
``tests/reference/regenerate_language_models.py``): IPO's meta-prompt and response parsing, LLM-BBO's message, its
good/bad selection and response check, ProAPO's fitness and weighted draws. Then the proposers: a recorded toy trace
(``tests/data/traces``, made by the rule proposer through the recording path the live adapter uses) replays
bit-exactly, and an altered score stops the replay at the step whose meta-prompt it changes, with one line.

Re-record the toy traces (only when the meta-prompt or the search changes on purpose):
``python tests/test_language_model_search.py --record tests/data/traces``.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from test_methods_wave2 import build, context  # noqa: E402
from vlprompt.clip.backbone import encode_prompts  # noqa: E402
from vlprompt.data import descriptions as store  # noqa: E402
from vlprompt.data.descriptions import DescriptionError, pocket_template_pool, template_pool  # noqa: E402
from vlprompt.methods import MethodError, get_method, glov, ipo, llm_bbo, proapo  # noqa: E402
from vlprompt.methods.proposers import (  # noqa: E402
    Recording,
    Request,
    RuleProposer,
    Sampling,
    TraceMiss,
    TraceReplayer,
    TraceWriter,
    pocket_vocabulary,
    read_trace,
    text_hash,
    trace_path,
)

FIXTURES = json.loads((Path(__file__).parent / "data" / "language_model_fixtures.json").read_text())
TRACES = Path(__file__).parent / "data" / "traces"
TOY = {"ipo": {"steps": 4, "per_step": 3}, "llm_bbo": {"steps": 4}, "glov": {"steps": 3}}


@pytest.fixture(scope="module")
def ctx(pocket_random_backbone):
    return context(pocket_random_backbone, per_class=1)


# ---------------------------------------------------------------- against the references' functions


def test_ipo_meta_prompt_equals_the_reference_string():
    f = FIXTURES["ipo"]
    for history, expected in zip(f["histories"], f["meta_prompts"], strict=True):
        assert ipo.meta_prompt([tuple(h) for h in history], f["descriptions"]) == expected
    changed = [list(h) for h in f["histories"][1]]
    changed[1][1] = 76.0  # one score differs: the string must differ
    assert ipo.meta_prompt([tuple(h) for h in changed], f["descriptions"]) != f["meta_prompts"][1]


def test_ipo_parses_responses_and_scores_as_the_reference():
    from vlprompt.methods.template_search import accuracy_and_loss

    f = FIXTURES["ipo"]
    assert [ipo.parse_response(r) for r in f["responses"]] == f["parsed"]
    s = f["scoring"]
    acc, loss = accuracy_and_loss(torch.tensor(s["logits"]), torch.tensor(s["labels"]))
    assert acc == s["accuracy"] and repr(acc) == repr(s["accuracy"])  # the digits the meta-prompt shows
    assert loss == pytest.approx(s["loss"], rel=1e-6)


def test_llm_bbo_message_selection_and_check_equal_the_reference():
    f = FIXTURES["llm_bbo"]
    for pool, (good, bad), expected in zip(f["pools"], f["selections"], f["messages"], strict=True):
        ranked = [t for t, _ in sorted(pool.items(), key=lambda kv: kv[1], reverse=True)]
        assert list(llm_bbo.top_bottom(ranked, 3)) == [good, bad]
        assert llm_bbo.message(good, bad) == expected
    assert llm_bbo.message(["a {}"], ["b {}"]) != f["messages"][0]
    assert [llm_bbo.valid_templates(r) for r in f["responses"]] == f["validated"]


def test_proapo_fitness_and_weighted_draws_equal_the_reference():
    f = FIXTURES["proapo"]
    x, y, w = (torch.tensor(f[k]) for k in ("image_features", "labels", "text_features"))
    scores = proapo.acc_scores(f["logit_scale"] * x @ w.T, y, w)
    for k, v in f["scores"].items():
        assert scores[k] == pytest.approx(v, rel=1e-6, abs=1e-6), k
    r = f["rates"]
    rates = [r[k] for k in ("score_top_1_rate", "score_top_5_rate", "score_redundant_score_l2_norm")]
    assert proapo.fitness(scores, *rates, r["score_inter_class_score_CE"]) == pytest.approx(f["fitness"], rel=1e-6)
    for d in f["choices"]:
        rng = np.random.RandomState(d["seed"])
        got = proapo.weighted_choice(f["choice_items"], f["choice_weights"], d["k"], rng, reverse=d["reverse"])
        assert got == d["chosen"]


def test_proapo_operators_draw_as_the_reference_lines():
    pool = [f"t{i} {{}}" for i in range(6)]
    parent = ["t1 {}", "t4 {}", "t5 {}"]
    rest = ["t0 {}", "t2 {}", "t3 {}"]
    expect = np.random.RandomState(3)  # the reference's calls, in its order, on the same stream
    add = expect.choice(rest, 1, replace=False).tolist()
    remove = expect.choice(parent, 1, replace=False).tolist()
    out, into = expect.choice(parent, 1, replace=False), expect.choice(rest, 1, replace=False)
    mutation = expect.choice(pool, 3, replace=False).tolist()
    rng = np.random.RandomState(3)
    assert proapo.op_add(parent, pool, rng) == parent + add
    assert proapo.op_remove(parent, rng) == [t for t in parent if t != remove[0]]
    assert proapo.op_replace(parent, pool, rng) == [t for t in parent if t != out[0]] + [str(into[0])]
    assert proapo.op_mutation(pool, 3, rng) == mutation
    common, diff = proapo.crossover_parts([["a", "b"], ["a", "c"], ["a", "b", "d"]])
    assert common == ["a"] and diff == {"b": 2, "c": 1, "d": 1}
    child = proapo.op_crossover(common, diff, np.random.RandomState(0), random.Random(0))
    assert child[-1] == "a" and set(child[:-1]) <= {"b", "c", "d"} and len(set(child)) == len(child)


def test_proapo_description_operators_draw_as_the_reference_lines():
    """The description stage's operators on fixed draws: the reference's calls (class_specific_selection_with_
    same_template.py, add_one and mean sampling), in its order, on the same streams."""
    pool = [f"c{k}**+*+**d{i}" for k in range(2) for i in range(3)]
    parent = ["c0", "c1", "c0**+*+**d1", "c1**+*+**d2"]
    in_group = list(parent)
    rest = [e for e in pool if e not in parent]
    baseline = ["c0", "c1"]
    expect = np.random.RandomState(5)
    add = expect.choice(rest, 1, replace=False).tolist()
    remove = expect.choice(in_group, 1, replace=False).tolist()
    out, into = expect.choice(in_group, 1, replace=False), expect.choice(rest, 1, replace=False)
    mutation = expect.choice(pool, 3, replace=False).tolist()
    rng = np.random.RandomState(5)
    assert proapo.op_add(parent, pool, rng) == parent + add
    assert proapo.desc_remove(parent, in_group, rng) == [e for e in parent if e != remove[0]]
    replaced = [e for e in parent if e != out[0]] + [str(into[0])]
    assert proapo.desc_replace(parent, in_group, pool, rng) == replaced
    assert proapo.desc_mutation(pool, 3, baseline, rng) == mutation + baseline
    common, diff = proapo.crossover_parts([["c0", "c1", "x"], ["c0", "c1", "y"], ["c0", "c1", "x", "z"]])
    expect_py, expect_np = random.Random(2), np.random.RandomState(2)
    k = expect_py.randint(1, len(diff))  # random.randint(num_other_group, len(diff_template)), one other entry
    drawn = proapo.weighted_choice(list(diff), list(diff.values()), k, expect_np)
    got = proapo.desc_crossover(common, diff, 1, np.random.RandomState(2), random.Random(2))
    assert got == drawn + ["c0", "c1"]


def test_proapo_entry_prompts_are_the_reference_template_and_description():
    got = proapo.entry_prompts(["a photo of a {}.", "art of the {}."], ["Red Circle", "red circle**+*+**which is red."])
    assert got == [
        "a photo of a red circle.",
        "a photo of a red circle. which is red.",
        "art of the red circle.",
        "art of the red circle. which is red.",
    ]


def test_the_pocket_description_pool_is_generated_by_rule():
    pool = store.pocket_description_pool("red circle")
    assert "which is red." in pool and "drawn as a circle." in pool and "on a striped background." in pool
    assert all("blue" not in d for d in pool)
    pools, source = store.description_pool("pocket_dark", ["red circle", "blue star"])
    assert set(pools) == {"red circle", "blue star"} and "rule" in source


def test_proapo_description_stage_changes_only_classes_it_searched_and_reloads(ctx):
    m = build("proapo", ctx, epochs=1, description_epochs_outer=1, description_epochs_inner=2, description_groups=1)
    m.fit(ctx)
    info = m.run_info()
    assert info["stage"].endswith("class-specific descriptions") and info["descriptions"]["sets_scored"] > 0
    assert set(m.descriptions) <= set(ctx.classnames)
    for name, entries in m.descriptions.items():
        assert entries and all(e.split("**+*+**")[0] == name for e in entries)
    x = ctx.train_features[0]
    again = build("proapo", ctx)
    again.load_trainable_state(m.trainable_state())
    assert torch.equal(again(x), m(x))
    template_only = build("proapo", ctx, epochs=1, description_epochs_outer=0)
    template_only.fit(ctx)
    assert template_only.descriptions == {} and template_only.templates == m.templates
    changed = [ctx.classnames.index(c) for c in m.descriptions]
    same = [i for i in range(len(ctx.classnames)) if i not in changed]
    torch.testing.assert_close(m.weights[same], template_only.weights[same])
    if changed:
        assert (m.weights[changed] - template_only.weights[changed]).abs().max() > 0
    assert m.score_weights(m.weights, *train_xy(ctx))["fitness_score"] >= (
        template_only.score_weights(template_only.weights, *train_xy(ctx))["fitness_score"] - 1e-6
    )


def train_xy(ctx):
    x = ctx.train_features[0]
    return x / x.norm(dim=-1, keepdim=True), ctx.train_labels


def test_glov_meta_prompts_parsing_and_ranking_equal_the_reference():
    f = FIXTURES["glov"]
    acc0 = f["rows"][0][1][0]
    system, user = glov.meta_prompt(f["dataset"], f["description"], 0, acc0)
    assert user == f["meta_prompt_step0"] and system == f["system"]
    for n_rows, (history, expected) in enumerate(zip(f["histories"], f["meta_prompts"], strict=True), 1):
        rows = f["rows"][:n_rows]
        ranked = glov.sort_history([t for ts, _ in rows for t in ts], [a for _, accs in rows for a in accs])
        assert [[t, a] for t, a in ranked] == history
        assert glov.meta_prompt(f["dataset"], f["description"], n_rows, acc0, ranked)[1] == expected
    assert glov.parse_responses(f["responses"]) == f["parsed"]
    changed = [(t, a + 1) for t, a in f["histories"][0]]  # one score moved: another meta-prompt
    assert glov.meta_prompt(f["dataset"], f["description"], 1, acc0, changed)[1] != f["meta_prompts"][0]


def test_glov_without_guidance_searches_through_the_proposer_and_reloads(ctx):
    m = build("glov", ctx, steps=3)
    assert m.fit(ctx) is True
    info = m.run_info()
    assert info["proposer"]["kind"] == "rule" and info["guidance"].startswith("none")
    assert 1 <= len(info["chosen_step_ensemble"]) <= 3 and m.template.split("\n") == info["chosen_step_ensemble"]
    x = ctx.train_features[0]
    again = build("glov", ctx)
    again.load_trainable_state(m.trainable_state())
    assert torch.equal(again(x), m(x))
    by_hand = torch.stack(
        [
            F.normalize(encode_prompts(ctx.backbone, [t.format(c) for t in m.template.split("\n")]).mean(0), dim=-1)
            for c in ctx.classnames
        ]
    )
    torch.testing.assert_close(m.weights, by_hand)
    assert "white-box" in (glov.__doc__ or "")


# ---------------------------------------------------------------- the methods


@pytest.mark.parametrize("name", ["proapo", "ipo", "llm_bbo"])
def test_each_search_fits_classifies_new_classes_and_reloads(ctx, name):
    cls = get_method(name)
    assert cls.family == "discrete prompt" and cls.paper and not cls.reads_test_views
    small = {"proapo": {"epochs": 2}, "ipo": {"steps": 2, "per_step": 2}, "llm_bbo": {"steps": 2}}[name]
    m = build(name, ctx, **small)
    assert m.fit(ctx) is True
    info = m.run_info()
    assert info["proposer"]["kind"] in ("rule", "pool")
    before = m(ctx.train_features[0])
    again = build(name, ctx)
    again.load_trainable_state(m.trainable_state())
    assert torch.equal(again(ctx.train_features[0]), before)
    m.set_classes(["cyan cross", "orange diamond"])
    assert m(ctx.train_features[0]).shape == (len(ctx.train_labels), 2)


def test_the_search_reads_no_test_split(ctx):
    asked = []
    ctx2 = context(ctx.backbone, per_class=1, load_split=lambda name: asked.append(name))
    for name in ("proapo", "ipo", "llm_bbo"):
        build(name, ctx2, **{"proapo": {"epochs": 1}, "ipo": {"steps": 1}, "llm_bbo": {"steps": 1}}[name]).fit(ctx2)
    assert set(asked) == {"train_plain"}


def test_proapo_is_seeded_and_its_best_set_is_at_least_the_start(ctx):
    a, b = build("proapo", ctx, epochs=2), build("proapo", ctx, epochs=2)
    a.fit(ctx), b.fit(ctx)
    assert a.templates == b.templates
    first = a.info["train_scores"]["fitness_score"]
    x = ctx.train_features[0] / ctx.train_features[0].norm(dim=-1, keepdim=True)
    start = a.evaluate(["a photo of a {}."], x, ctx.train_labels)["fitness_score"]
    assert first >= start - 1e-9


def test_ipo_pocket_image_descriptions_name_each_shot():
    text = ipo.pocket_image_descriptions(["red circle", "blue square"], [0, 1], "dark")
    assert text.count("Image_") == 2 and "red circle" in text and "dark rendering" in text
    assert text.split("\n")[1] == ""  # the lines joined by "\n" after each line's own end, as the reference


def test_template_pools_rule_and_missing_file(tmp_path, monkeypatch):
    pool = pocket_template_pool()
    assert pool[0] == "a photo of a {}." and all(t.count("{}") == 1 for t in pool) and len(set(pool)) == len(pool)
    monkeypatch.setenv("VLPROMPT_DESCRIPTIONS", str(tmp_path))
    with pytest.raises(DescriptionError, match="templates/DTD.json"):
        template_pool("DTD")
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "DTD.json").write_text(json.dumps(["a {} texture.", "a {} texture."]))
    assert template_pool("DTD")[0] == ["a {} texture."]


def test_glov_replay_is_the_hand_built_ensemble_of_the_reference_fill_rule(ctx, tmp_path):
    from vlprompt.clip.backbone import encode_prompts
    from vlprompt.methods.glov_replay import fill

    assert fill("a {} photo.", "cat") == "a cat photo."
    assert fill("no slot here", "cat") is None and fill("a {x} of {}", "cat") is None
    assert fill("a {} and a {}", "cat") == "a cat and a cat"
    lists = {"pocket_dark": ["a {} shape.", "no slot", "a {} and a {}."], "Other": ["x {}"]}
    path = tmp_path / "glov.json"
    path.write_text(json.dumps({"lov_guidance_templates_clip": lists, "lov_templates_clip": {"pocket_dark": ["{}"]}}))
    m = build("glov_replay", ctx, prompts_file=str(path))
    for i, c in enumerate(ctx.classnames):
        feats = encode_prompts(ctx.backbone, [f"a {c} shape.", f"a {c} and a {c}."])
        assert torch.allclose(m.weights[i], torch.nn.functional.normalize(feats.mean(0), dim=-1), atol=1e-6)
    assert m.run_info()["list"] == "lov_guidance_templates_clip['pocket_dark']"
    assert build("glov_replay", ctx, prompts_file=str(path), guidance=False).templates == ["{}"]
    with pytest.raises(MethodError, match="no 'lov_guidance_templates_clip' list for 'ImageNet'"):
        build("glov_replay", ctx, prompts_file=str(path), dataset_name="ImageNet")
    with pytest.raises(MethodError, match="is not a file"):
        build("glov_replay", ctx)


# ---------------------------------------------------------------- proposers and traces


def test_rule_proposer_is_seeded_keeps_the_slot_and_says_it_is_not_a_language_model():
    history = (("a photo of a <CLASS>.", 50.0), ("a <CLASS> drawing.", 75.0))
    request = Request(0, "meta", 6, history, "<INS>{}</INS>", "<CLASS>")
    a, b = RuleProposer(pocket_vocabulary(), 1), RuleProposer(pocket_vocabulary(), 1)
    out = a.propose(request)
    assert out == b.propose(request) and out != RuleProposer(pocket_vocabulary(), 2).propose(request)
    assert all(r.startswith("<INS>") and "<CLASS>" in r for r in out)
    assert "not a language model" in a.record()["about"]


def test_live_proposer_needs_its_optional_package_or_says_so(monkeypatch):
    from vlprompt.methods import proposers

    monkeypatch.setitem(sys.modules, "openai", None)  # as if not installed: never called in tests
    with pytest.raises(MethodError, match="optional package openai"):
        proposers.LiveProposer(Sampling())


def test_a_malformed_or_missing_trace_is_one_line(tmp_path):
    with pytest.raises(MethodError, match="no trace at"):
        read_trace(tmp_path / "none.jsonl")
    bad = tmp_path / "t.jsonl"
    bad.write_text(json.dumps({"step": 0, "meta_prompt": "x"}) + "\n")
    with pytest.raises(MethodError, match="lacks") as e:
        read_trace(bad)
    assert "\n" not in str(e.value)
    rec = {"step": 0, "meta_prompt": "x", "meta_prompt_sha256": text_hash("y"), "model": "m", "sampling": {}}
    bad.write_text(json.dumps({**rec, "responses": []}) + "\n")
    with pytest.raises(MethodError, match="not the SHA-256"):
        read_trace(bad)


def record_toy_traces(root: Path, backbone) -> None:
    """The committed toy traces: each search on the 1-shot toy with the rule proposer, every step written through
    the recording path (what ``proposer: live`` writes), and the found template beside it."""
    toy = context(backbone, per_class=1)
    for name, settings in TOY.items():
        m = build(name, toy, **settings)
        path = trace_path(root, name, toy.dataset, toy.seed)
        writer = TraceWriter(path, Sampling(model="rule proposer (toy trace)"))
        m.make_proposer = lambda m=m, w=writer: Recording(RuleProposer(pocket_vocabulary(), m.seed), w)
        m.fit(toy)
        path.with_name(f"seed{toy.seed}.expected.json").write_text(json.dumps({"template": m.template}) + "\n")


@pytest.mark.parametrize("name", list(TOY))
def test_the_recorded_toy_trace_replays_bit_exactly(ctx, name):
    path = trace_path(TRACES, name, ctx.dataset, ctx.seed)
    expected = json.loads(path.with_name(f"seed{ctx.seed}.expected.json").read_text())
    recorded = read_trace(path)
    m = build(name, ctx, **TOY[name], proposer="trace", trace_dir=str(TRACES))
    m.fit(ctx)
    info = m.run_info()["proposer"]
    assert m.template == expected["template"]
    assert info["kind"] == "trace" and info["steps_replayed"] == len(recorded)
    reference = build(name, ctx, **TOY[name])  # the same search on the rule proposer directly
    reference.fit(ctx)
    assert reference.template == expected["template"]
    assert torch.equal(m.weights, reference.weights)


def test_an_altered_score_stops_the_replay_at_the_step_it_changes(ctx, monkeypatch):
    recorded = read_trace(trace_path(TRACES, "ipo", ctx.dataset, ctx.seed))
    calls = []
    original = ipo.IPO.score

    def altered(self, template, x, y):
        calls.append(template)
        acc, loss = original(self, template, x, y)
        return (99.0, loss) if len(calls) == 2 else (acc, loss)  # the first template scored at step 0

    monkeypatch.setattr(ipo.IPO, "score", altered)
    m = build("ipo", ctx, **TOY["ipo"], proposer="trace", trace_dir=str(TRACES))
    with pytest.raises(TraceMiss) as e:
        m.fit(ctx)
    message = str(e.value)
    assert "\n" not in message and "diverged at step 1:" in message
    assert recorded[1]["meta_prompt_sha256"][:16] in message


def test_the_replayer_refuses_a_step_the_trace_lacks(tmp_path):
    path = tmp_path / "t.jsonl"
    writer = TraceWriter(path, Sampling())
    writer.write(Request(0, "hello", 1), ["- a {}"])
    replayer = TraceReplayer(path)
    assert replayer.propose(Request(0, "hello", 1)) == ["- a {}"]
    with pytest.raises(TraceMiss, match="step 1: .* records none"):
        replayer.propose(Request(1, "hello", 1))


def test_the_summary_and_the_report_say_which_proposer_answered(tmp_path):
    from vlprompt.analysis.aggregate import summary_table
    from vlprompt.analysis.report.render import _proposers_section

    rule = RuleProposer(pocket_vocabulary(), 1).record()
    files = []
    for method, info in (("ipo", {"proposer": rule}), ("zeroshot", {})):
        path = tmp_path / f"{method}.json"
        metrics = {"method": method, "protocol": "base2new", "dataset": "pocket_dark", "shots": 1, "seed": 1}
        path.write_text(json.dumps({**metrics, "base_acc": 50.0, "new_acc": 40.0, "hm": 44.4, "method_info": info}))
        files.append(path)
    summary = summary_table({"shots": [1], "seeds": [1]}, files)
    assert summary.set_index("method").proposer.to_dict()["ipo"].startswith("rule: rule-based stand-in, not a")
    section = _proposers_section(summary)
    assert section is not None and "not a language model" in str(vars(section))
    assert _proposers_section(summary[summary.method == "zeroshot"].drop(columns="proposer")) is None


def test_re_recording_the_toy_traces_gives_the_same_bytes(tmp_path):
    """docs/language_models.md's command, writing into a temporary folder: the committed traces come out again."""
    import subprocess

    from doc_commands import REPO, commands

    (line,) = commands("record_toy_traces", {"tests/data/traces": str(tmp_path)})
    subprocess.run(line.replace("python ", f"{sys.executable} ", 1), shell=True, cwd=REPO, check=True)
    made = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert made == sorted(p.relative_to(TRACES) for p in TRACES.rglob("*") if p.is_file())
    for path in made:
        assert (tmp_path / path).read_bytes() == (TRACES / path).read_bytes(), path


if __name__ == "__main__" and "--record" in sys.argv:
    from vlprompt.clip.backbone import POCKET_MODEL, load_backbone

    args = sys.argv[sys.argv.index("--record") + 1 :]
    folder = Path(args[0]) if args else TRACES
    torch.manual_seed(0)  # as conftest's pocket_random_backbone
    record_toy_traces(folder, load_backbone(POCKET_MODEL, None))
    print(f"recorded the toy traces under {folder}")


def test_proapo_groups_equal_the_reference_kmeans_grouping():
    """``init_category_group_split_based_Kmeans`` on fixed features (tests/reference/regenerate_language_models.py,
    ``--only proapo_groups``): the confusion groups, the K-means clusters and their choice of k, the important
    classes and those left out, merged in the reference's order, with its quirks (a class twice in a group)."""
    for case in FIXTURES["proapo_groups"]["cases"]:
        w = torch.tensor(case["text_features"])
        x, y = torch.tensor(case["image_features"]), torch.tensor(case["labels"])
        n = len(y)
        logits = 100.0 * x @ w.T
        ce = {k: float(F.cross_entropy(logits[y == k], y[y == k])) for k in range(n)}
        base = case["baseline_fitness"]
        importance = {k: base + case["offsets"][k] for k in sorted(ce, key=lambda k: ce[k])}
        size, max_consider = int(np.log(n) * 2.5), min(n, int(np.log(n) * 10))
        first, deleted = proapo.importance_groups(importance, base, size, int(n * 0.4))
        confusion = proapo.confusion_groups(logits, y, 4.0, max_consider)
        clusters = proapo.kmeans_clusters(w.double().numpy(), case["seed"], 0.2)
        got = proapo.merge_groups(first, confusion, clusters, deleted, size, max_consider)
        assert [[key, group] for key, group in got] == case["groups"]


def test_proapo_kmeans_clusters_as_the_reference_chooses_k():
    from sklearn.metrics import silhouette_score

    gen = torch.Generator().manual_seed(3)
    centres = F.normalize(torch.randn(5, 8, generator=gen), dim=-1) * 10
    points = (centres[torch.arange(35) % 5] + 0.01 * torch.randn(35, 8, generator=gen)).double().numpy()
    two = proapo.kmeans_clusters(points[[0, 5, 10, 15, 1, 6, 11, 16]], seed=0)  # C = 8: k = 2 only
    assert two is not None and two[:4].tolist() == [two[0]] * 4 and two[4:].tolist() == [1 - two[0]] * 4
    five = proapo.kmeans_clusters(points, seed=0)  # C = 35: k over range(5, 7, 2), one run from random classes
    assert five is not None and len(set(five.tolist())) == 5 and silhouette_score(points, five) > 0
    spread = np.eye(6)  # equidistant classes: no k with a positive silhouette, none (the reference: no cluster)
    assert proapo.kmeans_clusters(spread, seed=0) is None


def test_proapo_grouping_options(ctx):
    with pytest.raises(MethodError, match="description_grouping"):
        build("proapo", ctx, description_grouping="random")
    for grouping in ("kmeans", "accuracy"):
        m = build(
            "proapo",
            ctx,
            epochs=1,
            description_epochs_outer=1,
            description_epochs_inner=1,
            description_grouping=grouping,
        )
        m.fit(ctx)
        assert ("groups" in m.run_info()) == (grouping == "kmeans")


def test_proapo_groups_carry_the_previous_groups_best_sets(ctx, monkeypatch):
    """``use_top1``: the second group starts from the first group's best sets (the best one replaced by the new
    group's baseline, its score kept), the others extended by the new group's baseline entries; off, afresh."""
    calls = []
    real = proapo.ProAPO.evolve_group

    def spy(self, members, baseline_entries, base_scores, memory, score, rng, rng_py, initial=None):
        out = real(self, members, baseline_entries, base_scores, memory, score, rng, rng_py, initial)
        calls.append((members, baseline_entries, initial, out))
        return out

    monkeypatch.setattr(proapo.ProAPO, "evolve_group", spy)
    settings = dict(epochs=1, description_epochs_outer=2, description_epochs_inner=1, description_groups=2)
    for carry in (True, False):
        calls.clear()
        build("proapo", ctx, description_grouping="accuracy", description_carry=carry, **settings).fit(ctx)
        assert len(calls) >= 2 and calls[0][2] is None
        if not carry:
            assert all(initial is None for _, _, initial, _ in calls)
            continue
        for (_, _, _, (_, _, ranked)), (members, baseline_entries, initial, _) in zip(calls, calls[1:], strict=False):
            records = list(initial.values())
            assert records[0] == (baseline_entries, ranked[0][1])  # the new baseline, the best one's score
            for (entries, _), (old, _) in zip(records[1:], ranked[1 : len(records)], strict=True):
                assert entries[: len(old)] == old
                held = {e.partition("**+*+**")[0] for e in entries}
                assert set(members) <= held
