# Frozen image features, extracted once per backbone x dataset (test, few-shot val, augmented train views).

FEATURES_DIR = grid.FEATURES.format(
    results=CFG["results_root"], backbone=grid.backbone_key(CFG), dataset="{dataset}"
)


rule extract_features:
    input:
        split=rules.prepare_dataset.output,
        fewshot=rules.split_dataset.output.fewshot,
    output:
        multiext(
            f"{FEATURES_DIR}/",
            "test.npy",
            "test.json",
            "val.npy",
            "val.json",
            "train_views.npy",
            "train_views.json",
        ),
    params:
        config=CONFIG_JSON,
        settings=grid.stage_hash(CFG, "extract"),
    resources:
        gpu=1,
    conda:
        "../envs/vlprompt.yaml"
    log:
        f"{LOGS}/features/{{dataset}}.log",
    shell:
        "python -m vlprompt extract --config {params.config} --dataset {wildcards.dataset} --quiet > {log} 2>&1"
