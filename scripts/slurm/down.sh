#!/usr/bin/env bash
# Stop the cluster scripts/slurm/up.sh started: slurmd, slurmctld and munged, by their pid files
# (bounded wait, then SIGKILL). The packages, slurm.conf and the state folder stay.
set -uo pipefail
STATE=${MLPRUN_SLURM_STATE:-/var/lib/mlprun-slurm}
stop() {  # name pidfile
    local pid
    [ -f "$2" ] || return 0
    pid=$(cat "$2")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
        echo "slurm-down: stopped $1 ($pid)"
    fi
    rm -f "$2"
}
stop slurmd "$STATE/slurmd.pid"
stop slurmctld "$STATE/slurmctld.pid"
stop munged /run/munge/munged.pid
