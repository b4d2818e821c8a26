# Transfer evaluation (crossdataset, domain_generalization): every trained model on every target
# dataset, all of its classes. (Base/new and few-shot evaluation happen inside the training job.)
# Methods with the image encoder in the loop run their images through it: evaluate_transfer_images asks
# for a GPU and is never grouped (see workflow/rules/train.smk); the others read the target's feature bank.


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
    wildcard_constraints:
        method=FEATURE_METHODS,
    conda:
        "../envs/vlprompt.yaml"
    log:
        f"{LOGS}/transfer/{{dataset}}/{{method}}/{{shots}}shot_seed{{seed}}_{{target}}.log",
    shell:
        "python -m vlprompt evaluate-transfer --config {params.config} --dataset {wildcards.dataset} "
        "--method {wildcards.method} --shots {wildcards.shots} --seed {wildcards.seed} "
        "--target {wildcards.target} --out {output} > {log} 2>&1"


use rule evaluate_transfer as evaluate_transfer_images with:
    input:
        model=f"{RUN_DIR}/model.pt",
        images=f"{CFG['data_root']}/{{target}}/split_zhou_{{target}}.json",
        classes=grid.CLASSES.format(results=CFG["results_root"], dataset="{target}"),
    wildcard_constraints:
        method=IMAGE_METHODS,
    resources:
        gpu=1,
