#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for the Slurm tests and for trying `--executor slurm`.
#
#   scripts/slurm-local.sh start    install slurm-wlm and munge if missing (apt), write the
#                                   configuration, start munged, slurmctld and slurmd, wait for
#                                   the node to be idle
#   scripts/slurm-local.sh stop     stop the daemons this script started (munged only if it
#                                   started it)
#   scripts/slurm-local.sh status   sinfo
#
# Runs as root (slurmd needs it). Everything it writes lives under $WHITTLE_SLURM_DIR
# (default /tmp/whittle-slurm), except /etc/slurm/slurm.conf, which the Slurm commands read by
# default; an existing slurm.conf that this script did not write is never touched.
#
# Finished jobs: there is no slurmdbd here, so `sacct` reads the job completion log
# (JobCompType=jobcomp/filetxt): `sacct -c` lists every finished job with its state and exit
# code. MinJobAge keeps finished jobs in `squeue -t all` / `scontrol show job` for an hour.
set -euo pipefail

DIR="${WHITTLE_SLURM_DIR:-/tmp/whittle-slurm}"
CONF=/etc/slurm/slurm.conf
MARK="# written by whittle scripts/slurm-local.sh"

log() { echo "slurm-local: $*" >&2; }

install() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
        && command -v munged >/dev/null && command -v sbatch >/dev/null; then
        return
    fi
    log "installing slurm-wlm and munge"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq slurm-wlm munge >/dev/null
}

write_conf() {
    local host cpus mem
    host="$(hostname -s)"
    cpus="$(nproc)"
    # Leave 1 GiB to the system; RealMemory is in MiB.
    mem=$(( $(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
    mkdir -p "$DIR"/{ctld,d,log} /etc/slurm
    if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
        log "$CONF exists and was not written by this script; leaving it alone"
        return
    fi
    cat >"$CONF" <<EOF
$MARK
ClusterName=whittle
SlurmctldHost=$host
SlurmUser=root
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
StateSaveLocation=$DIR/ctld
SlurmdSpoolDir=$DIR/d
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=1
MessageTimeout=10
KillWait=2
MinJobAge=3600
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/log/jobcomp.log
GresTypes=gpu
NodeName=$host CPUs=$cpus RealMemory=$mem Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
    # Two stand-in GPUs (Slurm wants a device file per GPU; nothing here binds them): jobs can
    # ask for --gpus and are scheduled as on a real GPU node.
    cat >/etc/slurm/gres.conf <<EOF
$MARK
NodeName=$host Name=gpu File=/dev/null
NodeName=$host Name=gpu File=/dev/zero
EOF
}

start_munge() {
    if pgrep -x munged >/dev/null && [ -S /run/munge/munge.socket.2 ]; then
        return
    fi
    if [ ! -s /etc/munge/munge.key ]; then
        mkdir -p /etc/munge
        dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
    fi
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown -R munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
    chmod 0400 /etc/munge/munge.key
    chmod 0755 /run/munge
    if id munge >/dev/null 2>&1; then
        runuser -u munge -- munged
    else
        munged --force
    fi
    mkdir -p "$DIR"
    touch "$DIR/munged.ours"
}

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start() {
    install
    write_conf
    start_munge
    running "$DIR/slurmctld.pid" || slurmctld
    running "$DIR/slurmd.pid" || slurmd
    local host
    host="$(hostname -s)"
    for _ in $(seq 1 60); do
        local state
        state="$(sinfo -h -n "$host" -o %T 2>/dev/null || true)"
        if [ "$state" = idle ]; then
            log "node $host idle"
            return
        fi
        if [[ "$state" == down* || "$state" == drain* ]]; then
            scontrol update nodename="$host" state=resume 2>/dev/null || true
        fi
        sleep 1
    done
    log "the node never became idle; logs in $DIR/log"
    tail -n 20 "$DIR/log/slurmctld.log" "$DIR/log/slurmd.log" >&2 || true
    exit 1
}

stop() {
    local pidfile
    for pidfile in "$DIR/slurmd.pid" "$DIR/slurmctld.pid"; do
        if running "$pidfile"; then
            kill "$(cat "$pidfile")"
            for _ in $(seq 1 20); do
                running "$pidfile" || break
                sleep 0.5
            done
            # A daemon stuck on authentication ignores SIGTERM.
            if running "$pidfile"; then
                kill -9 "$(cat "$pidfile")"
            fi
        fi
    done
    if [ -f "$DIR/munged.ours" ] && running /run/munge/munged.pid; then
        local pid
        pid="$(cat /run/munge/munged.pid)"
        kill "$pid"
        # Gone before a start that follows checks for it.
        for _ in $(seq 1 20); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.5
        done
        rm -f "$DIR/munged.ours"
    fi
    log "stopped"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) sinfo ;;
    *)
        echo "usage: $0 start|stop|status" >&2
        exit 2
        ;;
esac
