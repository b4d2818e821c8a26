# vlprompt: benchmark -> splits -> frozen features -> train every run -> aggregate -> report.
# Rules are thin: each calls `python -m vlprompt <command>`; paths and the run grid come from
# vlprompt.experiment.grid (pure, tested functions). Run: snakemake --cores N [--configfile config/<protocol>.yaml]
import os
import sys
from pathlib import Path

from snakemake.utils import min_version

from vlprompt.experiment import grid

from vlprompt.pipeline import integrity
from vlprompt.experiment.checks import plan_problems
from vlprompt.experiment.config import ConfigError, coerce_strings
from vlprompt.pipeline.run_registry import describe, register_run, running, unregister_run
from vlprompt.pipeline.workflow import container_image, job_environment, resolve_config, source_first

min_version("9.0")

# Rules call `python -m vlprompt`: run Snakemake with the project's environment active (`make run` does);
# workflow/envs/vlprompt.yaml (--sdm conda) and containers/vlprompt.def (--sdm apptainer) install the same lock.

# A config given with --configfile is the whole experiment: its own keys plus the schema's defaults, nothing
# from this default file (Snakemake would otherwise merge the two). The default experiment applies only
# when no config file is given; --config key=value overrides apply either way.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


config.update(coerce_strings(config))  # --config shots=[1,4,16] gives strings; the schema says integers
# Paths of the config (data_root, results_root, reports_root) are relative to the working directory: the user's
# folder when another Snakefile uses this one as a module (docs/workflow_module.md). What is read from this
# repository is found beside this Snakefile: workflow.basedir would be the user's Snakefile's folder,
# current_basedir is this file's (a local checkout; a release read from GitHub has no local folder: None).
_OWN_DIR = workflow.current_basedir.get_path_or_uri(secret_free=True)
CHECKOUT = _OWN_DIR if Path(_OWN_DIR).is_dir() else None
# Everything wrong with the config, one line each (key, value, fix; never the schema), then stop: the schema, the
# registries' names, and what the plan knows (shots against the datasets' images per class, methods against the
# protocol). `python -m vlprompt check-config FILE` prints the same, and a YAML syntax error's line and column.
# report.notes_file is looked up in the working directory, then in the checkout.
try:
    CFG, CONFIG_PATH = resolve_config(config, base_dir=CHECKOUT)
    _problems = plan_problems(CFG)
except ConfigError as _err:
    _problems = str(_err).split("\n")
if _problems:
    _source = ", ".join(map(str, workflow.overwrite_configfiles)) or "config/config.yaml"
    for _line in _problems:
        print(f"vlprompt: {_source}: {_line}", file=sys.stderr)
    sys.exit(1)
# Every job reads this experiment's resolved config from $VLPROMPT_CONFIG (a file named by its content), and
# stops if this snakemake process dies (vlprompt.pipeline.watchdog).
os.environ.update(job_environment(CONFIG_PATH, workflow.overwrite_configfiles))
LOGS = f"{CFG['results_root']}/{CFG['experiment']}/logs"
# Wall time, CPU time and memory of every job (Snakemake's benchmark files; benchmarks/pipeline_profile.py
# sums them by stage and method). Not outputs: a missing one never re-runs a job.
BENCHMARKS = f"{CFG['results_root']}/{CFG['experiment']}/benchmarks"
# Jobs import this checkout's code in whichever environment runs them (.venv, --sdm conda, --sdm apptainer).
os.environ.update(source_first(CHECKOUT) if CHECKOUT else {})


# With --software-deployment-method apptainer every rule runs in this image: containers/vlprompt.def built here, or
# $VLPROMPT_CONTAINER; docs/containers.md. Ignored otherwise.
container: container_image()


if workflow.is_main_process:
    for _other in running():
        print(f"vlprompt: another Snakemake run works in this folder: {describe(_other)}. Artefacts they "
              "share are built once; if Snakemake refuses to lock the folder, wait for that run or stop it.",
              file=sys.stderr)
    # an artefact that no longer matches its record (truncated, overwritten) is rebuilt, with what follows it
    for _path, _why in integrity.check(grid.all_outputs(CFG), skip_under=Path(CFG["data_root"])):
        if workflow.dryrun:
            print(f"vlprompt: corrupt artefact {_path}: {_why}; a run (without -n) rebuilds it", file=sys.stderr)
        else:
            _moved = integrity.move_aside(_path)
            print(f"vlprompt: corrupt artefact {_path}: {_why}; moved to {_moved.name}, this run rebuilds it",
                  file=sys.stderr)


onstart:
    register_run(CFG, sys.argv)


onsuccess:
    unregister_run()


onerror:
    unregister_run()


include: "workflow/rules/data.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/teacher.smk"
include: "workflow/rules/meta.smk"
include: "workflow/rules/ood.smk"
include: "workflow/rules/adaptation.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/pretrain.smk"


# Every artefact, not only the report: a deleted feature bank or run is rebuilt and the tables follow.
rule all:
    input:
        grid.all_outputs(CFG),
        grid.report_dir(CFG) / "report.md",
        grid.report_dir(CFG) / "index.html",
    default_target: True
