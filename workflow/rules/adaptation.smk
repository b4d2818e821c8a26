# Domain adaptation (protocol domain_adaptation): one job per method x (source, target) pair x shots x seed. It
# trains on the source's labelled few-shot features; a method that declares reads_unlabelled also sees the
# target's training split without labels (the bank's train part, rule extract_unlabelled); it then tests on the
# target's test features (vlprompt.training.adaptation). Feature-bank methods only (checked with the config).

ADAPT_DIR = grid.ADAPT.format(
    results=CFG["results_root"],
    experiment=CFG["experiment"],
    source="{source}",
    target="{target}",
    method="{method}",
    shots="{shots}",
    seed="{seed}",
)


rule train_adaptation:
    input:
        lambda wildcards: grid.adaptation_inputs(CFG, **wildcards),
    output:
        metrics=f"{ADAPT_DIR}/metrics.json",
        model=f"{ADAPT_DIR}/model.pt",
    params:
        config_hash=lambda wildcards: grid.method_config_hash(CFG, wildcards.method, wildcards.source, int(wildcards.shots)),
        out=ADAPT_DIR,
    wildcard_constraints:
        method=FEATURE_METHODS,
    conda:
        "../envs/vlprompt.yaml"
    log:
        f"{LOGS}/adapt/{{source}}/{{target}}/{{method}}/{{shots}}shot_seed{{seed}}.log",
    benchmark:
        f"{BENCHMARKS}/adapt/{{source}}/{{target}}/{{method}}/{{shots}}shot_seed{{seed}}.tsv",
    shell:
        "python -m vlprompt train-adaptation --source {wildcards.source} --target {wildcards.target} "
        "--method {wildcards.method} --shots {wildcards.shots} --seed {wildcards.seed} --out {params.out} "
        "--quiet > {log} 2>&1"


# Layer statistics (methods that declare reads_layer_statistics: AD-CLIP): per image, the mean and std of every
# block's tokens of the frozen image tower, computed once per backbone x dataset x part, never in the training loop
# (vlprompt.clip.layer_statistics; keyed like the feature bank, with a size and sha256 sidecar).

LAYER_STATISTICS_DIR = grid.LAYER_STATISTICS.format(
    results=CFG["results_root"], backbone=grid.backbone_key(CFG), dkey="{dkey}", blocks="blocks_all"
)
FEWSHOT_LAYER_STATISTICS = grid.FEWSHOT_LAYER_STATISTICS.format(
    results=CFG["results_root"],
    backbone=grid.backbone_key(CFG),
    dkey="{dkey}",
    blocks="blocks_all",
    views=grid.views_key(CFG),
    shots="{shots}",
    seed="{seed}",
)


rule layer_statistics:
    input:
        lambda wildcards: grid.split_file(CFG, DATASET_OF[wildcards.dkey]),
    output:
        multiext(f"{LAYER_STATISTICS_DIR}/{{part}}", ".npy", ".json"),
    params:
        dataset=lambda wildcards: DATASET_OF[wildcards.dkey],
    wildcard_constraints:
        part="test|train",
    resources:
        gpu=1,
        cpus_per_task=4,
        mem_mb=16000,
        runtime=120,
    conda:
        "../envs/vlprompt.yaml"
    log:
        f"{LOGS}/layer_statistics/{{dkey}}_{{part}}.log",
    benchmark:
        f"{BENCHMARKS}/layer_statistics/{{dkey}}_{{part}}.tsv",
    shell:
        "python -m vlprompt layer-statistics --dataset {params.dataset} --key {wildcards.dkey} --part {wildcards.part} "
        "--quiet > {log} 2>&1"


rule layer_statistics_fewshot:
    input:
        split=lambda wildcards: grid.split_file(CFG, DATASET_OF[wildcards.dkey]),
        fewshot=rules.sample_fewshot.output,
    output:
        multiext(FEWSHOT_LAYER_STATISTICS, ".train.npy", ".train.json", ".val.npy", ".val.json"),
    params:
        dataset=lambda wildcards: DATASET_OF[wildcards.dkey],
    resources:
        gpu=1,
        cpus_per_task=4,
        mem_mb=16000,
        runtime=60,
    conda:
        "../envs/vlprompt.yaml"
    log:
        f"{LOGS}/layer_statistics/{{dkey}}_shot{{shots}}_seed{{seed}}.log",
    benchmark:
        f"{BENCHMARKS}/layer_statistics/{{dkey}}_shot{{shots}}_seed{{seed}}.tsv",
    shell:
        "python -m vlprompt layer-statistics --dataset {params.dataset} --key {wildcards.dkey} --part fewshot "
        "--shots {wildcards.shots} --seed {wildcards.seed} --quiet > {log} 2>&1"
