"""cluster-check without a cluster: SLURM's answers recorded from clusters of other shapes, plans built by hand
or printed by a dry run, and what vlprompt.pipeline.cluster makes of them (tests/test_slurm.py runs it on a live
one)."""

import pytest

from vlprompt.pipeline import cluster as cc

# sinfo -h -N -o '%N|%P|%c|%m|%G|%t', scontrol show partition -o, scontrol show config (excerpts)
SMALL = {  # the local test cluster: one 2-CPU node, no GPU, no accounting
    "sinfo": "localhost|local*|2|23593|(null)|idle\n",
    "partitions": "PartitionName=local AllowGroups=ALL Default=YES MaxTime=UNLIMITED MaxCPUsPerNode=UNLIMITED "
    "MaxMemPerNode=UNLIMITED Nodes=localhost State=UP TotalCPUs=2 TRES=cpu=2,mem=23593M,node=1\n",
    "config": "AccountingStorageType   = accounting_storage/none\nMinJobAge               = 300 sec\n"
    "SelectTypeParameters    = CR_CORE_MEMORY\n",
}
HPC = {  # a CPU partition (default, 2 days) and a GPU partition (1 day, 64 GB a job at most), with accounting
    "sinfo": "c01|cpu*|64|256000|(null)|idle\nc02|cpu*|64|256000|(null)|mix\n"
    "g01|gpu|32|512000|gpu:a100:4(S:0-1)|mix\ng02|gpu|32|512000|gpu:a100:4(S:0-1)|drain\n",
    "partitions": "PartitionName=cpu Default=YES MaxTime=2-00:00:00 MaxCPUsPerNode=UNLIMITED MaxMemPerNode=UNLIMITED "
    "State=UP\nPartitionName=gpu Default=NO MaxTime=1-00:00:00 MaxMemPerNode=64000 State=UP\n",
    "config": "AccountingStorageType   = accounting_storage/slurmdbd\nMinJobAge               = 300 sec\n",
}


def cluster(answers, sacct_error=None, account=None):
    return cc.build_cluster(answers["sinfo"], answers["partitions"], answers["config"], sacct_error, account)


def job(rule, block=None, group=None, threads=1, inputs=(), outputs=(), **resources):
    res = {"mem_mb": 4000, "runtime": 30, "cpus_per_task": 1, **resources}
    return cc.PlannedJob(rule, block, group, res, threads, tuple(inputs), tuple(outputs))


