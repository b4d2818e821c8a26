#!/usr/bin/env bash
# Start a single-node SLURM cluster on this machine (Debian/Ubuntu slurm-wlm + munge, as root):
# one node "localhost" with this machine's CPUs and memory, one partition "local", no accounting database
# (sacct exists but answers "accounting storage is disabled"), and one placeholder GPU (gres gpu:1 backed by
# /dev/null, so that jobs asking for a GPU are scheduled; they run on the CPU) unless --gpus 0.
#
#   sudo scripts/slurm/start_local_cluster.sh             # idempotent: a running, healthy cluster is left alone
#   sudo scripts/slurm/start_local_cluster.sh --gpus 0    # a CPU-only cluster (restarts one with a GPU)
#   sudo scripts/slurm/start_local_cluster.sh --cpus 8 --mem-mb 65536   # a node larger than this machine
#   sudo scripts/slurm/stop_local_cluster.sh
#
# --cpus and --mem-mb give the node more CPUs or memory than this machine has (slurmd is told to trust the
# config: SlurmdParameters=config_overrides), so that several jobs that each ask for more than a small machine
# has run side by side (they share its real CPUs and memory): to see a profile's jobs run at once, as on a
# larger node. Without them the node is this machine.
#
# Exit status: 0 when the cluster answers (sinfo shows the node idle), 2 when it cannot be started
# here (not root, slurm-wlm or munge missing), 3 when /etc/slurm/slurm.conf belongs to a real cluster
# (left alone), 1 when starting failed (see the logs it names).
set -euo pipefail

MARK="# written by vlprompt scripts/slurm/start_local_cluster.sh"
CONF=/etc/slurm/slurm.conf
GRES=/etc/slurm/gres.conf
STATE=/var/lib/slurm/vlprompt
LOGS=/var/log/slurm

die() { echo "start_local_cluster: $2" >&2; exit "$1"; }

gpus=1; node_cpus=""; node_mem_mb=""
usage="usage: start_local_cluster.sh [--gpus 0|1] [--cpus N] [--mem-mb N]"
while [ $# -gt 0 ]; do
  case "$1" in
    --gpus) [ $# -ge 2 ] || die 1 "--gpus needs 0 or 1"; gpus=$2; shift 2 ;;
    --gpus=*) gpus=${1#--gpus=}; shift ;;
    --cpus) [ $# -ge 2 ] || die 1 "--cpus needs a number of CPUs"; node_cpus=$2; shift 2 ;;
    --cpus=*) node_cpus=${1#--cpus=}; shift ;;
    --mem-mb) [ $# -ge 2 ] || die 1 "--mem-mb needs a number of MB"; node_mem_mb=$2; shift 2 ;;
    --mem-mb=*) node_mem_mb=${1#--mem-mb=}; shift ;;
    *) die 1 "unknown argument '$1' ($usage)" ;;
  esac
done
case "$gpus" in 0|1) ;; *) die 1 "--gpus takes 0 (a CPU-only cluster) or 1 (one placeholder GPU), not '$gpus'" ;; esac
for value in "$node_cpus" "$node_mem_mb"; do
  case "$value" in ""|[1-9]|[1-9][0-9]*) ;; *) die 1 "--cpus and --mem-mb take a positive whole number, not '$value'" ;; esac
done

[ "$(id -u)" = 0 ] || die 2 "needs root (it writes $CONF and starts munged, slurmctld, slurmd)"
for exe in munged slurmctld slurmd sbatch squeue sinfo scontrol; do
  command -v "$exe" >/dev/null || [ -x "/usr/sbin/$exe" ] ||
    die 2 "'$exe' not found: install slurm-wlm and munge (make system-deps, or apt-get install slurm-wlm munge)"
done
export PATH="$PATH:/usr/sbin"

healthy() { sinfo -h -N -o '%N %t' 2>/dev/null | grep -Eq '^localhost (idle|mix|alloc)'; }

# --- munge: the authentication daemon every SLURM command talks to -------------------------------
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
chmod 0755 /run/munge
if [ ! -s /etc/munge/munge.key ]; then
  mkdir -p /etc/munge
  if command -v mungekey >/dev/null; then mungekey --create --keyfile=/etc/munge/munge.key
  else dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none; fi
  chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
fi
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  if id munge >/dev/null 2>&1; then runuser -u munge -- munged || munged --force
  else munged --force; fi
  for _ in $(seq 20); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.25; done
  munge -n | unmunge >/dev/null || die 1 "munged did not start (see /var/log/munge/munged.log)"
fi

# --- slurm.conf: this machine as the only node ---------------------------------------------------
if [ -e "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
  die 3 "$CONF exists and was not written by this script: refusing to overwrite a real cluster's config"
fi
cpus=$(getconf _NPROCESSORS_ONLN)  # not nproc: it follows OMP_NUM_THREADS
mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 512 ))
overrides=""  # a node larger than the machine: slurmd takes the config's CPUs and memory instead of the machine's
if [ -n "$node_cpus$node_mem_mb" ]; then
  cpus=${node_cpus:-$cpus}; mem_mb=${node_mem_mb:-$mem_mb}; overrides=$'\nSlurmdParameters=config_overrides'
fi
mkdir -p "$STATE/ctld" "$STATE/d" "$LOGS"
node_gres=""; gres_conf="$MARK"
if [ "$gpus" = 1 ]; then  # a placeholder: a job asking for a GPU is scheduled and runs on the CPU
  node_gres="Gres=gpu:1"
  gres_conf=$(printf '%s\n%s' "$MARK" "NodeName=localhost Name=gpu Count=1 File=/dev/null")
fi
new_conf=$(cat <<CONF
$MARK
ClusterName=vlprompt-local
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# finished jobs stay visible to squeue for 5 minutes (the executor's squeue status checks need them)
MinJobAge=300
ReturnToService=2
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0$overrides
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
SlurmctldDebug=info
GresTypes=gpu
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb $node_gres State=UNKNOWN
PartitionName=local Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF
)
if [ -e "$CONF" ] && [ "$(cat "$CONF")" = "$new_conf" ] && healthy; then
  echo "start_local_cluster: already running"; sinfo; exit 0
fi
# a new config (or daemons that are not running): stop what runs with the old one, which also removes the
# old config, then write this one
"$(dirname "$0")/stop_local_cluster.sh" >/dev/null 2>&1 || true
printf '%s\n' "$new_conf" > "$CONF"
printf '%s\n' "$gres_conf" > "$GRES"

pgrep -x slurmctld >/dev/null || slurmctld || die 1 "slurmctld did not start (see $LOGS/slurmctld.log)"
pgrep -x slurmd >/dev/null || slurmd -N localhost || die 1 "slurmd did not start (see $LOGS/slurmd.log)"
for _ in $(seq 60); do
  healthy && { sinfo; exit 0; }
  # a node left down by an earlier run comes back once its slurmd answers
  scontrol update nodename=localhost state=resume >/dev/null 2>&1 || true
  sleep 0.5
done
sinfo >&2 || true
die 1 "the node did not come up (see $LOGS/slurmctld.log and $LOGS/slurmd.log)"
