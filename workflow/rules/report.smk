# Aggregate every run into the tidy results table (and its means, DVC's metrics file), run the statistics,
# render the report.


rule aggregate:
    input:
        [run.dir(CFG) / "metrics.json" for run in grid.runs(CFG)]
        + grid.transfer_paths(CFG)
        + grid.ood_paths(CFG)
        + grid.adaptation_paths(CFG),
    output:
        summary=grid.summary_path(CFG),
        stats=grid.stats_path(CFG),
        metrics=grid.summary_path(CFG).with_name("metrics.json"),
        curves=directory(grid.summary_path(CFG).with_name("curves")),
    params:
        settings=grid.stage_hash(CFG, "report"),
    conda:
        "../envs/vlprompt.yaml"
    log:
        f"{LOGS}/aggregate.log",
    benchmark:
        f"{BENCHMARKS}/aggregate.tsv",
    shell:
        "python -m vlprompt aggregate --summary {output.summary} --stats {output.stats} "
        "--metrics-json {output.metrics} --curves {output.curves} "
        "{input} > {log} 2>&1 || (tail -n 3 {log} >&2; exit 1)"


rule report:
    input:
        summary=rules.aggregate.output.summary,
        stats=rules.aggregate.output.stats,
        curves=rules.aggregate.output.curves,
        notes=CFG.get("report", {}).get("notes_file", []),  # findings written by hand, shown in the report
        teacher=rules.check_teacher.output if TEACHER_TARGETS else [],  # distillation: the teacher beats the student
    output:
        md=grid.report_dir(CFG) / "report.md",
        html=report(
            grid.report_dir(CFG) / "index.html",
            caption="../report/caption.rst",
            category="Report",
        ),
        # every figure embedded in `snakemake --report` with its caption (index.html links them from here)
        figures=report(
            directory(grid.report_dir(CFG) / "figures"),
            patterns=["{name}.png"],
            caption="../report/figure.rst",
            category="Figures",
            labels={"figure": "{name}"},
        ),
    params:
        settings=grid.stage_hash(CFG, "report"),
        out=grid.report_dir(CFG),
    conda:
        "../envs/vlprompt.yaml"
    log:
        f"{LOGS}/report.log",
    benchmark:
        f"{BENCHMARKS}/report.tsv",
    shell:
        "python -m vlprompt report --summary {input.summary} --stats {input.stats} --curves {input.curves} "
        "--out {params.out} > {log} 2>&1"

