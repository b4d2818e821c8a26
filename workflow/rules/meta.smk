# The meta stage of the methods that start from a meta-learned prompt (methods declaring reads_meta_prompt: gram).
#
# train_meta_prompt: the method's own meta procedure on the backbone's image-text pretraining pool (the pocket CLIP's
# pretraining recipe; no class label read), one job per meta stage, in a folder keyed by the backbone and by the
# method's meta settings and pool (vlprompt.experiment.meta_prompt), shared by every experiment, dataset, shots
# setting and seed that asks for the same one.

from vlprompt.experiment import meta_prompt as meta_grid

META_DIR = meta_grid.META.format(results=CFG["results_root"], bkey="{bkey}", mkey="{mkey}")


rule train_meta_prompt:
    output:
        [f"{META_DIR}/{name}" for name in meta_grid.META_FILES],
    params:
        out=META_DIR,
    wildcard_constraints:
        bkey="[^/]+",
        mkey="[^/]+",
    conda:
        "../envs/vlprompt.yaml"
    log:
        f"{CFG['results_root']}/meta_prompt/logs/{{bkey}}/{{mkey}}.log",
    shell:
        "python -m vlprompt train-meta-prompt --stage {wildcards.mkey} --out {params.out} --quiet > {log} 2>&1"
