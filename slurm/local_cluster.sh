#!/usr/bin/env bash
# A real single-node SLURM on this machine, for the SLURM tests and for trying the launcher on a laptop.
#
#   slurm/local_cluster.sh up       install (Debian, as root, when missing) and start munged, slurmctld, slurmd
#   slurm/local_cluster.sh status   sinfo, and the process ids this script started
#   slurm/local_cluster.sh down     cancel the cluster's jobs and stop exactly the processes `up` started
#
# The cluster: one node (this machine, all its CPUs), one partition "debug" (the default), no accounting
# (so no sacct: finished jobs stay visible to `scontrol show job` for MinJobAge seconds, an hour). Its slurm.conf goes to
# /etc/slurm/slurm.conf, where the Debian packages' clients (sbatch, squeue, ...) look; a slurm.conf that this
# script did not write is never overwritten. State, logs and process ids live in $POSTCLIP_SLURM_DIR.
set -euo pipefail

STATE_DIR="${POSTCLIP_SLURM_DIR:-/var/tmp/postclip-slurm}"
CONF=/etc/slurm/slurm.conf
MARKER="# written by postclip slurm/local_cluster.sh"
PACKAGES="slurmctld slurmd slurm-client munge"
DAEMONS="munged slurmctld slurmd"   # started in this order, stopped in reverse

die() { echo "local_cluster.sh: $*" >&2; exit 1; }

alive() {  # alive NAME: the process recorded for NAME is still the one we started
    local pid_file="$STATE_DIR/$1.pid" pid
    [[ -f "$pid_file" ]] || return 1
    pid=$(cat "$pid_file")
    [[ -r "/proc/$pid/comm" && "$(cat "/proc/$pid/comm")" == "$1" ]]
}

install_packages() {
    local missing=""
    for cmd in sbatch slurmctld slurmd munged; do command -v "$cmd" >/dev/null || missing="$missing $cmd"; done
    [[ -z "$missing" ]] && return 0
    [[ $EUID -eq 0 ]] || die "missing:$missing. Install the Debian packages ($PACKAGES) or run this script as root"
    command -v apt-get >/dev/null || die "missing:$missing and no apt-get: install SLURM and munge by hand"
    echo "installing $PACKAGES (apt-get)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $PACKAGES >/dev/null
}

write_config() {
    local host cpus mem_mb
    host=$(hostname -s)
    cpus=$(nproc)
    mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 9 / 10 ))  # leave 10% to the OS
    if [[ -f "$CONF" ]] && ! grep -qF "$MARKER" "$CONF"; then
        die "$CONF exists and was not written by this script; not touching a real cluster's configuration"
    fi
    mkdir -p /etc/slurm "$STATE_DIR/ctld" "$STATE_DIR/d"
    cat > "$CONF.tmp" <<EOF
$MARKER: a single-node cluster for tests. Remove with: slurm/local_cluster.sh down
ClusterName=postclip-local
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
StateSaveLocation=$STATE_DIR/ctld
SlurmdSpoolDir=$STATE_DIR/d
SlurmctldPidFile=$STATE_DIR/ctld/slurmctld.pid
SlurmdPidFile=$STATE_DIR/d/slurmd.pid
SlurmctldLogFile=$STATE_DIR/slurmctld.log
SlurmdLogFile=$STATE_DIR/slurmd.log
# no cgroups (containers often have none): track processes by /proc, no task binding
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SlurmdParameters=config_overrides
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=3600
# the node is called localhost (slurmd -N localhost): jobs then see SLURM_JOB_NODELIST=localhost, which resolves
# even where this machine's own name does not (torch.distributed's MASTER_ADDR comes from it)
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    mv "$CONF.tmp" "$CONF"
}

start() {  # start NAME COMMAND...: run a daemon in the foreground of a background process and record its id
    local name=$1; shift
    if alive "$name"; then echo "$name already running (pid $(cat "$STATE_DIR/$name.pid"))"; return; fi
    setsid "$@" >>"$STATE_DIR/$name.out" 2>&1 </dev/null &
    echo $! > "$STATE_DIR/$name.pid"
    sleep 1
    alive "$name" || die "$name did not start; see $STATE_DIR/$name.out and $STATE_DIR/*.log"
}

up() {
    [[ $EUID -eq 0 ]] || die "up needs root (it installs packages and runs slurmd, which starts jobs as any user)"
    install_packages
    mkdir -p "$STATE_DIR"
    write_config
    # munge: the authentication every SLURM message carries; needs a key and a socket folder owned by munge
    if [[ ! -s /etc/munge/munge.key ]]; then
        mkdir -p /etc/munge
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    mkdir -p /run/munge /var/lib/munge /var/log/munge
    chown munge:munge /etc/munge/munge.key /run/munge /var/lib/munge /var/log/munge
    chmod 400 /etc/munge/munge.key
    if ! alive munged && munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
        echo "munged already runs (not started by this script, so \`down\` leaves it running)"
    else
        start munged setpriv --reuid munge --regid munge --init-groups /usr/sbin/munged --foreground
    fi
    start slurmctld /usr/sbin/slurmctld -D -i
    start slurmd /usr/sbin/slurmd -D -N localhost
    for _ in $(seq 60); do  # the node registers within seconds
        if [[ "$(sinfo -h -o %T 2>/dev/null)" == idle* ]]; then
            echo "SLURM is up: $(sinfo -h -o '%P %D node(s) %c CPUs %T')"
            return
        fi
        sleep 1
    done
    sinfo || true
    die "the node did not become idle in 60 s; see $STATE_DIR/slurmctld.log and $STATE_DIR/slurmd.log"
}

down() {
    if alive slurmctld; then  # jobs first, so no job step outlives the daemons
        squeue -h -o %i 2>/dev/null | xargs -r scancel 2>/dev/null || true
        for _ in $(seq 20); do [[ -z "$(squeue -h 2>/dev/null)" ]] && break; sleep 1; done
    fi
    local name pid
    for name in $(echo $DAEMONS | tr ' ' '\n' | tac); do
        if alive "$name"; then
            pid=$(cat "$STATE_DIR/$name.pid")
            kill "$pid"
            for _ in $(seq 20); do alive "$name" || break; sleep 0.5; done
            alive "$name" && kill -9 "$pid"
            echo "stopped $name (pid $pid)"
        fi
        rm -f "$STATE_DIR/$name.pid"
    done
    if [[ -f "$CONF" ]] && grep -qF "$MARKER" "$CONF"; then rm -f "$CONF"; fi
    echo "SLURM is down"
}

status() {
    local name any=0
    for name in $DAEMONS; do
        if alive "$name"; then echo "$name: pid $(cat "$STATE_DIR/$name.pid")"; any=1; else echo "$name: not running"; fi
    done
    if [[ $any -eq 1 ]]; then sinfo; squeue; else echo "SLURM is down"; return 1; fi
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    status) status ;;
    *) die "usage: $0 up|down|status" ;;
esac
