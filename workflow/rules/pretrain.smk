# Re-create the tiny pocket CLIP of the experiment's pocket world (not part of `all`: experiments use the
# shipped checkpoints, backbone.pretrained: pocket_v1 / pocket_v2). `snakemake pretrain_pocket_clip --cores 1`
# re-creates the default experiment's (v2); `--configfile config/pocket_v1.yaml` the v1 one.
# Point backbone.pretrained at the output to use it. Recipes: vlprompt.training.pretrain.PRESETS; costs: docs/pocket_world.md.

POCKET_WORLD = CFG["pocket"]["world"]


rule pretrain_pocket_clip:
    output:
        f"{CFG['results_root']}/pocket_clip/pocket_clip_{POCKET_WORLD}_fp16.pt",
    params:
        world=POCKET_WORLD,
    conda:
        "../envs/vlprompt.yaml"
    log:
        f"{CFG['results_root']}/pocket_clip/pretrain_{POCKET_WORLD}.log",
    threads: 1
    resources:
        cpus_per_task=1,
        runtime=90,
    shell:
        "python -m vlprompt pretrain-pocket --world {params.world} --out {output} --threads {threads} --quiet "
        "> {log} 2>&1"
