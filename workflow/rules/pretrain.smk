# Re-create the tiny pocket CLIP (not part of `all`: the default run uses the shipped checkpoint).
# `snakemake pretrain_pocket_clip --cores 1`, then point backbone.pretrained at the output to use it.


rule pretrain_pocket_clip:
    output:
        f"{CFG['results_root']}/pocket_clip/pocket_clip_fp16.pt",
    conda:
        "../envs/vlprompt.yaml"
    log:
        f"{CFG['results_root']}/pocket_clip/pretrain.log",
    threads: 1
    resources:
        cpus_per_task=4,
        runtime=60,
    shell:
        "python -m vlprompt pretrain-pocket --out {output} --threads {threads} --quiet > {log} 2>&1"
