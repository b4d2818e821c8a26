# Protocol ood: every run (trained or zero-shot) scored on every OOD set of the config (ood.near, ood.far) against
# its in-distribution test images; one job each, on the feature banks (methods with the image encoder in the loop
# are refused by the config check). Adding an OOD set adds jobs and re-runs none.


rule evaluate_ood:
    input:
        model=f"{RUN_DIR}/model.pt",
        metrics=f"{RUN_DIR}/metrics.json",
        features=lambda wildcards: grid.ood_inputs(
            CFG, wildcards.oodset, wildcards.method, wildcards.dataset, wildcards.shots
        ),
    output:
        f"{RUN_DIR}/ood/{{oodset}}.json",
    params:
        config_hash=lambda wildcards: grid.method_config_hash(CFG, wildcards.method, wildcards.dataset, int(wildcards.shots)),
        ood=lambda wildcards: str(grid.ood_set(CFG, wildcards.oodset)),
    wildcard_constraints:
        method=FEATURE_METHODS,
        oodset=r"[^/]+",
    conda:
        "../envs/vlprompt.yaml"
    log:
        f"{LOGS}/ood/{{dataset}}/{{method}}/{{shots}}shot_seed{{seed}}_{{oodset}}.log",
    benchmark:
        f"{BENCHMARKS}/ood/{{dataset}}/{{method}}/{{shots}}shot_seed{{seed}}_{{oodset}}.tsv",
    shell:
        "python -m vlprompt evaluate-ood --dataset {wildcards.dataset} "
        "--method {wildcards.method} --shots {wildcards.shots} --seed {wildcards.seed} "
        "--oodset {wildcards.oodset} --out {output} > {log} 2>&1"
