# Data: prepare (download/verify/extract, or generate the pocket world), the base/new classes, and every
# few-shot subset (shots, seed) as a job of its own, sampled once and stored.
# Paths are keyed by what defines their content ({dkey}: grid.dataset_key), so experiments share these
# files and never rewrite one: a new shots grid adds subsets, and a failing subset job (more shots than
# images) removes only its own file.
# A real dataset that cannot be prepared (manual download, dead link, checksum) fails its job with a
# message naming the file and the fix; the job prints the end of its log so that it shows up in
# Snakemake's own output, not only in the log file.

DATASET_OF = grid.dataset_keys(CFG)  # {dataset key: dataset name} of this experiment


wildcard_constraints:
    dataset=r"[A-Za-z0-9_]+",
    dkey=r"[A-Za-z0-9_]+(-[0-9a-f]{8})?",
    target=r"[A-Za-z0-9_]+",
    method=r"[A-Za-z0-9_]+",
    shots=r"\d+",
    seed=r"\d+",


rule prepare_dataset:
    output:
        f"{CFG['data_root']}/{{dkey}}/split_zhou_{{dataset}}.json",
    conda:
        "../envs/vlprompt.yaml"
    log:
        f"{LOGS}/prepare/{{dataset}}/{{dkey}}.log",
    benchmark:
        f"{BENCHMARKS}/prepare/{{dataset}}/{{dkey}}.tsv",
    shell:
        "python -m vlprompt prepare --dataset {wildcards.dataset} --key {wildcards.dkey} --quiet > {log} 2>&1 "
        "|| (tail -n 20 {log} >&2; exit 1)"


rule split_classes:
    input:
        lambda wildcards: grid.split_file(CFG, DATASET_OF[wildcards.dkey]),
    output:
        grid.CLASSES.format(results=CFG["results_root"], dkey="{dkey}"),
    params:
        dataset=lambda wildcards: DATASET_OF[wildcards.dkey],
    conda:
        "../envs/vlprompt.yaml"
    log:
        f"{LOGS}/split/{{dkey}}_classes.log",
    benchmark:
        f"{BENCHMARKS}/split/{{dkey}}_classes.tsv",
    shell:
        "python -m vlprompt classes --dataset {params.dataset} --key {wildcards.dkey} --out {output} > {log} 2>&1"


rule sample_fewshot:
    input:
        lambda wildcards: grid.split_file(CFG, DATASET_OF[wildcards.dkey]),
    output:
        grid.FEWSHOT.format(results=CFG["results_root"], dkey="{dkey}", shots="{shots}", seed="{seed}"),
    params:
        dataset=lambda wildcards: DATASET_OF[wildcards.dkey],
    conda:
        "../envs/vlprompt.yaml"
    log:
        f"{LOGS}/split/{{dkey}}_shot{{shots}}_seed{{seed}}.log",
    benchmark:
        f"{BENCHMARKS}/split/{{dkey}}_shot{{shots}}_seed{{seed}}.tsv",
    shell:
        "python -m vlprompt fewshot --dataset {params.dataset} --key {wildcards.dkey} --shots {wildcards.shots} "
        "--seed {wildcards.seed} --out {output} > {log} 2>&1 || (tail -n 5 {log} >&2; exit 1)"
