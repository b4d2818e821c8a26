"""The DAG plans of the language-model configs (config/pocket_wave4c.yaml, base-to-new at 1 shot, and
config/pocket_wave4c_fewshot.yaml, 1 shot on all classes): the jobs each config builds, in a fresh clone (conftest's
config_plans). The fewshot config's test-time methods add the test views (shared by TPT and DiffTPT) and DiffTPT's
generated views, one job per dataset each; the searches need nothing beyond the feature bank."""

from test_e2e import planned_jobs

CONFIGS = ("config/pocket_wave4c.yaml", "config/pocket_wave4c_fewshot.yaml")


def test_the_language_model_configs_plan_their_jobs(config_plans):
    config_plans.prefetch([(c, True) for c in CONFIGS])  # in one process
    base = {
        "prepare_dataset": "4",
        "extract_test": "4",
        "sample_fewshot": "12",
        "split_classes": "4",
        "extract_fewshot": "12",
        "aggregate": "1",
        "report": "1",
        "all": "1",
    }
    # base2new: zeroshot and zeroshot_ensemble once per dataset; coop, pacbayes_prompt, proapo, ipo, llm_bbo per seed
    assert planned_jobs(config_plans, CONFIGS[0]) == {
        **base,
        "train_zeroshot": "8",
        "train_group": "20",
        "total": "67",
    }
    # fewshot: zeroshot, tpt and difftpt once per dataset; coop, llm_bbo, glov, ipo, proapo per seed
    assert planned_jobs(config_plans, CONFIGS[1]) == {
        **base,
        "extract_test_views": "4",
        "extract_generated_views": "4",
        "train_zeroshot": "12",
        "train_group": "20",
        "total": "79",
    }
