#!/usr/bin/env bash
# A real single-node Slurm (slurmctld + slurmd + munge, Debian's packages) for tests and
# for trying `vmwu sweep --executor slurm` on one machine. Run as root.
#
#   bash scripts/slurm-test-cluster.sh start    # prints `export SLURM_CONF=…` as its last line
#   bash scripts/slurm-test-cluster.sh status
#   bash scripts/slurm-test-cluster.sh stop
#
# Everything of Slurm's lives under $VMWU_SLURM_DIR (default /tmp/vmwu-slurm): slurm.conf,
# state, spool, logs, pid files and the jobcomp file. munge is the system's (/etc/munge,
# /run/munge): Slurm's auth plugin talks to its default socket. Facts behind the settings:
# /work/shared/notes/slurm-single-node.md (cgroups do not work in containers, so
# proctrack/linuxproc + task/none; config_overrides lets the node declare any CPU count;
# batch_sched_delay=0 starts small jobs at once; no slurmdbd, so jobcomp/filetxt and a
# large MinJobAge keep finished jobs' states visible).
#
# Environment: VMWU_SLURM_DIR, VMWU_SLURM_CPUS (default: cores, at least 2),
# VMWU_SLURM_PORT (slurmctld port, default 6817; slurmd uses the next one).
set -euo pipefail

DIR=${VMWU_SLURM_DIR:-/tmp/vmwu-slurm}
CONF=$DIR/slurm.conf
PORT=${VMWU_SLURM_PORT:-6817}
export SLURM_CONF=$CONF

die() { echo "slurm-test-cluster: $*" >&2; exit 1; }
say() { echo "slurm-test-cluster: $*" >&2; }

need() {
    for tool in munged mungekey slurmctld slurmd sbatch squeue scontrol sinfo; do
        PATH=$PATH:/usr/sbin:/sbin command -v "$tool" >/dev/null ||
            die "$tool is missing (apt-get install slurm-wlm slurmctld slurmd slurm-client munge, or run scripts/setup.sh)"
    done
    [ "$(id -u)" -eq 0 ] || die "run me as root (slurmd starts jobs as their users)"
}

munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
    if munge_ok; then return; fi
    # munged refuses a key or directories that are not owned by munge (or root).
    install -d -o munge -g munge -m 0700 /etc/munge
    if [ ! -s /etc/munge/munge.key ]; then
        runuser -u munge -- /usr/sbin/mungekey -c -k /etc/munge/munge.key
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
    install -d -o munge -g munge -m 0755 /run/munge
    runuser -u munge -- /usr/sbin/munged --log-file=/run/munge/munged.log \
        --seed-file=/run/munge/munged.seed --pid-file=/run/munge/munged.pid
    touch "$DIR/munged.ours"
    for _ in $(seq 50); do munge_ok && return; sleep 0.1; done
    die "munged did not start (see /run/munge/munged.log)"
}

# scontrol waits ~30 s for a controller that is not there: ask only when ours is alive.
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
ctld_up() { alive "$DIR/slurmctld.pid" && scontrol ping 2>/dev/null | grep -q "is UP"; }

node_idle() { sinfo -h -N -o "%T" 2>/dev/null | grep -q -E "^(idle|mixed|allocated)"; }

write_conf() {
    local cpus=${VMWU_SLURM_CPUS:-$(nproc)}
    [ "$cpus" -ge 2 ] || cpus=2
    local mem
    mem=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)
    mkdir -p "$DIR/state" "$DIR/spool"
    cat >"$CONF" <<EOF
# written by scripts/slurm-test-cluster.sh: a single-node test cluster
ClusterName=vmwutest
SlurmctldHost=localhost
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/jobcomp.txt
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
SlurmdParameters=config_overrides
ReturnToService=2
MinJobAge=3600
MaxArraySize=100001
MaxJobCount=200000
KillWait=5
InactiveLimit=0
MpiDefault=none
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=test Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
}

start() {
    need
    mkdir -p "$DIR"
    start_munge
    if ctld_up && node_idle; then
        say "already running ($CONF)"
        echo "export SLURM_CONF=$CONF"
        return
    fi
    [ -f "$CONF" ] || write_conf
    if ! ctld_up; then
        # -i: ignore a stale state from an earlier cluster in this directory
        setsid /usr/sbin/slurmctld -D -i -f "$CONF" >>"$DIR/slurmctld.out" 2>&1 < /dev/null &
        for _ in $(seq 100); do ctld_up && break; sleep 0.1; done
        ctld_up || die "slurmctld did not come up (see $DIR/slurmctld.log)"
    fi
    if ! alive "$DIR/slurmd.pid"; then
        setsid /usr/sbin/slurmd -D -N localhost -f "$CONF" >>"$DIR/slurmd.out" 2>&1 < /dev/null &
    fi
    for _ in $(seq 150); do node_idle && break; sleep 0.1; done
    node_idle || die "the node did not become idle (see $DIR/slurmd.log; sinfo: $(sinfo -h -N 2>&1 | tr '\n' ' '))"
    say "up: $(sinfo -h -N -o '%N %T %c CPUs' | tr '\n' ' ')"
    echo "export SLURM_CONF=$CONF"
}

stop_pidfile() {
    local pidfile=$1
    [ -f "$pidfile" ] || return 0
    local pid
    pid=$(cat "$pidfile")
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill "$pid"
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    fi
    rm -f "$pidfile"
}

stop() {
    if [ -f "$CONF" ] && ctld_up; then
        scancel --full --quiet --partition test 2>/dev/null || true
    fi
    stop_pidfile "$DIR/slurmd.pid"
    stop_pidfile "$DIR/slurmctld.pid"
    if [ -f "$DIR/munged.ours" ]; then
        stop_pidfile /run/munge/munged.pid
        rm -f "$DIR/munged.ours"
    fi
    say "stopped"
}

status() {
    if [ -f "$CONF" ] && ctld_up; then
        sinfo -N
        echo "export SLURM_CONF=$CONF"
    else
        say "not running"
        return 1
    fi
}

case ${1:-} in
start) start ;;
stop) stop ;;
status) status ;;
*) die "usage: $0 start|stop|status" ;;
esac
