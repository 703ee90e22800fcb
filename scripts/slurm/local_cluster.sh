#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for the tests and for trying the scripts by hand.
#
#   sudo apt-get install -y slurm-wlm munge      # once (Debian/Ubuntu)
#   scripts/slurm/local_cluster.sh start         # munged + slurmctld + slurmd on localhost
#   sinfo; sbatch ...; squeue
#   scripts/slurm/local_cluster.sh stop
#
# It writes /etc/slurm/slurm.conf (so sbatch/srun find it without SLURM_CONF) with one node named
# after this host, all its CPUs, proctrack/linuxproc and no cgroups (none are needed, and containers
# often lack them). Needs root (it starts the daemons as root). State and logs: $LANDCOVER_SLURM_DIR
# (default /tmp/landcover-slurm).
set -euo pipefail

DIR=${LANDCOVER_SLURM_DIR:-/tmp/landcover-slurm}
CONF=/etc/slurm/slurm.conf
HOST=$(hostname -s)
CPUS=$(nproc)

need() { command -v "$1" >/dev/null || { echo "error: $1 not found; install it: sudo apt-get install -y slurm-wlm munge" >&2; exit 2; }; }

start() {
    need slurmctld; need slurmd; need munged
    if [ "$(id -u)" != 0 ]; then echo "error: run as root (it writes $CONF and starts the daemons)" >&2; exit 2; fi
    mkdir -p "$DIR"/{state,spool,log} /etc/slurm /run/munge /var/log/munge /var/lib/munge
    chown -R munge:munge /run/munge /var/log/munge /var/lib/munge /etc/munge 2>/dev/null || true
    if [ ! -s /etc/munge/munge.key ]; then
        dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
        chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
    fi
    pgrep -x munged >/dev/null || runuser -u munge -- /usr/sbin/munged
    cat >"$CONF" <<EOF
# written by landcover scripts/slurm/local_cluster.sh
ClusterName=landcover
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
KillWait=5
MinJobAge=600
NodeName=$HOST CPUs=$CPUS State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
    pgrep -x slurmctld >/dev/null || /usr/sbin/slurmctld -c -i
    pgrep -x slurmd >/dev/null || /usr/sbin/slurmd -c
    for _ in $(seq 1 30); do
        if sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
            echo "local SLURM up: node $HOST, $CPUS CPUs, partition debug (logs in $DIR/log)"
            return 0
        fi
        scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true
        sleep 1
    done
    echo "error: the node did not come up; see $DIR/log/slurmctld.log and slurmd.log" >&2
    sinfo >&2 || true
    exit 1
}

stop() {
    scancel --user="$(id -un)" >/dev/null 2>&1 || true
    for daemon in slurmd slurmctld; do
        pkill -x "$daemon" 2>/dev/null || true
    done
    for _ in $(seq 1 20); do
        pgrep -x slurmctld >/dev/null || pgrep -x slurmd >/dev/null || break
        sleep 0.5
    done
    rm -rf "$DIR/state" "$DIR/spool"
    echo "local SLURM stopped"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) sinfo && squeue ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
