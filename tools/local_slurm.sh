#!/bin/bash
# A real one-node SLURM cluster on this machine (Debian's slurm-wlm + munge), for trying
# tools/slurm_train.sbatch and for `pytest -m cluster` (tests/test_slurm.py).
#   tools/local_slurm.sh [start|stop]        (root; start is the default and is idempotent)
# start: installs slurmctld, slurmd, the clients and munge with apt where missing, writes
# /etc/slurm/slurm.conf for one node (this host, its CPUs, no GPUs), starts munged, slurmctld
# and slurmd directly (no systemd here), and waits until `sinfo` shows the node idle.
# stop: ends the three daemons this script started (by their pid files).
# No cgroups: processes are tracked by their parent links (proctrack/linuxproc), tasks are not
# bound to cores (task/none), so it runs in a container. Jobs may requeue themselves
# (JobRequeue=1) and a requeued job waits cred_expire (10 s here, 120 s by default) to restart.
set -euo pipefail

STATE=${FIREHOSE_SLURM_STATE:-/var/spool/firehose-slurm}  # state, spool, logs and pid files
CONF=/etc/slurm/slurm.conf
HEADER="# written by firehose tools/local_slurm.sh"
WAIT_S=60

die() { echo "error: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "tools/local_slurm.sh must run as root (it installs packages and starts daemons)"

running() {  # the daemon whose pid file is $1 is alive
    [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

stop() {
    for pidfile in "$STATE/slurmd.pid" "$STATE/slurmctld.pid" "$STATE/munged.pid"; do
        if running "$pidfile"; then
            kill "$(cat "$pidfile")"
        fi
    done
}

install() {
    local missing=()
    for exe in slurmctld slurmd sinfo munged; do
        command -v "$exe" >/dev/null || missing+=("$exe")
    done
    [ ${#missing[@]} = 0 ] && return
    command -v apt-get >/dev/null || die "no apt-get to install slurm and munge (missing: ${missing[*]})"
    local log=/tmp/firehose-slurm-apt.log
    if ! { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
            slurmctld slurmd slurm-client munge; } >"$log" 2>&1; then
        die "apt-get could not install slurmctld slurmd slurm-client munge (see $log: $(tail -n 1 "$log"))"
    fi
}

write_conf() {
    [ ! -e "$CONF" ] || head -n 1 "$CONF" | grep -qx "$HEADER" \
        || die "$CONF exists and was not written by this script: not overwriting it"
    # This host as slurmd sees it (sockets, cores, threads), less its memory: free memory changes,
    # and a node configured with more than it has is drained.
    local node
    node=$(slurmd -C | head -n 1 | sed 's/ RealMemory=[0-9]*//')
    mkdir -p "$(dirname "$CONF")" "$STATE/ctld" "$STATE/d"
    cat >"$CONF.tmp" <<EOF
$HEADER
ClusterName=firehose-local
SlurmctldHost=$(hostname -s)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobRequeue=1
ReturnToService=2
MpiDefault=none
SchedulerType=sched/backfill
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
$node State=UNKNOWN
PartitionName=local Nodes=$(hostname -s) Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
    mv "$CONF.tmp" "$CONF"
}

start_munge() {
    running "$STATE/munged.pid" && return
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    [ -s /etc/munge/munge.key ] || { mungekey --create --keyfile /etc/munge/munge.key && chown munge:munge /etc/munge/munge.key; }
    runuser -u munge -- munged
    cp /run/munge/munged.pid "$STATE/munged.pid"
}

wait_idle() {
    local node
    node=$(hostname -s)
    for _ in $(seq "$WAIT_S"); do
        if sinfo -h -n "$node" -o %T 2>/dev/null | grep -qx idle; then
            echo "slurm: node $node idle ($(sinfo -h -n "$node" -o '%c CPUs, partition %P'))"
            return
        fi
        sleep 1
    done
    die "node $node not idle after ${WAIT_S} s: sinfo says '$(sinfo -h -n "$node" -o '%T %E' 2>&1)'; see $STATE/*.log"
}

case "${1:-start}" in
    start)
        install
        write_conf
        start_munge
        # slurmctld recovers saved jobs on a restart; slurmd -b reports a fresh boot
        running "$STATE/slurmctld.pid" || slurmctld
        running "$STATE/slurmd.pid" || slurmd -b
        wait_idle
        ;;
    stop)
        stop
        ;;
    *)
        die "unknown command '$1' (expected start or stop)"
        ;;
esac
