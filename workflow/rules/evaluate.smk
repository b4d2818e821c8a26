# Transfer evaluation (crossdataset, domain_generalization): every trained model on every target
# dataset, all of its classes. (Base/new and few-shot evaluation happen inside the training job.)
# Methods with the image encoder in the loop run their images through it: evaluate_transfer_images asks
# for a GPU and is never grouped (see workflow/rules/train.smk); the others read the target's feature bank.


rule evaluate_transfer:
    input:
        model=f"{RUN_DIR}/model.pt",
        metrics=f"{RUN_DIR}/metrics.json",
        target=lambda wildcards: grid.transfer_inputs(
            CFG, wildcards.target, wildcards.method, wildcards.dataset, wildcards.shots
        ),
    output:
        f"{RUN_DIR}/transfer/{{target}}.json",
    params:
        config_hash=lambda wildcards: grid.method_config_hash(CFG, wildcards.method, wildcards.dataset, int(wildcards.shots)),
    wildcard_constraints:
        method=FEATURE_METHODS,
    conda:
        "../envs/vlprompt.yaml"
    log:
        f"{LOGS}/transfer/{{dataset}}/{{method}}/{{shots}}shot_seed{{seed}}_{{target}}.log",
    benchmark:
        f"{BENCHMARKS}/transfer/{{dataset}}/{{method}}/{{shots}}shot_seed{{seed}}_{{target}}.tsv",
    shell:
        "python -m vlprompt evaluate-transfer --dataset {wildcards.dataset} "
        "--method {wildcards.method} --shots {wildcards.shots} --seed {wildcards.seed} "
        "--target {wildcards.target} --out {output} > {log} 2>&1"


use rule evaluate_transfer as evaluate_transfer_images with:
    wildcard_constraints:
        method=IMAGE_METHODS,
    resources:
        gpu=1,
        cpus_per_task=4,
        mem_mb=16000,
        runtime=60,
