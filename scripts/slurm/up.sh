#!/usr/bin/env bash
# Bring up a single-node SLURM cluster on this (Debian, no systemd) machine, as root: the
# Debian packages, munged, a slurm.conf for one node (this host: its CPUs, ~80% of its memory),
# slurmctld and slurmd; then wait (bounded) until the node is idle and a job runs through.
# Idempotent: a cluster that already answers is left as it is. scripts/slurm/down.sh stops it.
#   MLPRUN_SLURM_STATE  state, logs and pid files (default /var/lib/mlprun-slurm)
#   MLPRUN_SLURM_WAIT   seconds to wait for the node and the test job (default 90)
# No accounting (slurmdbd): sacct is not needed by mlprun or its tests.
set -euo pipefail
STATE=${MLPRUN_SLURM_STATE:-/var/lib/mlprun-slurm}
WAIT=${MLPRUN_SLURM_WAIT:-90}
CONF=/etc/slurm/slurm.conf
start=$(date +%s)
say() { echo "slurm-up: $*"; }
die() { echo "slurm-up: error: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (it installs packages and starts daemons)"

cluster_ok() { sinfo -h -o '%t' 2>/dev/null | grep -qE '^(idle|mix|alloc)'; }
if command -v sinfo >/dev/null && [ -f "$CONF" ] && cluster_ok; then
    say "a cluster is already up: $(sinfo -h -o '%P %D %t %c CPUs %m MB' | head -1)"
    exit 0
fi

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null \
    || ! command -v munged >/dev/null; then
    command -v apt-get >/dev/null || die "no apt-get: install slurmctld slurmd slurm-client munge yourself"
    say "installing slurmctld slurmd slurm-client munge"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
fi

# munge: Debian's package made /etc/munge/munge.key; munged runs as the munge user.
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
chmod 0755 /run/munge
if [ ! -f /etc/munge/munge.key ]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
fi
if ! munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
    say "starting munged"
    runuser -u munge -- /usr/sbin/munged
    for _ in $(seq 50); do munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
    munge -n </dev/null | unmunge >/dev/null || die "munged does not answer (see /var/log/munge/munged.log)"
fi

# slurm.conf: one node, this host, as slurmd -C sees it; memory ~80% so the OS keeps some.
node=$(hostname -s)
hw=$(slurmd -C | head -1)
cpus=$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<<"$hw")
sockets=$(sed -n 's/.* SocketsPerBoard=\([0-9]*\).*/\1/p' <<<"$hw")
cores=$(sed -n 's/.* CoresPerSocket=\([0-9]*\).*/\1/p' <<<"$hw")
threads=$(sed -n 's/.* ThreadsPerCore=\([0-9]*\).*/\1/p' <<<"$hw")
realmem=$(sed -n 's/.* RealMemory=\([0-9]*\).*/\1/p' <<<"$hw")
mem=$((realmem * 8 / 10))
mkdir -p "$STATE"/{ctld,spool,log} /etc/slurm
cat >"$CONF" <<CONFEOF
# written by mlprunner's scripts/slurm/up.sh: a single-node cluster for tests
ClusterName=mlprun
SlurmctldHost=$node
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MailProg=/bin/true
JobCompType=jobcomp/filetxt
JobCompLoc=$STATE/log/jobcomp.log
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
MessageTimeout=10
InactiveLimit=0
KillWait=5
MinJobAge=600
Waittime=0
SchedulerParameters=sched_interval=2
NodeName=$node CPUs=$cpus SocketsPerBoard=$sockets CoresPerSocket=$cores ThreadsPerCore=$threads RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP
CONFEOF
say "wrote $CONF: node $node, $cpus CPUs, $mem MB; state in $STATE"

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
if ! running "$STATE/slurmctld.pid"; then
    say "starting slurmctld"
    /usr/sbin/slurmctld -i
fi
for _ in $(seq $((WAIT * 5))); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.2; done
scontrol ping | grep -q UP || die "slurmctld does not answer (see $STATE/log/slurmctld.log)"
if ! running "$STATE/slurmd.pid"; then
    say "starting slurmd"
    /usr/sbin/slurmd
fi

deadline=$((start + WAIT))
until cluster_ok; do
    [ "$(date +%s)" -lt "$deadline" ] || die "node $node not idle after ${WAIT}s: $(sinfo -h -N -o '%t %E' 2>&1) (see $STATE/log)"
    sleep 0.5
done
scontrol update NodeName="$node" State=RESUME >/dev/null 2>&1 || true

out=$(mktemp)
jid=$(sbatch --parsable --output="$out" --time=1 --wrap=hostname)
while :; do
    st=$(scontrol show job "$jid" 2>/dev/null | sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p')
    [ "$st" = COMPLETED ] && break
    case "$st" in FAILED | CANCELLED | TIMEOUT | NODE_FAIL | OUT_OF_MEMORY) die "test job $jid ended $st" ;; esac
    [ "$(date +%s)" -lt "$deadline" ] || die "test job $jid not done after ${WAIT}s (state ${st:-unknown})"
    sleep 0.5
done
grep -qx "$node" "$out" || die "test job $jid printed $(cat "$out") instead of $node"
rm -f "$out"
say "up in $(($(date +%s) - start)) s: $(sinfo -h -o '%P %D node(s) %t %c CPUs %m MB' | head -1)"
