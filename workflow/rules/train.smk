# Training: one job per method x dataset x shots x seed (train.job_granularity: run), or one job per
# method x dataset x shots running its seeds in one process (job_granularity: shots; a new shots setting
# adds jobs and re-runs none of the others). Either way each run trains, checkpoints, evaluates and writes
# its own run directory.
#
# Two rules of each kind, told apart by the method wildcard: methods that train on the cached feature bank
# (train, train_group: seconds to minutes on a CPU, no GPU; the SLURM profile groups many into one job)
# and methods with the image encoder in the loop (train_images, train_images_group: vpt_deep, ivlp, maple,
# promptsrc; one GPU each, never grouped, or a group of them would ask for as many GPUs).

from vlprompt.methods import get_method, list_methods


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
MULTITASK_METHODS = "|".join(m for m in list_methods() if get_method(m).reads_multitask_prompt)
MULTITASK_DIR = grid.MULTITASK.format(
    results=CFG["results_root"], experiment=CFG["experiment"], method="{method}", shots="{shots}", seed="{seed}"
)


# The multitask stage of the methods that start from a prompt trained on several source datasets (MVLPT): one
# job per method x shots x seed, reading every source's few-shot features (config `sources`).
rule train_multitask:
    input:
        lambda wildcards: grid.multitask_inputs(CFG, wildcards.method, wildcards.shots, wildcards.seed),
    output:
        [f"{MULTITASK_DIR}/{name}" for name in grid.MULTITASK_FILES],
    params:
        config_hash=lambda wildcards: grid.method_config_hash(CFG, wildcards.method),
        out=MULTITASK_DIR,
    wildcard_constraints:
        method=MULTITASK_METHODS,
    conda:
        "../envs/vlprompt.yaml"
    log:
        f"{LOGS}/multitask/{{method}}/{{shots}}shot_seed{{seed}}.log",
    benchmark:
        f"{BENCHMARKS}/multitask/{{method}}/{{shots}}shot_seed{{seed}}.tsv",
    shell:
        "python -m vlprompt train-multitask --method {wildcards.method} --shots {wildcards.shots} "
        "--seed {wildcards.seed} --out {params.out} --quiet > {log} 2>&1"


if CFG["train"]["job_granularity"] == "run":

    rule train:
        input:
            lambda wildcards: grid.train_inputs(CFG, **wildcards),
        output:
            metrics=f"{RUN_DIR}/metrics.json",
            model=f"{RUN_DIR}/model.pt",
        params:
            config_hash=lambda wildcards: grid.method_config_hash(CFG, wildcards.method, wildcards.dataset, int(wildcards.shots)),
            out=RUN_DIR,
        wildcard_constraints:
            method=FEATURE_METHODS,
        conda:
            "../envs/vlprompt.yaml"
        log:
            f"{LOGS}/train/{{dataset}}/{{method}}/{{shots}}shot_seed{{seed}}.log",
        benchmark:
            f"{BENCHMARKS}/train/{{dataset}}/{{method}}/{{shots}}shot_seed{{seed}}.tsv",
        shell:
            "python -m vlprompt train --dataset {wildcards.dataset} --method {wildcards.method} "
            "--shots {wildcards.shots} --seed {wildcards.seed} --out {params.out} --quiet > {log} 2>&1"

    use rule train as train_images with:
        wildcard_constraints:
            method=IMAGE_METHODS,
        resources:
            gpu=1,
            cpus_per_task=4,
            mem_mb=16000,
            runtime=120,

else:

    rule train_group:
        input:
            lambda wildcards: grid.group_inputs(CFG, **wildcards),
        output:
            [
                f"{RUN_DIR}/{name}".format(dataset="{dataset}", method="{method}", shots="{shots}", seed=s)
                for s in grid.group_runs(CFG)
                for name in grid.RUN_FILES
            ],
        params:
            config_hash=lambda wildcards: grid.method_config_hash(CFG, wildcards.method, wildcards.dataset, int(wildcards.shots)),
            seeds=" ".join(str(s) for s in grid.group_runs(CFG)),
        wildcard_constraints:
            method=FEATURE_METHODS,
            shots=r"[1-9]\d*",
        conda:
            "../envs/vlprompt.yaml"
        log:
            f"{LOGS}/train/{{dataset}}/{{method}}/{{shots}}shot.log",
        benchmark:
            f"{BENCHMARKS}/train/{{dataset}}/{{method}}/{{shots}}shot.tsv",
        shell:
            "python -m vlprompt train-group --dataset {wildcards.dataset} --method {wildcards.method} "
            "--shots {wildcards.shots} --seeds {params.seeds} --quiet > {log} 2>&1"

    use rule train_group as train_images_group with:
        wildcard_constraints:
            method=IMAGE_METHODS,
            shots=r"[1-9]\d*",
        resources:
            gpu=1,
            cpus_per_task=4,
            mem_mb=16000,
            runtime=1440,

    rule train_zeroshot:
        input:
            lambda wildcards: grid.train_inputs(CFG, wildcards.dataset, wildcards.method, 0, 0),
        output:
            [f"{RUN_DIR}/{name}".format(dataset="{dataset}", method="{method}", shots=0, seed=0) for name in grid.RUN_FILES],
        params:
            config_hash=lambda wildcards: grid.method_config_hash(CFG, wildcards.method, wildcards.dataset, 0),
        conda:
            "../envs/vlprompt.yaml"
        log:
            f"{LOGS}/train/{{dataset}}/{{method}}/0shot_seed0.log",
        benchmark:
            f"{BENCHMARKS}/train/{{dataset}}/{{method}}/0shot_seed0.tsv",
        shell:
            "python -m vlprompt train-group --dataset {wildcards.dataset} --method {wildcards.method} "
            "--shots 0 --seeds 0 --quiet > {log} 2>&1"
