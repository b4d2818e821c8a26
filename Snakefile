# vlprompt: benchmark -> splits -> frozen features -> train every run -> aggregate -> report.
# Rules are thin: each calls `python -m vlprompt <command>`; paths and the run grid come from
# vlprompt.grid (pure, tested functions). Run: snakemake --cores N [--configfile config/<protocol>.yaml]
from snakemake.utils import min_version, validate

from vlprompt import grid
from vlprompt.config import SCHEMA_PATH, coerce_strings
from vlprompt.workflow import resolve_config

min_version("9.0")

# Rules call `python -m vlprompt`: run Snakemake with the project's environment active (`make run` does);
# workflow/envs/vlprompt.yaml lists the same software for --use-conda.


configfile: "config/config.yaml"


config.update(coerce_strings(config))  # --config shots=[1,4,16] gives strings; the schema says integers
validate(config, str(SCHEMA_PATH))
CFG, _config_paths = resolve_config(config, base_dir=workflow.basedir)
CONFIG_JSON = _config_paths["shared"]  # read by the shared stages: prepare, split, extract
EXPERIMENT_JSON = _config_paths["experiment"]  # read by the experiment's jobs: train, evaluate, report
LOGS = f"{CFG['results_root']}/{CFG['experiment']}/logs"


include: "workflow/rules/data.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/pretrain.smk"


rule all:
    input:
        grid.report_dir(CFG) / "report.md",
        grid.report_dir(CFG) / "index.html",
    default_target: True
