#!/usr/bin/env bash
# A real single-node Son of Grid Engine (sge_qmaster + sge_execd, Debian's gridengine-master,
# gridengine-exec and gridengine-client) for tests and for trying
# `vmwu sweep --executor sge` on one machine. Run as root.
#
#   bash scripts/sge-test-cluster.sh start    # prints `export SGE_ROOT=… SGE_CELL=…` last
#   bash scripts/sge-test-cluster.sh status
#   bash scripts/sge-test-cluster.sh stop
#   bash scripts/sge-test-cluster.sh preseed  # debconf answers, before apt-get install
#
# Grid Engine is a system service: one cell per machine, Debian's own paths
# (SGE_ROOT=/var/lib/gridengine, cell `default`, spool /var/spool/gridengine), ports 6444 and
# 6445 (/etc/services). `start` is idempotent (a running cluster is configured again, not
# restarted); `stop` deletes every job and stops both daemons. Facts behind the settings:
# /work/shared/notes/gridengine-single-node.md:
# - debconf preseeding (gridengineconfig, cell, master) makes the packages write the cell's
#   bootstrap and spool; policy-rc.d keeps their scripts from starting anything;
# - the host name resolves to 127.0.0.1, whose reverse name is `localhost`: without
#   `HOST localhost` in host_aliases every client is refused ("access denied");
# - min_uid/min_gid 0 (root's jobs), accounting flushed every second (qacct sees a job
#   about a second after it ends), a scheduler that runs every second and at every submit
#   and finish, no load adjustments (else a 2-slot host looks full after one job starts);
# - a complete queue definition for all.q (qconf refuses partial ones): SLOTS slots,
#   /bin/sh, unix_behavior (the script's #! line), no limits, no load thresholds;
# - ENABLE_ADDGRP_KILL: qdel kills every process of a job, not only its process group.
#
# Environment: VMWU_SGE_SLOTS (slots of the test queue; default cores, at least 2).
set -euo pipefail

export SGE_ROOT=/var/lib/gridengine SGE_CELL=default
COMMON=$SGE_ROOT/$SGE_CELL/common
SPOOL=/var/spool/gridengine
QMASTER_PID=$SPOOL/qmaster/qmaster.pid
HOST=$(hostname)
PACKAGES="gridengine-master gridengine-exec gridengine-client"

die() { echo "sge-test-cluster: $*" >&2; exit 1; }
say() { echo "sge-test-cluster: $*" >&2; }

preseed() {
    debconf-set-selections <<EOF
gridengine-common shared/gridengineconfig boolean true
gridengine-common shared/gridenginecell string default
gridengine-common shared/gridenginemaster string $HOST
EOF
}

need() {
    [ "$(id -u)" -eq 0 ] || die "run me as root (execd starts jobs as their users)"
    for tool in /usr/sbin/sge_qmaster /usr/sbin/sge_execd /usr/bin/qconf /usr/bin/qsub; do
        [ -x "$tool" ] || die "$tool is missing (apt-get install $PACKAGES, or run scripts/setup.sh)"
    done
    # What the packages' scripts do when installed with the debconf answers (preseed), done
    # here when they were not: the cell's bootstrap file, then the spool (init_cluster).
    if [ ! -s "$COMMON/bootstrap" ]; then
        install -d -o sgeadmin -g sgeadmin "$SGE_ROOT/$SGE_CELL" "$COMMON"
        install -m 0644 -o sgeadmin -g sgeadmin /usr/share/gridengine/default-bootstrap "$COMMON/bootstrap"
    fi
    if [ ! -e "$SPOOL/spooldb/sge" ]; then
        install -d -o sgeadmin -g sgeadmin "$SPOOL/spooldb" "$SPOOL/qmaster" "$SPOOL/qmaster/job_scripts"
        su -s /bin/sh -c "/usr/share/gridengine/scripts/init_cluster $SGE_ROOT $SGE_CELL $SPOOL/spooldb sgeadmin" sgeadmin >/dev/null
    fi
}

# A daemon that died stays a zombie until PID 1 reaps it: look at its state, not only at
# whether the pid exists.
alive() {
    local pid state
    [ -s "$1" ] || return 1
    pid=$(head -n 1 "$1")
    state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) || return 1
    [ -n "$state" ] && [ "$state" != Z ] && [ "$state" != X ]
}

