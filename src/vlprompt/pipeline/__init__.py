"""The DAG's glue outside the science: the config Snakemake resolves and what jobs inherit (``workflow``), the
Snakemake processes sharing a folder (``run_registry``), integrity checks of artefacts at parse time
(``integrity``), jobs that stop with their Snakemake (``watchdog``) and the SLURM preflight (``cluster``)."""
