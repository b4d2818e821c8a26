"""The pocket DAG through the SLURM profile on a single-node cluster on localhost, with the commands of
docs/dvc_and_slurm.md (tests/doc_commands.py reads them).

scripts/slurm/start_local_cluster.sh starts the cluster (Debian's slurm-wlm and munge, as root; `make
system-deps` installs them): one node, no accounting database, and one placeholder GPU or (`--gpus 0`) none.
With the GPU the node is this machine (2 CPUs here), as the docs start it; without, it is declared larger
(`--cpus 8 --mem-mb 65536`: NODE), so that the jobs a step of the DAG submits together run side by side
instead of one after the other (each extraction job asks for 4 CPUs and 16 GB, a group job for 2 CPUs: the
whole of a 2-CPU node). In a clone of the repository whose config is a reduced pocket config
plus vpt_deep (a method with the image encoder in the loop), the docs' commands run as a user runs them:
`cluster-check`, then `snakemake --profile workflow/profiles/slurm $(... cluster-check --flags)`, then `dvc
repro`. Only flags that make the run observable and quicker are added to the snakemake line
(TEST_FLAGS: keep SLURM's logs, print the sbatch calls, first status check after 3 s).

Checked, with and without the GPU: cluster-check finds what does not fit (job states with sacct, the
account, the GPU where there is none, 4 CPUs on the 2-CPU node, none on the 8-CPU one); every job goes through
sbatch (the per-job SLURM logs and the controller's allocations); each sbatch call asks for what cluster-check
predicted (GPU jobs for one GPU where there is one, none where there is not; group jobs no larger than the
node); summary.csv equals a local run's; on the larger node jobs ran side by side; `git status` is clean after
the run; after the run with the GPU (once: the same DAG and files) `snakemake -n` and `dvc repro` run nothing
and `git status` shows only dvc.lock. Without a cluster, dry
runs through the profile check which jobs ask for a GPU, that only CPU jobs are grouped, and that a
--set-resources on the command line changes one value and keeps the others.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from doc_commands import commands
from vlprompt.pipeline import cluster as cc

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "configs" / "pocket_tiny.yaml"
CONTROLLER_LOG = Path("/var/log/slurm/slurmctld.log")
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile")]
VENV = Path(sys.executable).parent.parent
# sbatch passes this environment to the jobs: the rules call `python -m vlprompt`
ENV = {
    **os.environ,
    "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}:/usr/sbin",
    "GIT_AUTHOR_NAME": "vlprompt-test",
    "GIT_AUTHOR_EMAIL": "test@localhost",
    "GIT_COMMITTER_NAME": "vlprompt-test",
    "GIT_COMMITTER_EMAIL": "test@localhost",
    "DVC_NO_ANALYTICS": "1",
}
ENV.pop("SNAKEMAKE_PROFILE", None)
TEST_FLAGS = "--slurm-keep-successful-logs --verbose --slurm-init-seconds-before-status-checks 3"
GPU_RULES = {"extract_test", "extract_fewshot", "train_images"}
# the node of each mode: with the GPU, this machine (start_local_cluster.sh as the docs run it); without, one
# declared larger than the machine, where the two extraction jobs (4 CPUs and 16 GB each), then the training
# group and the image method's job, run at once (they share the machine's real CPUs)
NODE = {"gpu": None, "cpu": {"cpus": 8, "mem_mb": 65536}}


def node_cpus(mode: str) -> int:
    """The CPUs of the node in ``mode``: NODE's, else this machine's (getconf, as start_local_cluster.sh)."""
    return NODE[mode]["cpus"] if NODE[mode] else os.sysconf("SC_NPROCESSORS_ONLN")


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


def profile_config(case: str) -> tuple[dict, list[str]]:
    """The config and extra Snakemake arguments of each dry run through the profile that the tests below read."""
    if case == "transfer":
        cfg = yaml.safe_load((REPO / "config/pocket_crossdataset.yaml").read_text())
        cfg.update(methods=["coop", "vpt_deep"], seeds=[1], shots=[16], targets=cfg["targets"][:2])
        return cfg, []
    cfg = yaml.safe_load(TINY.read_text())
    if case == "set_resources":
        cfg["methods"] = [*cfg["methods"], "vpt_deep"]
        return cfg, ["--set-resources", "extract_test:runtime=5", "train_images:gpu=0"]
    granularity = case.removeprefix("granularity_")  # run or shots
    cfg.update(methods=["zeroshot", "coop", "kgcoop", "maple", "vpt_deep"], seeds=[1, 2])
    cfg["train"]["job_granularity"] = granularity
    return cfg, []


PROFILE_CASES = ("granularity_run", "granularity_shots", "transfer", "set_resources")


@pytest.fixture(scope="module")
def profile_plans(tmp_path_factory) -> dict[str, list[dict]]:
    """The jobs each case's dry run plans through the SLURM profile, with the local executor (the profile as a
    cluster run uses it; a dry run needs no cluster): the four dry runs in one process (tests/dry_runs.py), each in
    a folder of its own."""
    from dry_runs import snakemake_calls

    through_the_profile = ["-n", "--profile", str(REPO / "workflow/profiles/slurm"), "--executor", "local"]
    calls = []
    for case in PROFILE_CASES:
        cfg, args = profile_config(case)
        workdir = tmp_path_factory.mktemp(case)
        (workdir / "config").mkdir()
        (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(cfg))
        calls.append(["-s", str(REPO / "Snakefile"), "-d", str(workdir), *through_the_profile, *args])
    plans = {}
    for case, proc in zip(PROFILE_CASES, snakemake_calls(calls, ENV), strict=True):
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        plans[case] = planned_jobs(proc.stdout + proc.stderr)
    return plans


@pytest.mark.xdist_group("slurm_profile")  # the four dry runs' group, not the cluster runs' (test_slurm)
@pytest.mark.parametrize("granularity", ["run", "shots"])
def test_profile_gives_image_methods_one_gpu_and_groups_only_cpu_jobs(profile_plans, granularity):
    jobs = profile_plans[f"granularity_{granularity}"]
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


@pytest.mark.xdist_group("slurm_profile")
def test_transfer_evaluation_of_image_methods_asks_for_a_gpu(profile_plans):
    jobs = [j for j in profile_plans["transfer"] if j["rule"].startswith("evaluate_transfer")]
    rules = ("evaluate_transfer", "evaluate_transfer_images")
    by_rule = {rule: [j for j in jobs if j["rule"] == rule] for rule in rules}
    assert len(by_rule["evaluate_transfer"]) == len(by_rule["evaluate_transfer_images"]) == 2, jobs
    for job in by_rule["evaluate_transfer_images"]:
        assert "method=vpt_deep" in job["wildcards"] and job["resources"].get("gpu") == "1" and job["group"] is None
    for job in by_rule["evaluate_transfer"]:
        assert "method=coop" in job["wildcards"] and "gpu" not in job["resources"] and job["group"] == "transfer"


@pytest.mark.xdist_group("slurm_profile")
def test_a_set_resources_on_the_command_line_changes_one_value_and_keeps_the_rest(profile_plans):
    jobs = profile_plans["set_resources"]  # --set-resources extract_test:runtime=5 train_images:gpu=0
    res = {j["rule"]: j["resources"] for j in jobs}
    # the rule's own needs, one value changed; the profile's defaults for the rest
    assert {k: res["extract_test"][k] for k in ("gpu", "cpus_per_task", "mem_mb", "runtime")} == {
        "gpu": "1",
        "cpus_per_task": "4",
        "mem_mb": "16000",
        "runtime": "5",
    }
    assert {k: res["extract_fewshot"][k] for k in ("gpu", "cpus_per_task", "mem_mb", "runtime")} == {
        "gpu": "1",
        "cpus_per_task": "4",
        "mem_mb": "16000",
        "runtime": "60",
    }
    assert {k: res["train_images"][k] for k in ("gpu", "cpus_per_task", "mem_mb", "runtime")} == {
        "gpu": "0",
        "cpus_per_task": "4",
        "mem_mb": "16000",
        "runtime": "120",
    }
    assert {k: res["train"][k] for k in ("cpus_per_task", "mem_mb", "runtime")} == {
        "cpus_per_task": "1",
        "mem_mb": "4000",
        "runtime": "30",
    }


# --- on the local cluster -----------------------------------------------------------------------------------


def shell(line: str, cwd: Path, **kw) -> subprocess.CompletedProcess:
    """A line of the docs as a user runs it (`sudo` dropped: the test runs as root)."""
    return subprocess.run(
        ["bash", "-c", re.sub(r"^sudo ", "", line)], cwd=cwd, env=ENV, capture_output=True, text=True, **kw
    )


def slurm_job_ids(log: str) -> list[str]:
    return re.findall(r"submitted with SLURM jobid (\d+)", log)


def sbatch_calls(log: str) -> list[dict]:
    """What each sbatch call asked for: the job's kind (rule_<rule> or group_<name>_...), CPUs, MB, minutes, GPUs."""
    calls = []
    for line in log.splitlines():
        if "sbatch call: sbatch " not in line:
            continue
        head = line.split(" --wrap=")[0]
        kind = re.search(r"slurm_logs/([^/]+)/", head).group(1)
        number = {
            key: re.search(pattern, head)
            for key, pattern in (
                ("cpus", r"--cpus-per-task=(\d+)"),
                ("mem_mb", r"--mem (\d+)"),
                ("minutes", r" -t '?(\d+)"),
                ("gpus", r"--gpus=(\d+)"),
            )
        }
        calls.append({"kind": kind, **{k: int(m.group(1)) if m else 0 for k, m in number.items()}})
    return calls


