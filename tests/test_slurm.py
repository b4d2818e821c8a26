"""The pocket DAG (reduced config) through the SLURM profile on a single-node cluster on localhost.

scripts/slurm/start_local_cluster.sh starts the cluster (Debian's slurm-wlm and munge, as root; `make
system-deps` installs them). The run uses workflow/profiles/slurm as a user would, with what this small
cluster needs on top: no account, job states from squeue (no accounting database), resources that fit
one small node. Checked: every job went through sbatch (the executor's per-job SLURM logs and the
controller's allocations), the GPU jobs (feature extraction, a method with the image encoder in the loop)
asked the scheduler for one GPU and the grouped training job for none, and the summary equals that of a
local run. Without a cluster, a dry run through the profile checks which jobs ask for a GPU and which are
grouped.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "configs" / "pocket_tiny.yaml"
START = REPO / "scripts" / "slurm" / "start_local_cluster.sh"
CONTROLLER_LOG = Path("/var/log/slurm/slurmctld.log")
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile")]
# sbatch passes this environment to the jobs: the rules call `python -m vlprompt`
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}:/usr/sbin"}
ENV.pop("SNAKEMAKE_PROFILE", None)


def start_cluster() -> None:
    if os.geteuid() != 0:
        pytest.skip("SLURM test: needs root to start a local cluster (scripts/slurm/start_local_cluster.sh)")
    if shutil.which("sbatch") is None or not Path("/usr/sbin/slurmctld").exists():
        pytest.skip("SLURM test: slurm-wlm and munge are not installed (make system-deps)")
    proc = subprocess.run(["bash", str(START)], capture_output=True, text=True, env=ENV)
    if proc.returncode in (2, 3):  # prerequisites missing / a real cluster's config, left alone
        pytest.skip(f"SLURM test: cannot start a local cluster here: {proc.stderr.strip()}")
    assert proc.returncode == 0, f"start_local_cluster.sh failed:\n{proc.stdout}\n{proc.stderr}"


def planned_jobs(log: str) -> list[dict]:
    """The jobs a dry run prints: rule, SLURM group (None when a job of its own), wildcards, resources."""
    jobs, group = [], None
    for line in log.splitlines():
        if m := re.search(r"Group job (\w+) ", line):
            group = m.group(1)
        elif m := re.match(r"( *)rule (\w+):$", line):
            group = group if m.group(1) else None  # members of a group are indented
            jobs.append({"rule": m.group(2), "group": group, "wildcards": "", "resources": {}})
        elif jobs and (m := re.match(r" *(wildcards|resources): (.*)$", line)):
            if m.group(1) == "wildcards":
                jobs[-1]["wildcards"] = m.group(2)
            else:
                jobs[-1]["resources"] = dict(kv.split("=", 1) for kv in m.group(2).split(", "))
    return jobs


def dry_run_through_profile(workdir: Path, cfg: dict) -> list[dict]:
    """The jobs a dry run plans with ``cfg`` through the SLURM profile, with the local executor (the
    profile as a cluster run uses it; a dry run needs no cluster)."""
    (workdir / "config").mkdir()
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(cfg))
    proc = subprocess.run(SNAKEMAKE + ["-d", str(workdir), "-n", "--profile", str(REPO / "workflow/profiles/slurm"),
                                       "--executor", "local", "--cores", "2"],
                          env=ENV, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return planned_jobs(proc.stdout + proc.stderr)


@pytest.mark.parametrize("granularity", ["run", "shots"])
def test_profile_gives_image_methods_one_gpu_and_groups_only_cpu_jobs(tmp_path, granularity):
    cfg = yaml.safe_load(TINY.read_text())
    cfg.update(methods=["zeroshot", "coop", "kgcoop", "maple", "vpt_deep"], seeds=[1, 2])
    cfg["train"]["job_granularity"] = granularity
    jobs = dry_run_through_profile(tmp_path, cfg)
    image_rule = {"run": "train_images", "shots": "train_images_group"}[granularity]
    feature_rule = {"run": "train", "shots": "train_group"}[granularity]
    images = [j for j in jobs if j["rule"] == image_rule]
    # run: maple and vpt_deep x 2 seeds; shots: one job per method (one shots setting)
    assert len(images) == {"run": 4, "shots": 2}[granularity], jobs
    for job in images:
        assert re.search(r"method=(maple|vpt_deep)\b", job["wildcards"]), job
        assert job["resources"].get("gpu") == "1" and job["group"] is None, job
    feature_jobs = [j for j in jobs if j["rule"] in (feature_rule, "train_zeroshot")]
    assert len(feature_jobs) == {"run": 5, "shots": 3}[granularity], jobs  # zeroshot once, coop/kgcoop
    for job in feature_jobs:
        assert re.search(r"method=(zeroshot|coop|kgcoop)\b", job["wildcards"]), job
        assert "gpu" not in job["resources"] and job["group"] == "train", job
    # a GPU only where one is used; every grouped job is a CPU job
    assert {j["rule"] for j in jobs if "gpu" in j["resources"]} == {"extract_test", "extract_fewshot", image_rule}
    assert all("gpu" not in j["resources"] for j in jobs if j["group"]), jobs


def test_transfer_evaluation_of_image_methods_asks_for_a_gpu(tmp_path):
    cfg = yaml.safe_load((REPO / "config/pocket_crossdataset.yaml").read_text())
    cfg.update(methods=["coop", "vpt_deep"], seeds=[1], shots=[16], targets=cfg["targets"][:2])
    jobs = [j for j in dry_run_through_profile(tmp_path, cfg) if j["rule"].startswith("evaluate_transfer")]
    rules = ("evaluate_transfer", "evaluate_transfer_images")
    by_rule = {rule: [j for j in jobs if j["rule"] == rule] for rule in rules}
    assert len(by_rule["evaluate_transfer"]) == len(by_rule["evaluate_transfer_images"]) == 2, jobs
    for job in by_rule["evaluate_transfer_images"]:
        assert "method=vpt_deep" in job["wildcards"] and job["resources"].get("gpu") == "1" and job["group"] is None
    for job in by_rule["evaluate_transfer"]:
        assert "method=coop" in job["wildcards"] and "gpu" not in job["resources"] and job["group"] == "transfer"


def workdir(path: Path) -> Path:
    """The reduced pocket config plus one method with the image encoder in the loop (a GPU job on a cluster)."""
    cfg = yaml.safe_load(TINY.read_text())
    cfg["methods"] = [*cfg["methods"], "vpt_deep"]
    cfg["method_overrides"]["vpt_deep"] = {"epochs": 1}
    (path / "config").mkdir(parents=True)
    (path / "config" / "config.yaml").write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    start_cluster()
    tmp = tmp_path_factory.mktemp("slurm")
    local, cluster = workdir(tmp / "local"), workdir(tmp / "cluster")
    # the node's cores (a group of training runs asks for one core per run side by side)
    sinfo = subprocess.run(["sinfo", "-h", "-N", "-n", "localhost", "-o", "%c"],
                           capture_output=True, text=True, env=ENV)
    cpus = int(sinfo.stdout.split()[0]) if sinfo.returncode == 0 and sinfo.stdout.strip() else 1
    slurm_cmd = SNAKEMAKE + [
        "-d", str(cluster), "--profile", str(REPO / "workflow" / "profiles" / "slurm"),
        "--slurm-status-command", "squeue", "--slurm-no-account", "--slurm-keep-successful-logs",
        "--slurm-init-seconds-before-status-checks", "3",
        # the profile's requests are for a real cluster; this node has `cpus` cores and no real GPU
        "--default-resources", "mem_mb=500", "runtime=10", "cpus_per_task=1",
        "--set-resources", "extract_test:cpus_per_task=1", "extract_test:mem_mb=1000",
        "extract_fewshot:cpus_per_task=1", "extract_fewshot:mem_mb=1000",
        "train_images:cpus_per_task=1", "train_images:mem_mb=1000",
        "--group-components", f"train={min(cpus, 16)}", "transfer=2",
    ]
    offset = CONTROLLER_LOG.stat().st_size if CONTROLLER_LOG.exists() else 0
    # the cluster run mostly waits on the scheduler: the local reference run goes meanwhile
    slurm = subprocess.Popen(slurm_cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    local_run = subprocess.run(SNAKEMAKE + ["-d", str(local), "--profile", str(REPO / "workflow/profiles/local"),
                                            "--cores", "1", "--quiet"],
                               env=ENV, capture_output=True, text=True)
    try:
        out, _ = slurm.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        slurm.terminate()
        out, _ = slurm.communicate()
        ids = slurm_job_ids(out)
        if ids:  # only the jobs this run submitted
            subprocess.run(["scancel", *ids], capture_output=True)
        pytest.fail(f"the SLURM run did not finish in 10 minutes:\n{out[-4000:]}")
    assert local_run.returncode == 0, local_run.stderr[-4000:]
    assert slurm.returncode == 0, out[-6000:]
    controller = CONTROLLER_LOG.read_text(errors="replace")[offset:] if CONTROLLER_LOG.exists() else ""
    return {"local": local, "cluster": cluster, "log": out, "controller": controller}


def slurm_job_ids(log: str) -> list[str]:
    return re.findall(r"submitted with SLURM jobid (\d+)", log)


@pytest.mark.slow
def test_every_job_went_through_sbatch(runs):
    log, cluster = runs["log"], runs["cluster"]
    ids = slurm_job_ids(log)
    # grouped by the profile: data (prepare, classes, few-shot subset), extract_test, extract_fewshot,
    # train (zeroshot, coop), train_images (vpt_deep, a job of its own), report (aggregate+report)
    assert len(ids) == 6, log[-4000:]
    logs = list((cluster / ".snakemake" / "slurm_logs").rglob("*.log"))
    assert {p.stem for p in logs} == set(ids)
    # one directory per group (group_<name>_<its rules>) or ungrouped rule (rule_<name>)
    dirs = sorted(p.relative_to(cluster / ".snakemake" / "slurm_logs").parts[0] for p in logs)
    assert dirs[0].startswith("group_data_") and dirs[1:] == [
        "group_report_aggregate_report", "group_train_train", "rule_extract_fewshot", "rule_extract_test",
        "rule_train_images"], dirs
    text = "\n".join(p.read_text() for p in logs)
    for rule in ["prepare_dataset", "split_classes", "sample_fewshot", "extract_test", "extract_fewshot", "train",
                 "train_images", "aggregate", "report"]:
        assert f"rule {rule}:" in text, f"{rule} did not run inside a SLURM job"
    for job_id in ids:  # the controller started each (main scheduler or backfill)
        assert re.search(rf"(Allocate|Started) JobId={job_id} ", runs["controller"]), job_id


@pytest.mark.slow
@pytest.mark.parametrize("job, gpus", [("rule_extract_test", 1), ("rule_extract_fewshot", 1), ("rule_train_images", 1),
                                       ("group_train_train", 0)])
def test_gpu_jobs_ask_the_scheduler_for_one_gpu_cpu_jobs_for_none(runs, job, gpus):
    logs = list((runs["cluster"] / ".snakemake" / "slurm_logs" / job).rglob("*.log"))
    assert len(logs) == 1
    shown = subprocess.run(["scontrol", "show", "job", logs[0].stem], capture_output=True, text=True, env=ENV)
    if shown.returncode != 0:  # finished jobs leave the controller after MinJobAge (300 s)
        pytest.skip(f"job {logs[0].stem} ({job}) no longer known to the controller")
    # TresPerJob=gres:gpu:1 (what sbatch asked for), TRES=...,gres/gpu=1 (what the job got)
    asked = set(re.findall(r"gres[:/]gpu[:=](\d+)", shown.stdout))
    assert asked == ({str(gpus)} if gpus else set()), shown.stdout


@pytest.mark.slow
def test_same_summary_as_a_local_run(runs):
    rel = Path("results") / "tiny" / "summary.csv"
    assert (runs["cluster"] / rel).read_bytes() == (runs["local"] / rel).read_bytes()
    assert (runs["cluster"] / "reports" / "tiny" / "report.md").exists()


@pytest.mark.slow
def test_nothing_to_do_afterwards(runs):
    proc = subprocess.run(SNAKEMAKE + ["-d", str(runs["cluster"]), "-n"], env=ENV, capture_output=True, text=True)
    assert "Nothing to be done" in proc.stdout + proc.stderr, proc.stdout[-3000:]
