# One job per method x dataset x shots x seed; it trains, checkpoints, evaluates and writes its metrics.


def train_inputs(wildcards):
    if grid.needs_gpu(wildcards.method):  # image encoder in the loop: reads images, not features
        return [
            rules.prepare_dataset.output[0].format(dataset=wildcards.dataset),
            grid.classes_path(CFG, wildcards.dataset),
            grid.fewshot_path(CFG, wildcards.dataset, wildcards.shots, wildcards.seed),
        ]
    feats = grid.features_dir(CFG, wildcards.dataset)
    inputs = [feats / "test.npy", feats / "test.json", grid.classes_path(CFG, wildcards.dataset)]
    if int(wildcards.shots) > 0:
        inputs += [
            feats / "train_views.npy",
            feats / "val.npy",
            grid.fewshot_path(CFG, wildcards.dataset, wildcards.shots, wildcards.seed),
        ]
    return inputs


rule train:
    input:
        train_inputs,
    output:
        metrics=grid.RUN.format(
            results=CFG["results_root"],
            experiment=CFG["experiment"],
            dataset="{dataset}",
            method="{method}",
            shots="{shots}",
            seed="{seed}",
        )
        + "/metrics.json",
        model=grid.RUN.format(
            results=CFG["results_root"],
            experiment=CFG["experiment"],
            dataset="{dataset}",
            method="{method}",
            shots="{shots}",
            seed="{seed}",
        )
        + "/model.pt",
    params:
        config_hash=lambda wildcards: grid.method_config_hash(CFG, wildcards.method),
        out=lambda wildcards, output: str(Path(output.metrics).parent),
    resources:
        gpu=lambda wildcards: grid.needs_gpu(wildcards.method),
    log:
        f"{LOGS}/train/{{dataset}}/{{method}}/{{shots}}shot_seed{{seed}}.log",
    shell:
        "{VLP} train --config {CONFIG_JSON} --dataset {wildcards.dataset} --method {wildcards.method} "
        "--shots {wildcards.shots} --seed {wildcards.seed} --out {params.out} --quiet > {log} 2>&1"