def clone_with_tiny_config(tmp: Path) -> Path:
    """A clone of the repository whose config is the reduced pocket config plus vpt_deep, committed."""
    work = tmp / "work"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(work)], check=True, env=ENV)
    cfg = yaml.safe_load(TINY.read_text())
    cfg["methods"] = [*cfg["methods"], "vpt_deep"]
    cfg["method_overrides"]["vpt_deep"] = {"epochs": 1}
    (work / "config" / "config.yaml").write_text(yaml.safe_dump(cfg))
    subprocess.run(["git", "commit", "--quiet", "-am", "test: tiny pocket config"], cwd=work, check=True, env=ENV)
    (work / ".venv").symlink_to(VENV)  # `source .venv/bin/activate`: the test's environment
    return work


def run_the_docs_commands(work: Path, afterwards: bool) -> dict:
    """The docs' Running block in ``work``: cluster-check, the run through its flags, then (``afterwards``)
    dvc repro and a dry run."""
    activate, check_line, run_line, repro_line = commands("running")
    out = {"check": shell(f"{activate} && {check_line}", work)}
    proc = subprocess.Popen(
        ["bash", "-c", f"{activate} && {run_line} {TEST_FLAGS}"],
        cwd=work,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        log, _ = proc.communicate(timeout=900)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        log, _ = proc.communicate()
        if ids := slurm_job_ids(log):  # only the jobs this run submitted
            subprocess.run(["scancel", *ids], capture_output=True, env=ENV)
        log += "\n[test] the SLURM run did not finish in 15 minutes"
    out.update(run=log, run_rc=proc.returncode, status_after_run=shell("git status --porcelain", work).stdout)
    if afterwards:
        out["repro"] = shell(f"{activate} && {repro_line}", work)
        out["status_after_repro"] = shell("git status --porcelain", work).stdout
        out["dry"] = shell(f"{activate} && snakemake -n", work)
    # what cluster-check predicts each SLURM job asks for (the same computation, in this process)
    settings = cc.read_settings([str(work / "workflow/profiles/slurm")], [])
    out["report"] = cc.check(cc.plan(settings, cwd=str(work)), cc.query_cluster(), settings)
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("SLURM test: needs root to start a local cluster (scripts/slurm/start_local_cluster.sh)")
    if shutil.which("sbatch") is None or not Path("/usr/sbin/slurmctld").exists():
        pytest.skip("SLURM test: slurm-wlm and munge are not installed (make system-deps)")
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("SLURM test: needs git and a git checkout of the project (it runs in a clone)")
    start_gpu, start_cpu, stop = commands("local_cluster")
    tmp = tmp_path_factory.mktemp("slurm")
    local = tmp / "local"
    (local / "config").mkdir(parents=True)
    results = {}
    local_run = None
    try:
        for mode, start in (("cpu", start_cpu), ("gpu", start_gpu)):
            if NODE[mode]:
                start += f" --cpus {NODE[mode]['cpus']} --mem-mb {NODE[mode]['mem_mb']}"
            proc = shell(start, REPO)
            if proc.returncode in (2, 3):  # prerequisites missing / a real cluster's config, left alone
                pytest.skip(f"SLURM test: cannot start a local cluster here: {proc.stderr.strip()}")
            assert proc.returncode == 0, f"{start} failed:\n{proc.stdout}\n{proc.stderr}"
            work = clone_with_tiny_config(tmp / mode)
            offset = CONTROLLER_LOG.stat().st_size if CONTROLLER_LOG.exists() else 0
            if mode == "cpu":  # the cluster runs mostly wait on the scheduler: the local reference run goes beside both
                shutil.copy(work / "config" / "config.yaml", local / "config" / "config.yaml")
                with open(tmp / "local.log", "w") as log:
                    local_run = subprocess.Popen(
                        SNAKEMAKE
                        + ["-d", str(local), "--profile", str(REPO / "workflow/profiles/local"), "--cores", "1"]
                        + ["--quiet"],
                        env=ENV,
                        stdout=subprocess.DEVNULL,
                        stderr=log,
                    )
            # dvc repro and the dry run afterwards read only the files of the run: once, after the run with the
            # GPU (the same DAG and files as without; which node ran the jobs changes nothing there)
            results[mode] = run_the_docs_commands(work, afterwards=mode == "gpu")
            results[mode]["work"] = work
            results[mode]["controller"] = (
                CONTROLLER_LOG.read_text(errors="replace")[offset:] if CONTROLLER_LOG.exists() else ""
            )
        # with a user's own --set-resources given to cluster-check: its flags carry it, with the fixes
        results["extended"] = shell(
            f"{commands('running')[1]} --flags -- --set-resources train_images:runtime=240", results["gpu"]["work"]
        )
        assert local_run is not None and local_run.wait(timeout=900) == 0, (tmp / "local.log").read_text()[-4000:]
    finally:
        if local_run is not None and local_run.poll() is None:  # the fixture failed before the reference run ended
            local_run.kill()
            local_run.wait()
        results["stopped"] = shell(stop, REPO)
    results["local"] = local
    return results


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["cpu", "gpu"])
def test_cluster_check_names_what_does_not_fit_and_the_fix(runs, mode):
    check = runs[mode]["check"]
    assert check.returncode == 0, check.stdout + check.stderr
    text = check.stdout
    assert "accounting storage is disabled" in text and "fix: --slurm-status-command squeue" in text, text
    assert "note: account: no accounting database" in text
    for rule in GPU_RULES:  # 4 CPUs on a 2-CPU node: too many; on the 8-CPU node: fine
        cpus = node_cpus(mode)
        assert (f"fix: {rule}:cpus_per_task=" in text) == (cpus < 4), text
        assert cpus >= 4 or f"fix: {rule}:cpus_per_task={cpus}" in text, text
        assert (f"fix: {rule}:gpu=0" in text) == (mode == "cpu"), text


