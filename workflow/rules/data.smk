# Data: prepare (download/verify/extract, or generate the pocket world), then split into base/new
# classes and few-shot subsets per (shots, seed), sampled once and stored.
# A real dataset that cannot be prepared (manual download, dead link, checksum) fails its job with a
# message naming the file and the fix; the job prints the end of its log so that it shows up in
# Snakemake's own output, not only in the log file.


wildcard_constraints:
    dataset=r"[A-Za-z0-9_]+",
    target=r"[A-Za-z0-9_]+",
    method=r"[A-Za-z0-9_]+",
    shots=r"\d+",
    seed=r"\d+",


rule prepare_dataset:
    output:
        f"{CFG['data_root']}/{{dataset}}/split_zhou_{{dataset}}.json",
    params:
        config=CONFIG_JSON,
        settings=grid.stage_hash(CFG, "prepare"),
    conda:
        "../envs/vlprompt.yaml"
    log:
        f"{LOGS}/prepare/{{dataset}}.log",
    shell:
        "python -m vlprompt prepare --config {params.config} --dataset {wildcards.dataset} --quiet > {log} 2>&1 "
        "|| (tail -n 20 {log} >&2; exit 1)"


rule split_dataset:
    input:
        rules.prepare_dataset.output,
    output:
        classes=grid.CLASSES.format(results=CFG["results_root"], dataset="{dataset}"),
        fewshot=[
            grid.FEWSHOT.format(
                results=CFG["results_root"], dataset="{dataset}", shots=k, seed=s
            )
            for k in CFG["shots"]
            for s in CFG["seeds"]
        ],
    params:
        config=CONFIG_JSON,
        settings=grid.stage_hash(CFG, "split"),
    conda:
        "../envs/vlprompt.yaml"
    log:
        f"{LOGS}/split/{{dataset}}.log",
    shell:
        "python -m vlprompt split --config {params.config} --dataset {wildcards.dataset} > {log} 2>&1"
