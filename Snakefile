# vlprompt: benchmark -> splits -> frozen features -> train every run -> aggregate -> report.
# Rules are thin: each calls `python -m vlprompt <command>`; paths and the run grid come from
# vlprompt.grid (pure, tested functions). Run: snakemake --cores N [--configfile config/<protocol>.yaml]
import sys
from pathlib import Path

from snakemake.utils import min_version, validate

from vlprompt import grid
from vlprompt.config import SCHEMA_PATH
from vlprompt.workflow import resolve_config

min_version("9.0")


configfile: "config/config.yaml"


validate(config, str(SCHEMA_PATH))
CFG, CONFIG_JSON = resolve_config(config)
VLP = f"{sys.executable} -m vlprompt"
LOGS = f"{CFG['results_root']}/{CFG['experiment']}/logs"


include: "workflow/rules/data.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/pretrain.smk"


rule all:
    input:
        grid.report_dir(CFG) / "report.md",
        grid.report_dir(CFG) / "index.html",
    default_target: True
