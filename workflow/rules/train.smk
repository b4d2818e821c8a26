# Training: one job per method x dataset x shots x seed (train.job_granularity: run), or one job per
# method x dataset running all of its shots x seeds in one process (job_granularity: dataset).
# Either way each run trains, checkpoints, evaluates and writes its own run directory.

RUN_DIR = grid.RUN.format(
    results=CFG["results_root"],
    experiment=CFG["experiment"],
    dataset="{dataset}",
    method="{method}",
    shots="{shots}",
    seed="{seed}",
)


if CFG["train"]["job_granularity"] == "run":

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
            "--method {wildcards.method} --shots {wildcards.shots} --seed {wildcards.seed} "
            "--out {params.out} --quiet > {log} 2>&1"

else:

    rule train_group:
        input:
            lambda wildcards: grid.group_inputs(CFG, **wildcards),
        output:
            [f"{RUN_DIR}/{name}".format(dataset="{dataset}", method="{method}", shots=k, seed=s)
             for k, s in grid.group_runs(CFG) for name in ("metrics.json", "model.pt")],
        params:
            config=CONFIG_JSON,
            config_hash=lambda wildcards: grid.method_config_hash(CFG, wildcards.method),
            shots=" ".join(str(k) for k in CFG["shots"]),
            seeds=" ".join(str(s) for s in CFG["seeds"]),
        resources:
            gpu=lambda wildcards: grid.needs_gpu(wildcards.method),
        conda:
            "../envs/vlprompt.yaml"
        log:
            f"{LOGS}/train/{{dataset}}/{{method}}.log",
        shell:
            "python -m vlprompt train-group --config {params.config} --dataset {wildcards.dataset} "
            "--method {wildcards.method} --shots {params.shots} --seeds {params.seeds} --quiet > {log} 2>&1"

    rule train_zeroshot:
        input:
            lambda wildcards: grid.train_inputs(CFG, wildcards.dataset, wildcards.method, 0, 0),
        output:
            metrics=f"{CFG['results_root']}/{CFG['experiment']}/runs/{{dataset}}/{{method}}/0shot/seed0/metrics.json",
            model=f"{CFG['results_root']}/{CFG['experiment']}/runs/{{dataset}}/{{method}}/0shot/seed0/model.pt",
        params:
            config=CONFIG_JSON,
            config_hash=lambda wildcards: grid.method_config_hash(CFG, wildcards.method),
        conda:
            "../envs/vlprompt.yaml"
        log:
            f"{LOGS}/train/{{dataset}}/{{method}}/0shot_seed0.log",
        shell:
            "python -m vlprompt train-group --config {params.config} --dataset {wildcards.dataset} "
            "--method {wildcards.method} --shots 0 --seeds 0 --quiet > {log} 2>&1"
