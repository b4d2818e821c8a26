# Frozen image features, extracted once per backbone x dataset (test, few-shot val, augmented train views).


rule extract_features:
    input:
        split=rules.prepare_dataset.output,
        fewshot=rules.split_dataset.output.fewshot,
    output:
        multiext(
            grid.FEATURES.format(
                results=CFG["results_root"], backbone=grid.backbone_key(CFG), dataset="{dataset}"
            )
            + "/",
            "test.npy",
            "test.json",
            "val.npy",
            "val.json",
            "train_views.npy",
            "train_views.json",
        ),
    resources:
        gpu=1,
    log:
        f"{LOGS}/features/{{dataset}}.log",
    shell:
        "{VLP} extract --config {CONFIG_JSON} --dataset {wildcards.dataset} --quiet > {log} 2>&1"
