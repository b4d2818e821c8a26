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
