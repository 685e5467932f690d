#!/usr/bin/env bash
# A private one-node SLURM cluster on this machine, for testing the SLURM launcher
# (make test-slurm; docs/runner.md, "Clusters"). Needs root and Debian's slurm-wlm and munge
# (`install` gets them with apt-get).
#
#   scripts/slurm_cluster.sh install         # apt-get install slurm-wlm munge, if missing
#   scripts/slurm_cluster.sh start DIR       # munged, slurmctld, slurmd; config and state in DIR
#   export SLURM_CONF=DIR/slurm.conf         # then: sinfo, sbatch, srun, scancel, submitit ...
#   scripts/slurm_cluster.sh stop DIR        # cancel its jobs, stop the daemons by PID
#
# Everything lives in DIR (a new or empty folder): the munge key and socket, slurm.conf,
# state, spool, logs and PID files. Ports are picked free at start, so several clusters
# (one per DIR) can run side by side; nothing under /etc, /run or /var is touched.
# `stop` only ends the processes whose PIDs it recorded; it leaves DIR in place.
set -euo pipefail

die() { echo "slurm_cluster: $*" >&2; exit 1; }

# The daemons that `stop` ends, last started first.
DAEMONS=(slurmd slurmctld munged)

install() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
        && command -v munged >/dev/null && command -v sbatch >/dev/null; then
        return 0
    fi
    [[ $(id -u) == 0 ]] || die "SLURM is not installed; as root: apt-get install slurm-wlm munge"
    echo "slurm_cluster: installing slurm-wlm and munge (apt-get) ..."
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
}

# A TCP port nothing listens on (and nobody else is likely to pick in the next seconds).
free_port() {
    local port
    for _ in $(seq 100); do
        port=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then  # nothing answers
            echo "$port"
            return 0
        fi
    done
    die "no free port found"
}

# The PID in DIR/NAME.pid if that process is alive and is NAME (not a recycled PID).
live_pid() {
    local dir=$1 name=$2 pid
    [[ -s $dir/$name.pid ]] || return 1
    pid=$(tr -dc 0-9 <"$dir/$name.pid")
    [[ -n $pid && -r /proc/$pid/comm && $(cat "/proc/$pid/comm") == "$name" ]] || return 1
    echo "$pid"
}

wait_for() {  # wait_for SECONDS COMMAND...: poll every 0.2 s until COMMAND succeeds
    local deadline=$((SECONDS + $1))
    shift
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
}

# Conditions for wait_for.
node_idle() { sinfo -h -N -o %t | grep -qx 'idle'; }
no_jobs() { [[ -z $(squeue -h -o %A 2>/dev/null) ]]; }
gone() { [[ ! -e /proc/$1 ]] || [[ $(cat "/proc/$1/stat" 2>/dev/null) == *") Z "* ]]; }

write_conf() {
    local dir=$1 host mem cpus node
    host=$(hostname -s)
    # What slurmd finds on this machine: CPUs, sockets, cores, threads, memory (MB).
    node=$(slurmd -C | head -1)
    [[ $node == NodeName=* ]] || die "slurmd -C gave '$node'"
    mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$node")
    cpus=$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<<"$node")
    node=${node/RealMemory=$mem/RealMemory=$((mem * 95 / 100))}  # below it, or the node drains
    node=${node/NodeName=$host/NodeName=$host NodeAddr=127.0.0.1}
    cat >"$dir/slurm.conf" <<EOF
# A one-node test cluster, written by scripts/slurm_cluster.sh.
ClusterName=localtest
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge.socket
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
MpiDefault=none
MailProg=/bin/true
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
# Seconds between SIGTERM and SIGKILL on scancel or a time limit: time to checkpoint.
KillWait=10
InactiveLimit=0
MinJobAge=300
SlurmctldTimeout=30
SlurmdTimeout=60
MaxArraySize=10000
$node State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
    echo "$cpus"
}

start() {
    local dir=$1
    install
    [[ $(id -u) == 0 ]] || die "start needs root (the daemons run as root in this test cluster)"
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    for name in "${DAEMONS[@]}"; do
        ! live_pid "$dir" "$name" >/dev/null || die "$name already runs for $dir (stop it first)"
    done
    mkdir -p "$dir/state" "$dir/spool" "$dir/log"
    chmod 711 "$dir"  # munged wants its socket's folder searchable by all

    # munge: a fresh key and a private socket.
    dd if=/dev/urandom of="$dir/munge.key" bs=1 count=1024 status=none
    chmod 400 "$dir/munge.key"
    munged --force --key-file="$dir/munge.key" --socket="$dir/munge.socket" \
        --pid-file="$dir/munged.pid" --log-file="$dir/log/munged.log" \
        --seed-file="$dir/munged.seed" \
        || die "munged did not start: $(tail -3 "$dir/log/munged.log" 2>/dev/null)"
    wait_for 10 test -S "$dir/munge.socket" || die "munged did not open its socket"

    local cpus
    cpus=$(write_conf "$dir")
    export SLURM_CONF=$dir/slurm.conf
    slurmctld -f "$SLURM_CONF" || die "slurmctld did not start: $(tail -5 "$dir/log/slurmctld.log")"
    wait_for 30 scontrol ping \
        || die "slurmctld does not answer: $(tail -5 "$dir/log/slurmctld.log")"
    slurmd -f "$SLURM_CONF" || die "slurmd did not start: $(tail -5 "$dir/log/slurmd.log")"
    wait_for 60 node_idle \
        || die "the node is not idle: $(sinfo -N -l; tail -5 "$dir/log/slurmd.log")"
    echo "slurm_cluster: one node ($(hostname -s), $cpus CPUs), partition debug; daemons:" \
        "munged $(live_pid "$dir" munged), slurmctld $(live_pid "$dir" slurmctld)," \
        "slurmd $(live_pid "$dir" slurmd)"
    echo "export SLURM_CONF=$dir/slurm.conf"
}

stop() {
    local dir=$1 pid name
    [[ -d $dir ]] || return 0
    dir=$(cd "$dir" && pwd)
    if [[ -f $dir/slurm.conf ]] && live_pid "$dir" slurmctld >/dev/null; then
        export SLURM_CONF=$dir/slurm.conf
        # Cancel what still runs (a failed test) and give it KillWait to end.
        local jobs
        mapfile -t jobs < <(squeue -h -o %A 2>/dev/null)
        if ((${#jobs[@]})); then
            scancel --quiet "${jobs[@]}" 2>/dev/null || true
            wait_for 40 no_jobs || echo "slurm_cluster: jobs still listed" >&2
        fi
    fi
    for name in "${DAEMONS[@]}"; do
        pid=$(live_pid "$dir" "$name") || continue
        kill -TERM "$pid" 2>/dev/null || true
        if ! wait_for 15 gone "$pid"; then
            echo "slurm_cluster: $name ($pid) ignored SIGTERM; killing it" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
        rm -f "$dir/$name.pid"
    done
}

status() {
    local dir=$1 name
    for name in "${DAEMONS[@]}"; do
        echo "$name: $(live_pid "$dir" "$name" || echo 'not running')"
    done
}

case "${1:-}" in
    install) install ;;
    start | stop | status)
        [[ $# == 2 ]] || die "usage: $0 $1 DIR"
        "$1" "$2"
        ;;
    *) die "usage: $0 install | start DIR | stop DIR | status DIR" ;;
esac
