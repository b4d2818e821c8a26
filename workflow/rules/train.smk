# Training: one job per method x dataset x shots x seed (train.job_granularity: run), or one job per
# method x dataset running all of its shots x seeds in one process (job_granularity: dataset).
# Either way each run trains, checkpoints, evaluates and writes its own run directory.
#
# Two rules of each kind, told apart by the method wildcard: methods that train on the cached feature bank
# (train, train_group: seconds to minutes on a CPU, no GPU; the SLURM profile groups many into one job)
# and methods with the image encoder in the loop (train_images, train_images_group: vpt_deep, ivlp, maple,
# promptsrc; one GPU each, never grouped, or a group of them would ask for as many GPUs).

from vlprompt.methods import list_methods


RUN_DIR = grid.RUN.format(
    results=CFG["results_root"],
    experiment=CFG["experiment"],
    dataset="{dataset}",
    method="{method}",
    shots="{shots}",
    seed="{seed}",
)
FEATURE_METHODS = "|".join(m for m in list_methods() if not grid.needs_gpu(m))
IMAGE_METHODS = "|".join(m for m in list_methods() if grid.needs_gpu(m))


if CFG["train"]["job_granularity"] == "run":

    rule train:
        input:
            lambda wildcards: grid.train_inputs(CFG, **wildcards),
        output:
            metrics=f"{RUN_DIR}/metrics.json",
            model=f"{RUN_DIR}/model.pt",
        params:
            config=EXPERIMENT_JSON,
            config_hash=lambda wildcards: grid.method_config_hash(CFG, wildcards.method),
            out=RUN_DIR,
        wildcard_constraints:
            method=FEATURE_METHODS,
        conda:
            "../envs/vlprompt.yaml"
        log:
            f"{LOGS}/train/{{dataset}}/{{method}}/{{shots}}shot_seed{{seed}}.log",
        shell:
            "python -m vlprompt train --config {params.config} --dataset {wildcards.dataset} "
            "--method {wildcards.method} --shots {wildcards.shots} --seed {wildcards.seed} "
            "--out {params.out} --quiet > {log} 2>&1"

    use rule train as train_images with:
        wildcard_constraints:
            method=IMAGE_METHODS,
        resources:
            gpu=1,

else:

    rule train_group:
        input:
            lambda wildcards: grid.group_inputs(CFG, **wildcards),
        output:
            [f"{RUN_DIR}/{name}".format(dataset="{dataset}", method="{method}", shots=k, seed=s)
             for k, s in grid.group_runs(CFG) for name in ("metrics.json", "model.pt")],
        params:
            config=EXPERIMENT_JSON,
            config_hash=lambda wildcards: grid.method_config_hash(CFG, wildcards.method),
            shots=" ".join(str(k) for k in CFG["shots"]),
            seeds=" ".join(str(s) for s in CFG["seeds"]),
        wildcard_constraints:
            method=FEATURE_METHODS,
        conda:
            "../envs/vlprompt.yaml"
        log:
            f"{LOGS}/train/{{dataset}}/{{method}}.log",
        shell:
            "python -m vlprompt train-group --config {params.config} --dataset {wildcards.dataset} "
            "--method {wildcards.method} --shots {params.shots} --seeds {params.seeds} --quiet > {log} 2>&1"

    use rule train_group as train_images_group with:
        wildcard_constraints:
            method=IMAGE_METHODS,
        resources:
            gpu=1,

    rule train_zeroshot:
        input:
            lambda wildcards: grid.train_inputs(CFG, wildcards.dataset, wildcards.method, 0, 0),
        output:
            metrics=f"{CFG['results_root']}/{CFG['experiment']}/runs/{{dataset}}/{{method}}/0shot/seed0/metrics.json",
            model=f"{CFG['results_root']}/{CFG['experiment']}/runs/{{dataset}}/{{method}}/0shot/seed0/model.pt",
        params:
            config=EXPERIMENT_JSON,
            config_hash=lambda wildcards: grid.method_config_hash(CFG, wildcards.method),
        conda:
            "../envs/vlprompt.yaml"
        log:
            f"{LOGS}/train/{{dataset}}/{{method}}/0shot_seed0.log",
        shell:
            "python -m vlprompt train-group --config {params.config} --dataset {wildcards.dataset} "
            "--method {wildcards.method} --shots 0 --seeds 0 --quiet > {log} 2>&1"