# execd names its spool directory after the name it resolves for itself (`localhost` here)
execd_alive() {
    local f
    for f in "$SPOOL"/execd/*/execd.pid; do alive "$f" && return 0; done
    return 1
}

qmaster_up() { alive "$QMASTER_PID" && timeout 20 qstat -f >/dev/null 2>&1; }

# The queue instance exists and has no state flags (u: execd unheard, d: disabled, E: error …)
queue_ready() {
    timeout 20 qstat -f -q "all.q@$HOST" 2>/dev/null |
        awk -v q="all.q@$HOST" '$1 == q { found = 1; if (NF == 5) ok = 1 } END { exit !(found && ok) }'
}

host_aliases() {
    # clients connect from 127.0.0.1, which reverse-resolves to localhost
    local line="$HOST localhost"
    if [ "$HOST" != localhost ] && ! grep -qx "$line" "$COMMON/host_aliases" 2>/dev/null; then
        echo "$line" >>"$COMMON/host_aliases"
        chown sgeadmin:sgeadmin "$COMMON/host_aliases"
    fi
    if [ "$(cat "$COMMON/act_qmaster" 2>/dev/null)" != "$HOST" ]; then
        echo "$HOST" >"$COMMON/act_qmaster"
        chown sgeadmin:sgeadmin "$COMMON/act_qmaster"
    fi
}

# qconf, quiet unless it fails (it reports success on stderr)
qc() {
    local out
    out=$(qconf "$@" 2>&1) || die "qconf $*: $out"
}

configure() {
    local slots=${VMWU_SGE_SLOTS:-$(nproc)}
    [ "$slots" -ge 2 ] || slots=2
    local tmp
    tmp=$(mktemp -d)
    # qconf -Mconf wants a file named after the configuration it replaces; the
    # reporting_params value spans two lines in `qconf -sconf`.
    qconf -sconf | awk '
        /\\$/ { sub(/\\$/, ""); held = held $0; next }
        { print held $0; held = "" }' |
        awk '
        $1 == "min_uid" || $1 == "min_gid" { print $1, 0; next }
        $1 == "administrator_mail" { print $1, "none"; next }
        $1 == "reporting_params" {
            print $1, "accounting=true reporting=false flush_time=00:00:01 joblog=false sharelog=00:00:00"; next }
        $1 == "execd_params" { print $1, "ENABLE_ADDGRP_KILL=true"; next }
        $1 == "load_report_time" { print $1, "00:00:10"; next }
        { print }' >"$tmp/global"
    qc -Mconf "$tmp/global"
    qconf -ssconf | awk '
        $1 == "schedule_interval" { print $1, "0:0:1"; next }
        $1 == "flush_submit_sec" || $1 == "flush_finish_sec" { print $1, 1; next }
        $1 == "job_load_adjustments" { print $1, "NONE"; next }
        $1 == "load_adjustment_decay_time" { print $1, "0:0:0"; next }
        { print }' >"$tmp/sched"
    qc -Msconf "$tmp/sched"
    qconf -sh 2>/dev/null | grep -qx "$HOST" || qc -ah "$HOST"
    qconf -ss 2>/dev/null | grep -qx "$HOST" || qc -as "$HOST"
    if ! qconf -sel 2>/dev/null | grep -qx "$HOST"; then
        cat >"$tmp/host" <<EOF
hostname              $HOST
load_scaling          NONE
complex_values        NONE
user_lists            NONE
xuser_lists           NONE
projects              NONE
xprojects             NONE
usage_scaling         NONE
report_variables      NONE
EOF
        qc -Ae "$tmp/host"
    fi
    qconf -sq 2>/dev/null | awk -v host="$HOST" -v slots="$slots" '
        $1 == "qname" { print $1, "all.q"; next }
        $1 == "hostlist" { print $1, host; next }
        $1 == "load_thresholds" || $1 == "suspend_thresholds" || $1 == "pe_list" { print $1, "NONE"; next }
        $1 == "slots" { print $1, slots; next }
        $1 == "shell" { print $1, "/bin/sh"; next }
        $1 == "shell_start_mode" { print $1, "unix_behavior"; next }
        $1 ~ /^[sh]_/ { print $1, "INFINITY"; next }
        { print }' >"$tmp/all.q"
    if qconf -sql 2>/dev/null | grep -qx all.q; then
        qc -Mq "$tmp/all.q"
    else
        qc -Aq "$tmp/all.q"
    fi
    rm -rf "$tmp"
}

start() {
    need
    host_aliases
    if ! qmaster_up; then
        /usr/sbin/sge_qmaster
        for _ in $(seq 200); do qmaster_up && break; sleep 0.1; done
        qmaster_up || die "sge_qmaster did not come up (see $SPOOL/qmaster/messages)"
    fi
    configure
    if ! execd_alive; then
        /usr/sbin/sge_execd
    fi
    for _ in $(seq 300); do queue_ready && break; sleep 0.1; done
    queue_ready || die "all.q@$HOST did not become ready (see $SPOOL/execd/*/messages; $(qstat -f 2>&1 | tr '\n' ' '))"
    say "up: $(qstat -f -q "all.q@$HOST" | awk -v q="all.q@$HOST" '$1 == q { print $1, $3, "slots (reserved/used/total)" }')"
    echo "export SGE_ROOT=$SGE_ROOT SGE_CELL=$SGE_CELL"
}

stop_pidfile() {
    local pidfile=$1 wait=$2 pid
    alive "$pidfile" || { rm -f "$pidfile"; return 0; }
    pid=$(head -n 1 "$pidfile")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq "$wait"); do alive "$pidfile" || break; sleep 0.1; done
    if alive "$pidfile"; then kill -9 "$pid" 2>/dev/null || true; fi
    rm -f "$pidfile"
}

stop() {
    if qmaster_up; then
        qdel -f -u '*' >/dev/null 2>&1 || true
    fi
    local f
    for f in "$SPOOL"/execd/*/execd.pid; do stop_pidfile "$f" 100; done
    stop_pidfile "$QMASTER_PID" 300
    say "stopped"
}

status() {
    if qmaster_up && queue_ready; then
        qstat -f
        echo "export SGE_ROOT=$SGE_ROOT SGE_CELL=$SGE_CELL"
    else
        say "not running"
        return 1
    fi
}

case ${1:-} in
start) start ;;
stop) stop ;;
status) status ;;
preseed) preseed ;;
*) die "usage: $0 start|stop|status|preseed" ;;
esac