@pytest.mark.slow
def test_cluster_check_flags_extend_the_users_own(runs):
    flags = runs["extended"].stdout.split()
    entries = flags[flags.index("--set-resources") + 1 :]
    assert "train_images:runtime=240" in entries and "--slurm-status-command" in flags, flags
    if node_cpus("gpu") < 4:  # the last cluster started: the GPU mode's
        assert "train_images:cpus_per_task=" + str(node_cpus("gpu")) in entries, flags


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["cpu", "gpu"])
def test_every_job_went_through_sbatch(runs, mode):
    log, work = runs[mode]["run"], runs[mode]["work"]
    assert runs[mode]["run_rc"] == 0, log[-6000:]
    ids = slurm_job_ids(log)
    # grouped by the profile: data (prepare, classes, few-shot subset), extract_test, extract_fewshot,
    # train (zeroshot, coop), train_images (vpt_deep, a job of its own), report (aggregate+report)
    assert len(ids) == 6, log[-4000:]
    logs = list((work / ".snakemake" / "slurm_logs").rglob("*.log"))
    assert {p.stem for p in logs} == set(ids)
    # one directory per group (group_<name>_<its rules>) or ungrouped rule (rule_<name>)
    dirs = sorted(p.relative_to(work / ".snakemake" / "slurm_logs").parts[0] for p in logs)
    assert dirs[0].startswith("group_data_") and dirs[1:] == [
        "group_report_aggregate_report",
        "group_train_train",
        "rule_extract_fewshot",
        "rule_extract_test",
        "rule_train_images",
    ], dirs
    text = "\n".join(p.read_text() for p in logs)
    for rule in [
        "prepare_dataset",
        "split_classes",
        "sample_fewshot",
        "extract_test",
        "extract_fewshot",
        "train",
        "train_images",
        "aggregate",
        "report",
    ]:
        assert f"rule {rule}:" in text, f"{rule} did not run inside a SLURM job"
    for job_id in ids:  # the controller started each (main scheduler or backfill)
        assert re.search(rf"(Allocate|Started) JobId={job_id} ", runs[mode]["controller"]), job_id


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["cpu", "gpu"])
def test_each_job_asked_for_what_cluster_check_predicted(runs, mode):
    calls = sbatch_calls(runs[mode]["run"])
    assert len(calls) == 6, runs[mode]["run"][-4000:]
    report = runs[mode]["report"]
    predicted = {}
    for r in report.after:
        kind = f"group_{r.group}" if r.group else f"rule_{r.kind}"
        predicted[kind] = {"cpus": r.cpus, "mem_mb": r.mem_mb, "minutes": r.minutes, "gpus": r.gpus}
    cpus = node_cpus(mode)
    for call in calls:
        # a rule's directory is rule_<rule>, a group's group_<name>_<its rules>
        kind = next(
            k for k in predicted if call["kind"] == k or k.startswith("group_") and call["kind"].startswith(k + "_")
        )
        assert {k: call[k] for k in ("cpus", "mem_mb", "minutes", "gpus")} == predicted[kind], call
        assert call["cpus"] <= cpus  # fits the node: groups run at most `cores` members side by side
        rule = call["kind"].removeprefix("rule_")
        assert call["gpus"] == (1 if mode == "gpu" and rule in GPU_RULES else 0), call


