# One job per method x dataset x shots x seed; it trains, checkpoints, evaluates and writes its metrics.

RUN_DIR = grid.RUN.format(
    results=CFG["results_root"],
    experiment=CFG["experiment"],
    dataset="{dataset}",
    method="{method}",
    shots="{shots}",
    seed="{seed}",
)


rule train:
    input:
        lambda wildcards: grid.train_inputs(CFG, **wildcards),
    output:
        metrics=f"{RUN_DIR}/metrics.json",
        model=f"{RUN_DIR}/model.pt",
    params:
        config=CONFIG_JSON,
        config_hash=lambda wildcards: grid.method_config_hash(CFG, wildcards.method),
        out=RUN_DIR,
    resources:
        gpu=lambda wildcards: grid.needs_gpu(wildcards.method),
    conda:
        "../envs/vlprompt.yaml"
    log:
        f"{LOGS}/train/{{dataset}}/{{method}}/{{shots}}shot_seed{{seed}}.log",
    shell:
        "python -m vlprompt train --config {params.config} --dataset {wildcards.dataset} "
        "--method {wildcards.method} --shots {wildcards.shots} --seed {wildcards.seed} --out {params.out} "
        "--quiet > {log} 2>&1"
