# Frozen image features, extracted once per backbone x image x view transform: the evaluation splits of a
# dataset (every test image, the whole validation split), and per few-shot subset its validation images,
# its training images un-augmented and in augmented views. A subset's job
# copies what sibling subsets already hold and encodes only the images it adds (vlprompt.clip.features).
# Two parts are extracted only when a method of the experiment declares it reads them (vlprompt.experiment.grid): the whole
# training split (`unlabelled: train`, TFUP) and the test images in views (TPT: test_views<V>_crop<s>; DiffTPT also
# test_generated<G>_pocketvar-p<rate>, views drawn by the pocket renderer as an image-variation model).

FEATURES_DIR = grid.FEATURES.format(results=CFG["results_root"], backbone=grid.backbone_key(CFG), dkey="{dkey}")
FEWSHOT_STEM = grid.FEWSHOT_FEATURES.format(
    results=CFG["results_root"],
    backbone=grid.backbone_key(CFG),
    dkey="{dkey}",
    views=grid.views_key(CFG),
    shots="{shots}",
    seed="{seed}",
)


rule extract_test:
    input:
        lambda wildcards: grid.split_file(CFG, DATASET_OF[wildcards.dkey]),
    output:
        multiext(f"{FEATURES_DIR}/", "test.npy", "test.json", "val.npy", "val.json"),
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
        f"{LOGS}/features/{{dkey}}_test.log",
    benchmark:
        f"{BENCHMARKS}/features/{{dkey}}_test.tsv",
    shell:
        "python -m vlprompt extract --dataset {params.dataset} --key {wildcards.dkey} --quiet > {log} 2>&1"


rule extract_fewshot:
    input:
        split=lambda wildcards: grid.split_file(CFG, DATASET_OF[wildcards.dkey]),
        fewshot=rules.sample_fewshot.output,
    output:
        multiext(FEWSHOT_STEM, ".train.npy", ".train.json", ".plain.npy", ".plain.json", ".val.npy", ".val.json"),
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
        f"{LOGS}/features/{{dkey}}_shot{{shots}}_seed{{seed}}.log",
    benchmark:
        f"{BENCHMARKS}/features/{{dkey}}_shot{{shots}}_seed{{seed}}.tsv",
    shell:
        "python -m vlprompt extract --dataset {params.dataset} --key {wildcards.dkey} --shots {wildcards.shots} "
        "--seed {wildcards.seed} --quiet > {log} 2>&1"


rule extract_unlabelled:
    input:
        lambda wildcards: grid.split_file(CFG, DATASET_OF[wildcards.dkey]),
    output:
        multiext(f"{FEATURES_DIR}/", "train.npy", "train.json"),
    params:
        dataset=lambda wildcards: DATASET_OF[wildcards.dkey],
    resources:
        gpu=1,
        cpus_per_task=4,
        mem_mb=16000,
        runtime=120,
    conda:
        "../envs/vlprompt.yaml"
    log:
        f"{LOGS}/features/{{dkey}}_train.log",
    benchmark:
        f"{BENCHMARKS}/features/{{dkey}}_train.tsv",
    shell:
        "python -m vlprompt extract --dataset {params.dataset} --key {wildcards.dkey} --part train --quiet > {log} 2>&1"


rule extract_test_views:
    input:
        lambda wildcards: grid.split_file(CFG, DATASET_OF[wildcards.dkey]),
    output:
        multiext(f"{FEATURES_DIR}/test_views{{views}}_crop{{crop}}", ".npy", ".json"),
    params:
        dataset=lambda wildcards: DATASET_OF[wildcards.dkey],
    wildcard_constraints:
        views=r"\d+",
        crop=r"[0-9.e+-]+",
    resources:
        gpu=1,
        cpus_per_task=4,
        mem_mb=16000,
        runtime=240,  # many views of every test image
    conda:
        "../envs/vlprompt.yaml"
    log:
        f"{LOGS}/features/{{dkey}}_test_views{{views}}_crop{{crop}}.log",
    benchmark:
        f"{BENCHMARKS}/features/{{dkey}}_test_views{{views}}_crop{{crop}}.tsv",
    shell:
        "python -m vlprompt extract --dataset {params.dataset} --key {wildcards.dkey} --part test_views "
        "--views {wildcards.views} --crop {wildcards.crop} --quiet > {log} 2>&1"


rule extract_generated_views:
    input:
        lambda wildcards: grid.split_file(CFG, DATASET_OF[wildcards.dkey]),
    output:
        multiext(f"{FEATURES_DIR}/test_generated{{views}}_pocketvar-p{{rate}}", ".npy", ".json"),
    params:
        dataset=lambda wildcards: DATASET_OF[wildcards.dkey],
    wildcard_constraints:
        views=r"\d+",
        rate=r"[0-9.e+-]+",
    resources:
        gpu=1,
        cpus_per_task=4,
        mem_mb=16000,
        runtime=240,  # many rendered views of every test image
    conda:
        "../envs/vlprompt.yaml"
    log:
        f"{LOGS}/features/{{dkey}}_test_generated{{views}}_pocketvar-p{{rate}}.log",
    benchmark:
        f"{BENCHMARKS}/features/{{dkey}}_test_generated{{views}}_pocketvar-p{{rate}}.tsv",
    shell:
        "python -m vlprompt extract --dataset {params.dataset} --key {wildcards.dkey} --part generated_views "
        "--views {wildcards.views} --wrong-class-rate {wildcards.rate} --quiet > {log} 2>&1"


# DiffTPT's generated views of a dataset whose folder of generated images the config names
# (generated_images.<dataset>.by_image; vlprompt.data.generated_images): read, not drawn. The folder's key (a hash of
# its listing) is in the path, so a changed folder is a new bank.
rule extract_generated_folder:
    input:
        lambda wildcards: grid.split_file(CFG, DATASET_OF[wildcards.dkey]),
    output:
        multiext(f"{FEATURES_DIR}/test_generated{{views}}_folder-{{fkey}}", ".npy", ".json"),
    params:
        dataset=lambda wildcards: DATASET_OF[wildcards.dkey],
    wildcard_constraints:
        views=r"\d+",
        fkey=r"[0-9a-f]{8}",
    resources:
        gpu=1,
        cpus_per_task=4,
        mem_mb=16000,
        runtime=240,  # many generated views of every test image
    conda:
        "../envs/vlprompt.yaml"
    log:
        f"{LOGS}/features/{{dkey}}_test_generated{{views}}_folder-{{fkey}}.log",
    benchmark:
        f"{BENCHMARKS}/features/{{dkey}}_test_generated{{views}}_folder-{{fkey}}.tsv",
    shell:
        "python -m vlprompt extract --dataset {params.dataset} --key {wildcards.dkey} --part generated_folder "
        "--views {wildcards.views} --quiet > {log} 2>&1"
