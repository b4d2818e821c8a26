#!/usr/bin/env bash
# Stop the single-node cluster started by start_local_cluster.sh (slurmd, slurmctld; munged with --munge).
# Only daemons whose pid files this cluster's config names are stopped. The slurm.conf and gres.conf the start
# script wrote are removed too: with a config naming a controller that is gone, every SLURM command (and so
# every `snakemake`, whose SLURM plugin calls `scontrol show config` when imported) waits about 9 s for it.
set -uo pipefail
[ "$(id -u)" = 0 ] || { echo "stop_local_cluster: needs root" >&2; exit 2; }

stop() {  # stop <pidfile> <name>
  local pid
  [ -s "$1" ] || return 0
  pid=$(cat "$1")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    echo "stop_local_cluster: stopped $2 ($pid)"
  fi
  rm -f "$1"
}

stop /run/slurmd.pid slurmd
stop /run/slurmctld.pid slurmctld
if [ "${1:-}" = "--munge" ]; then stop /run/munge/munged.pid munged; fi
MARK="# written by vlprompt scripts/slurm/start_local_cluster.sh"
for conf in /etc/slurm/slurm.conf /etc/slurm/gres.conf; do
  if [ -f "$conf" ] && grep -qF "$MARK" "$conf"; then rm -f "$conf"; fi
done
exit 0