def pocket_plan(train_runs=2, block_size=16):
    """The shape of a pocket plan: a data group (prepare, then classes and subsets), GPU jobs of their own, training
    runs grouped by ``block_size``, a report group (aggregate, then report)."""
    gpu = {"gpu": 1, "cpus_per_task": 4, "mem_mb": 16000}
    jobs = [
        job("prepare_dataset", 0, "data", outputs=["split"]),
        job("split_classes", 0, "data", inputs=["split"], outputs=["classes"]),
        job("sample_fewshot", 0, "data", inputs=["split"], outputs=["shots"]),
        job("extract_test", **gpu, runtime=60),
        job("extract_fewshot", **gpu, runtime=60),
        job("train_images", **gpu, runtime=120),
    ]
    jobs += [job("train", 1 + i // block_size, "train", outputs=[f"run{i}"]) for i in range(train_runs)]
    last = 2 + train_runs // block_size
    jobs += [
        job("aggregate", last, "report", inputs=[f"run{i}" for i in range(train_runs)], outputs=["summary"]),
        job("report", last, "report", inputs=["summary"], outputs=["report"]),
    ]
    return jobs


def settings(**kw):
    return cc.Settings(
        profiles=["workflow/profiles/slurm"],
        cores=kw.pop("cores", 2),
        group_components=kw.pop("group_components", {"train": 16, "transfer": 50}),
        **kw,
    )


@pytest.mark.parametrize(
    "text, minutes",
    [
        ("UNLIMITED", None),
        ("infinite", None),
        ("60", 60),
        ("30:00", 30),
        ("2:00:00", 120),
        ("1-00:00:00", 1440),
        ("1-12", 2160),
        ("0:30", 1),
    ],
)
def test_slurm_times(text, minutes):
    assert cc.slurm_minutes(text) == minutes


@pytest.mark.parametrize(
    "text, gpus", [("(null)", 0), ("gpu:1", 1), ("gpu:a100:4(S:0-1)", 4), ("gpu:2,mps:200", 2), ("mps:100", 0)]
)
def test_gpus_in_a_gres_string(text, gpus):
    assert cc.gres_gpus(text) == gpus


def test_a_cluster_from_its_answers():
    hpc = cluster(HPC)
    assert hpc.default_partition.name == "cpu" and hpc.has_accounting and hpc.min_job_age == 300
    assert [n.cpus for n in hpc.partitions["cpu"].nodes] == [64, 64] and hpc.partitions["cpu"].max_minutes == 2880
    gpu = hpc.partitions["gpu"]
    assert gpu.gpus == 4 and gpu.max_minutes == 1440 and {n.mem_mb for n in gpu.nodes} == {64000}  # MaxMemPerNode
    small = cluster(SMALL)
    assert small.partitions["local"].describe() == "local (default): 1 node, 2 CPUs, 23593 MB, no GPU, no time limit"
    assert not small.has_accounting


def test_a_dry_run_is_read_with_its_group_jobs():
    text = """Job stats:
[Wed Nov 25 17:43:49 2026] Group job data (jobs in lexicogr. order):

    [Wed Nov 25 17:43:49 2026]
    rule prepare_dataset:
        output: data/d/split.json
        jobid: 2
        resources: tmpdir=/tmp, mem_mb=4000, mem=4 GB, mem_mib=3815, disk_mb=<TBD>, runtime=30, cpus_per_task=1

    [Wed Nov 25 17:43:49 2026]
    rule split_classes:
        input: data/d/split.json
        output: results/splits/d/classes.json
        resources: tmpdir=/tmp, mem_mb=4000, runtime=30, cpus_per_task=1

[Wed Nov 25 17:43:49 2026]
rule train_images:
    input: data/d/split.json, results/splits/d/classes.json
    output: results/tiny/runs/m.pt
    threads: 2
    resources: tmpdir=/tmp, mem_mb=16000, runtime=120, cpus_per_task=4, gpu=1, slurm_partition=gpu

[Wed Nov 25 17:43:49 2026]
localrule all:
    input: results/tiny/runs/m.pt
"""
    jobs = cc.parse_dry_run(text)
    assert [(j.rule, j.block, j.group) for j in jobs] == [
        ("prepare_dataset", 0, "data"),
        ("split_classes", 0, "data"),
        ("train_images", None, None),
    ]
    assert jobs[1].inputs == ("data/d/split.json",) and jobs[0].outputs == ("data/d/split.json",)
    assert jobs[2].threads == 2 and jobs[2].resources == {
        "tmpdir": "/tmp",
        "mem_mb": 16000,
        "runtime": 120,
        "cpus_per_task": 4,
        "gpu": 1,
        "slurm_partition": "gpu",
    }
    image, group = cc.requests(jobs, cores=2)  # jobs of their own first, then group jobs
    assert (image.kind, image.cpus, image.mem_mb, image.minutes, image.gpus, image.partition) == (
        "train_images",
        4,
        16000,
        120,
        1,
        "gpu",
    )
    # the classes need the split: one after the other, one CPU at a time, run times added up
    assert (group.kind, group.cpus, group.mem_mb, group.minutes, group.members) == ("group data", 1, 4000, 60, 2)


@pytest.mark.parametrize("cores, cpus, mem_mb, minutes", [(None, 16, 64000, 30), (2, 2, 8000, 240), (8, 8, 32000, 60)])
def test_a_group_job_asks_for_its_widest_round_and_all_rounds_run_times(cores, cpus, mem_mb, minutes):
    train = [r for r in cc.requests(pocket_plan(16), cores=cores) if r.group == "train"]
    assert [(r.cpus, r.mem_mb, r.minutes, r.members) for r in train] == [(cpus, mem_mb, minutes, 16)]


def test_small_node_without_gpu_or_accounting():
    report = cc.check(
        pocket_plan(),
        cluster(SMALL, sacct_error="Slurm accounting storage is disabled"),
        settings(),
        which=lambda name: f"/usr/bin/{name}",
    )
    fixes = report.fixes
    assert fixes.status_command == "squeue"
    assert fixes.set_resources == {
        rule: {"gpu": 0, "cpus_per_task": 2} for rule in ("extract_fewshot", "extract_test", "train_images")
    }
    assert fixes.cores is None and fixes.group_components == {} and not report.unfixed
    assert any(n.startswith("account: no accounting database") for n in report.notes)
    assert all(r.cpus <= 2 and r.gpus == 0 for r in report.after)
    assert cc.Fixes.flags(fixes, settings()) == [
        "--slurm-status-command",
        "squeue",
        "--set-resources",
        "extract_fewshot:gpu=0",
        "extract_fewshot:cpus_per_task=2",
        "extract_test:gpu=0",
        "extract_test:cpus_per_task=2",
        "train_images:gpu=0",
        "train_images:cpus_per_task=2",
    ]
    text = cc.render(report)
    assert (
        "fix: extract_test:gpu=0" in text
        and "snakemake --profile workflow/profiles/slurm --slurm-status-command" in text
    )


def test_gpu_jobs_go_to_the_partition_that_has_gpus_and_fit_its_memory():
    report = cc.check(pocket_plan(), cluster(HPC, account="proj1"), settings(), which=lambda name: f"/bin/{name}")
    assert report.fixes.set_resources == {
        rule: {"slurm_partition": "gpu"} for rule in ("extract_fewshot", "extract_test", "train_images")
    }
    assert report.fixes.status_command is None  # sacct answers
    assert any("yours by default: proj1" in n for n in report.notes)
    assert not report.unfixed
    by_kind = {r.kind: r for r in report.after}
    assert by_kind["train_images"].partition == "gpu" and by_kind["group train"].partition is None


def test_a_group_job_wider_than_the_node_runs_fewer_members_side_by_side():
    eight = {**HPC, "sinfo": HPC["sinfo"].replace("|64|", "|8|")}
    report = cc.check(pocket_plan(16), cluster(eight), settings(cores=None), which=lambda name: None)
    assert report.fixes.cores == 8
    train = [r for r in report.after if r.group == "train"]
    assert [(r.cpus, r.mem_mb, r.minutes) for r in train] == [(8, 32000, 60)]


def test_a_group_job_longer_than_the_time_limit_holds_fewer_members():
    short = {**SMALL, "partitions": SMALL["partitions"].replace("MaxTime=UNLIMITED", "MaxTime=02:00:00")}
    report = cc.check(pocket_plan(16), cluster(short), settings(), which=lambda name: None)
    # 16 runs, 2 side by side: 8 rounds of 30 min; 120 min holds 4 rounds, 8 runs
    assert report.fixes.group_components == {"train": 8}
    assert [(r.minutes, r.members) for r in report.after if r.group == "train"] == [(120, 8), (120, 8)]
    assert "--group-components train=8 transfer=50" in " ".join(report.fixes.flags(settings()))
    assert report.fixes.set_resources["train_images"] == {"gpu": 0, "cpus_per_task": 2}  # 120 min fits 120


def test_the_flags_carry_the_users_own_entries():
    mine = settings(
        set_resources={"train_images": {"runtime": "240"}, "extract_test": {"gpu_model": "a100"}},
        resources={"gpu": "2"},
    )
    fixes = cc.Fixes(set_resources={"extract_test": {"gpu": 0}}, mem_mb=8000)
    flags = fixes.flags(mine)
    entries = flags[flags.index("--set-resources") + 1 : flags.index("--resources")]
    assert entries == ["train_images:runtime=240", "extract_test:gpu_model=a100", "extract_test:gpu=0"]
    assert flags[flags.index("--resources") + 1 :] == ["gpu=2", "mem_mb=8000"]


def test_a_short_min_job_age_gets_an_earlier_first_status_check():
    quick = {**SMALL, "config": SMALL["config"].replace("300 sec", "60 sec")}
    report = cc.check(pocket_plan(), cluster(quick), settings(status_command="squeue"), which=lambda name: None)
    assert report.fixes.init_seconds == 20 and report.fixes.status_command is None


def test_a_missing_partition_is_named_and_not_fixed():
    jobs = [job("train", slurm_partition="'long'")]
    report = cc.check(jobs, cluster(SMALL), settings(), which=lambda name: None)
    assert [f.problem for f in report.unfixed] == [
        "train: partition 'long' does not exist (partitions: local); set slurm_partition"
    ]


def test_settings_come_from_the_profile_and_the_arguments():
    s = cc.read_settings(
        ["workflow/profiles/slurm"],
        [
            "--slurm-status-command",
            "squeue",
            "--set-resources",
            "train_images:runtime=240",
            "--resources",
            "mem_mb=8000",
        ],
    )
    assert (s.executor, s.cores, s.status_command, s.init_seconds) == ("slurm", 2, "squeue", 40)
    assert s.group_components == {"train": 16, "transfer": 50}
    assert s.set_resources == {"train_images": {"runtime": "240"}} and s.resources == {"mem_mb": "8000"}
    assert cc.read_settings(["workflow/profiles/slurm"], []).status_command is None  # the plugin's default


def test_no_slurm_here_is_a_clear_error():
    with pytest.raises(cc.ClusterError, match="sinfo not found"):
        cc.query_cluster(which=lambda name: None)
    failing = lambda cmd: (1, "", "slurm_load_partitions: Unable to contact slurm controller")  # noqa: E731
    with pytest.raises(cc.ClusterError, match="Unable to contact slurm controller"):
        cc.query_cluster(run=failing, which=lambda name: f"/usr/bin/{name}")


def test_the_cluster_is_asked_once_for_each_answer():
    asked = []

    def run(cmd):
        asked.append(cmd[:2])
        answers = {"sinfo": SMALL["sinfo"], "scontrol": SMALL["partitions"] if "partition" in cmd else SMALL["config"]}
        if cmd[0] == "sacct":
            return 1, "", "Slurm accounting storage is disabled\n"
        return 0, answers[cmd[0]], ""

    c = cc.query_cluster(run=run, which=lambda name: f"/usr/bin/{name}")
    assert c.sacct_error == "Slurm accounting storage is disabled" and c.partitions["local"].nodes[0].cpus == 2
    assert asked == [["sinfo", "-h"], ["scontrol", "show"], ["scontrol", "show"], ["sacct", "-X"]]