@pytest.mark.slow
def test_jobs_ran_side_by_side_on_the_larger_node(runs):
    """On the node declared larger than the machine (start_local_cluster.sh --cpus --mem-mb), the controller
    ran jobs at the same time: the two extraction jobs the data job's end releases (4 CPUs and 16 GB each)."""
    events = re.findall(r"(?:Allocate|Started) JobId=(\d+) |_job_complete: JobId=(\d+) done", runs["cpu"]["controller"])
    running, most = set(), 0
    for started, done in events:
        if started:
            running.add(started)
        else:
            running.discard(done)
        most = max(most, len(running))
    assert most >= 2, runs["cpu"]["controller"][-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["cpu", "gpu"])
def test_same_summary_as_a_local_run(runs, mode):
    rel = Path("results") / "tiny" / "summary.csv"
    assert (runs[mode]["work"] / rel).read_bytes() == (runs["local"] / rel).read_bytes()
    assert (runs[mode]["work"] / "reports" / "tiny" / "report.md").exists()


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["cpu", "gpu"])
def test_git_status_clean_after_the_run(runs, mode):
    assert runs[mode]["status_after_run"] == "", runs[mode]["status_after_run"]


@pytest.mark.slow
def test_nothing_to_do_afterwards_and_only_the_lock_after_dvc_repro(runs):
    r = runs["gpu"]
    assert "Nothing to be done" in r["dry"].stdout + r["dry"].stderr, r["dry"].stdout[-3000:]
    assert r["repro"].returncode == 0, r["repro"].stdout[-3000:] + r["repro"].stderr[-3000:]
    out = r["repro"].stdout + r["repro"].stderr
    assert out.count("Nothing to be done") == 4 and "Running stage 'report'" in out, out  # four stages, no job
    assert r["status_after_repro"].strip() == "?? dvc.lock"


@pytest.mark.slow
def test_the_cluster_stops_and_leaves_no_config(runs):
    assert runs["stopped"].returncode == 0, runs["stopped"].stderr
    assert subprocess.run(["pgrep", "-x", "slurmctld"], capture_output=True).returncode == 1
    # a config naming a controller that is gone makes every SLURM command (and snakemake) wait for it
    assert not Path("/etc/slurm/slurm.conf").exists()
