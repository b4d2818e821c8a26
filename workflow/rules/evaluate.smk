# Transfer evaluation (crossdataset, domain_generalization): every trained model on every target
# dataset, all of its classes. (Base/new and few-shot evaluation happen inside the training job.)


rule evaluate_transfer:
    input:
        model=f"{RUN_DIR}/model.pt",
        features=f"{grid.FEATURES.format(results=CFG['results_root'], backbone=grid.backbone_key(CFG), dataset='{target}')}/test.npy",
        classes=grid.CLASSES.format(results=CFG["results_root"], dataset="{target}"),
    output:
        f"{RUN_DIR}/transfer/{{target}}.json",
    params:
        config=EXPERIMENT_JSON,
        config_hash=lambda wildcards: grid.method_config_hash(CFG, wildcards.method),
    conda:
        "../envs/vlprompt.yaml"
    log:
        f"{LOGS}/transfer/{{dataset}}/{{method}}/{{shots}}shot_seed{{seed}}_{{target}}.log",
    shell:
        "python -m vlprompt evaluate-transfer --config {params.config} --dataset {wildcards.dataset} "
        "--method {wildcards.method} --shots {wildcards.shots} --seed {wildcards.seed} "
        "--target {wildcards.target} --out {output} > {log} 2>&1"
