# The teacher of the distillation methods (methods declaring reads_teacher: promptkd; docs/distillation.md).
#
# train_teacher: the config's `teacher.method` (PromptSRC) prompt-tunes the teacher backbone on a dataset's few-shot
# subset, one job per dataset x shots x seed, in a folder keyed by the teacher backbone, its method and settings,
# the dataset, shots and seed (vlprompt.experiment.teacher), shared by the experiments that ask for that teacher.
# check_teacher: before the report, the teachers must beat the student backbone's zero-shot accuracy on every
# dataset (the experiment runs `zeroshot` beside the distillation methods); the margins go to teacher_margins.json.
# pretrain_pocket_teacher: the bigger pocket CLIP (PocketCLIP-ViT-S8), by the recipe of the tiny ones.

from vlprompt.experiment import teacher as teacher_grid

TEACHER_DIR = teacher_grid.TEACHER.format(
    results=CFG["results_root"], tkey="{tkey}", dkey="{dkey}", shots="{shots}", seed="{seed}"
)


rule train_teacher:
    input:
        lambda wildcards: grid.train_inputs(
            CFG, grid.dataset_keys(CFG)[wildcards.dkey], teacher_grid.teacher_block(CFG)["method"], wildcards.shots,
            wildcards.seed,
        ),
    output:
        [f"{TEACHER_DIR}/{name}" for name in teacher_grid.TEACHER_FILES],
    params:
        dataset=lambda wildcards: grid.dataset_keys(CFG)[wildcards.dkey],
        out=TEACHER_DIR,
    wildcard_constraints:
        tkey="[^/]+",
        dkey="[^/]+",
    conda:
        "../envs/vlprompt.yaml"
    log:
        f"{CFG['results_root']}/teacher/logs/{{tkey}}/{{dkey}}_{{shots}}shot_seed{{seed}}.log",
    resources:
        gpu=1,
    shell:
        "python -m vlprompt train-teacher --dataset {params.dataset} --shots {wildcards.shots} "
        "--seed {wildcards.seed} --out {params.out} --quiet > {log} 2>&1"


# teacher_logits (config `teacher.logits: bank`): the teacher's logits over V fixed views of a run's training images,
# computed once, read by its students instead of running the teacher per batch (vlprompt.training.teacher_logits),
# keyed by the teacher, the dataset, shots, seed and the views (V, crop, student backbone).
TEACHER_LOGITS_STEM = teacher_grid.TEACHER_LOGITS.format(
    results=CFG["results_root"], tkey="{tkey}", dkey="{dkey}", shots="{shots}", seed="{seed}", views="{views}"
)


rule teacher_logits:
    input:
        teacher=[f"{TEACHER_DIR}/{name}" for name in teacher_grid.TEACHER_FILES],
        split=lambda wildcards: grid.split_file(CFG, grid.dataset_keys(CFG)[wildcards.dkey]),
        classes=lambda wildcards: grid.classes_path(CFG, grid.dataset_keys(CFG)[wildcards.dkey]),
        fewshot=lambda wildcards: grid.fewshot_path(
            CFG, grid.dataset_keys(CFG)[wildcards.dkey], wildcards.shots, wildcards.seed
        ),
    output:
        multiext(TEACHER_LOGITS_STEM, ".npy", ".json"),
    params:
        dataset=lambda wildcards: grid.dataset_keys(CFG)[wildcards.dkey],
        out=TEACHER_LOGITS_STEM,
    wildcard_constraints:
        tkey="[^/]+",
        dkey="[^/]+",
        views="[^/]+",
    conda:
        "../envs/vlprompt.yaml"
    log:
        f"{CFG['results_root']}/teacher_logits/logs/{{tkey}}/{{dkey}}_{{shots}}shot_seed{{seed}}_{{views}}.log",
    resources:
        gpu=1,
    shell:
        "python -m vlprompt teacher-logits --dataset {params.dataset} --shots {wildcards.shots} "
        "--seed {wildcards.seed} --out {params.out} --quiet > {log} 2>&1"


TEACHER_TARGETS = [p for p in teacher_grid.teacher_targets(CFG) if p.name == "metrics.json"]


rule check_teacher:
    input:
        teacher=TEACHER_TARGETS,
        zeroshot=[run.dir(CFG) / "metrics.json" for run in grid.runs(CFG) if run.method == "zeroshot"],
    output:
        f"{CFG['results_root']}/{CFG['experiment']}/teacher_margins.json",
    conda:
        "../envs/vlprompt.yaml"
    log:
        f"{LOGS}/check_teacher.log",
    shell:
        "python -m vlprompt check-teacher --teacher {input.teacher} --zeroshot {input.zeroshot} --out {output} "
        "> {log} 2>&1 || (tail -n 1 {log} >&2; exit 1)"


rule pretrain_pocket_teacher:
    output:
        f"{CFG['results_root']}/pocket_clip/pocket_clip_v2_teacher_fp16.pt",
    conda:
        "../envs/vlprompt.yaml"
    log:
        f"{CFG['results_root']}/pocket_clip/pretrain_v2_teacher.log",
    threads: 1
    resources:
        cpus_per_task=1,
        runtime=90,
    shell:
        "python -m vlprompt pretrain-pocket --world v2_teacher --out {output} --threads {threads} --quiet > {log} 2>&1"
