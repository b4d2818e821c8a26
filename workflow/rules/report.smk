# Aggregate every run into the tidy results table, run the statistics, render the report.


rule aggregate:
    input:
        [run.dir(CFG) / "metrics.json" for run in grid.runs(CFG)],
    output:
        summary=grid.summary_path(CFG),
        stats=grid.stats_path(CFG),
    log:
        f"{LOGS}/aggregate.log",
    shell:
        "{VLP} aggregate --config {CONFIG_JSON} --summary {output.summary} --stats {output.stats} "
        "{input} > {log} 2>&1"


rule report:
    input:
        summary=rules.aggregate.output.summary,
        stats=rules.aggregate.output.stats,
    output:
        md=grid.report_dir(CFG) / "report.md",
        html=report(
            grid.report_dir(CFG) / "index.html",
            caption="../report/caption.rst",
            category="Report",
        ),
    params:
        out=grid.report_dir(CFG),
    log:
        f"{LOGS}/report.log",
    shell:
        "{VLP} report --config {CONFIG_JSON} --summary {input.summary} --stats {input.stats} "
        "--out {params.out} > {log} 2>&1"
