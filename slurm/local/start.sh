#!/usr/bin/env bash
# Start a real one-node SLURM cluster, with job accounting, on 127.0.0.1.
#
# Usage: slurm/local/start.sh [STATE_DIR]
#   STATE_DIR defaults to $SINGER_SLURM_DIR, else ./.slurm. Everything the cluster needs
#   lives there: munge key, configs, spool, logs, pid files and the MariaDB datadir.
#   When the node is idle it writes STATE_DIR/env.sh; `source` it to use sbatch, squeue,
#   sacct... against this cluster. Stop it with slurm/local/stop.sh STATE_DIR.
#
# Ports (change them to run two clusters side by side):
#   SINGER_SLURM_CTLD_PORT (6817)  SINGER_SLURM_SLURMD_PORT (6818)
#   SINGER_SLURM_DBD_PORT  (6819)  SINGER_SLURM_DB_PORT     (3307, MariaDB)
# Other settings: SINGER_SLURM_CLUSTER (cluster name, "local"),
#   SINGER_SLURM_START_TIMEOUT (seconds to wait for each daemon, 60).
#
# Daemons run in the foreground under setsid; their PIDs go to STATE_DIR/run/*.pid and
# stop.sh stops them by those PIDs. Every daemon runs as root (SlurmUser=root, munged
# with --force) so that STATE_DIR may sit anywhere, even inside a folder only root can
# enter. This is a test cluster: every daemon listens on 127.0.0.1 only (MariaDB by
# --bind-address; slurmctld, slurmd and slurmdbd by CommunicationParameters=NoInAddrAny,
# which binds them to the address their host name resolves to, and they run with the host
# name "localhost" in a UTS namespace of their own, so that address is 127.0.0.1 whatever
# this machine is called). tests/test_slurm_local.py checks the listening sockets.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
STATE=${1:-${SINGER_SLURM_DIR:-$PWD/.slurm}}
mkdir -p "$STATE"
STATE=$(cd "$STATE" && pwd) # absolute: the paths are written into config files

CLUSTER=${SINGER_SLURM_CLUSTER:-local}
CTLD_PORT=${SINGER_SLURM_CTLD_PORT:-6817}
SLURMD_PORT=${SINGER_SLURM_SLURMD_PORT:-6818}
DBD_PORT=${SINGER_SLURM_DBD_PORT:-6819}
DB_PORT=${SINGER_SLURM_DB_PORT:-3307}
TIMEOUT=${SINGER_SLURM_START_TIMEOUT:-60}

ETC=$STATE/etc
RUN=$STATE/run
LOG=$STATE/log
SPOOL=$STATE/spool
DATADIR=$STATE/mariadb
MUNGE_DIR=$STATE/munge
MUNGE_SOCKET=$MUNGE_DIR/munge.socket
DB_SOCKET=$RUN/mariadb.sock
export SLURM_CONF=$ETC/slurm.conf

die() {
    echo "start.sh: error: $*" >&2
    exit 1
}

# On any failure, stop whatever this script already started, so that a failed start
# leaves no daemons behind; the logs stay in $LOG for inspection.
started=0
cleanup_on_failure() {
    local rc=$?
    if [[ $rc -ne 0 && $started -eq 1 ]]; then
        echo "start.sh: start failed; stopping the daemons already started (logs kept in $LOG)" >&2
        "$HERE/stop.sh" "$STATE" >&2 || true
    fi
}
trap cleanup_on_failure EXIT

for cmd in munged munge mariadbd mariadb-install-db mariadb slurmdbd slurmctld slurmd sacctmgr sinfo setsid unshare getent; do
    command -v "$cmd" >/dev/null 2>&1 || die "'$cmd' not found; run slurm/local/install.sh first (as root)"
done
[[ "$(id -u)" -eq 0 ]] || die "must run as root (SlurmUser=root); the daemons need it"
# The paths go unquoted into SLURM's config files.
[[ "$STATE" != *[[:space:]]* ]] || die "the state folder path may not contain spaces: $STATE"
# Unix socket paths are limited to 107 bytes.
((${#MUNGE_SOCKET} < 100)) || die "state folder path too long for a unix socket: $STATE (use a shorter one)"

mkdir -p "$ETC" "$RUN" "$LOG" "$SPOOL/ctld" "$SPOOL/d" "$DATADIR" "$MUNGE_DIR"

# alive PID: the process exists and is not a zombie waiting to be reaped.
alive() {
    local state
    state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
    [[ -n "$state" && "$state" != Z ]]
}

# Refuse to start twice over the same state folder.
for name in munged mariadb slurmdbd slurmctld slurmd; do
    pidfile=$RUN/$name.pid
    if [[ -f "$pidfile" ]] && alive "$(cat "$pidfile")"; then
        die "$name is already running (pid $(cat "$pidfile")) for $STATE; run slurm/local/stop.sh $STATE first"
    fi
    rm -f "$pidfile"
done

# A port already taken would make a daemon die with a bind error; say so up front.
for pair in "slurmctld:$CTLD_PORT:SINGER_SLURM_CTLD_PORT" "slurmd:$SLURMD_PORT:SINGER_SLURM_SLURMD_PORT" \
    "slurmdbd:$DBD_PORT:SINGER_SLURM_DBD_PORT" "mariadb:$DB_PORT:SINGER_SLURM_DB_PORT"; do
    IFS=: read -r name port var <<<"$pair"
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        die "port $port (for $name) is already in use on 127.0.0.1; pick another with $var=..."
    fi
done

# AS_LOCALHOST CMD...: run CMD with the host name "localhost" (its own UTS namespace), so
# that a SLURM daemon told to bind to its host name's address (NoInAddrAny) binds to
# 127.0.0.1. Every step execs, so the PID stays the daemon's.
AS_LOCALHOST=(unshare --uts -- sh -c 'hostname localhost && exec "$@"' sh)
"${AS_LOCALHOST[@]}" true 2>/dev/null || die "cannot run a daemon in a UTS namespace of its own (unshare --uts)"
case "$(getent ahostsv4 localhost | awk 'NR == 1 {print $1}')" in
127.*) ;;
*) die "the name 'localhost' does not resolve to a 127.x address; fix /etc/hosts" ;;
esac

# start_daemon NAME CMD...: run CMD in its own session, output to $LOG/NAME.out,
# and keep its PID (setsid execs the command, so $! is the daemon itself).
start_daemon() {
    local name=$1
    shift
    started=1
    setsid "$@" </dev/null >>"$LOG/$name.out" 2>&1 &
    echo $! >"$RUN/$name.pid"
}

# wait_for NAME LOGFILE DESCRIPTION CMD...: poll CMD until it succeeds; fail early if
# the daemon died, or after $TIMEOUT seconds, pointing at its log.
wait_for() {
    local name=$1 logfile=$2 what=$3
    shift 3
    local deadline=$((SECONDS + TIMEOUT))
    until "$@" >/dev/null 2>&1; do
        if ! alive "$(cat "$RUN/$name.pid")"; then
            tail -n 20 "$logfile" "$LOG/$name.out" >&2 2>/dev/null || true
            die "$name exited while waiting for $what; see $logfile and $LOG/$name.out"
        fi
        if ((SECONDS >= deadline)); then
            tail -n 20 "$logfile" "$LOG/$name.out" >&2 2>/dev/null || true
            die "timed out after ${TIMEOUT}s waiting for $what; see $logfile and $LOG/$name.out"
        fi
        sleep 0.2
    done
}

# ---- munge: authentication between every SLURM client and daemon -------------------
if [[ ! -s "$MUNGE_DIR/munge.key" ]]; then
    (umask 077 && head -c 1024 /dev/urandom >"$MUNGE_DIR/munge.key")
fi
chmod 700 "$MUNGE_DIR"
chmod 400 "$MUNGE_DIR/munge.key"
start_daemon munged munged --foreground --force \
    --socket="$MUNGE_SOCKET" --key-file="$MUNGE_DIR/munge.key" \
    --pid-file="$MUNGE_DIR/munged.pid" --seed-file="$MUNGE_DIR/munged.seed" \
    --log-file="$LOG/munged.log"
munge_ok() { munge --socket="$MUNGE_SOCKET" -n | unmunge --socket="$MUNGE_SOCKET"; }
wait_for munged "$LOG/munged.log" "munged to answer" munge_ok

# ---- MariaDB: the accounting database, TCP on 127.0.0.1 only ------------------------
if [[ ! -d "$DATADIR/mysql" ]]; then
    mariadb-install-db --no-defaults --datadir="$DATADIR" --user=root \
        --auth-root-authentication-method=socket --skip-test-db \
        >"$LOG/mariadb-install.log" 2>&1 ||
        die "mariadb-install-db failed; see $LOG/mariadb-install.log"
fi
start_daemon mariadb mariadbd --no-defaults --datadir="$DATADIR" --user=root \
    --bind-address=127.0.0.1 --port="$DB_PORT" --socket="$DB_SOCKET" --skip-name-resolve \
    --pid-file="$DATADIR/mariadbd.pid" --log-error="$LOG/mariadb.log" \
    --skip-log-bin --innodb-lock-wait-timeout=900
db_ok() { mariadb-admin --no-defaults --socket="$DB_SOCKET" -u root ping; }
wait_for mariadb "$LOG/mariadb.log" "MariaDB to accept connections" db_ok

# A fresh password on every start; it lives only in slurmdbd.conf (mode 600).
DB_PASS=$(head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')
mariadb --no-defaults --socket="$DB_SOCKET" -u root <<SQL
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1';
ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
SQL

# ---- configuration files ------------------------------------------------------------
CPUS=$(nproc)
# Ask for less memory than the machine has: a node that reports less than its
# configured RealMemory is drained.
MEM_MB=$(awk '/^MemTotal:/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)

umask 077 # slurmdbd refuses a slurmdbd.conf (it holds the DB password) readable by others
cat >"$ETC/slurmdbd.conf" <<EOF
# Written by slurm/local/start.sh; rewritten on every start.
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
# Bind to the host name's address (127.0.0.1 under AS_LOCALHOST), not to every interface.
CommunicationParameters=NoInAddrAny
SlurmUser=root
LogFile=$LOG/slurmdbd.log
PidFile=$RUN/slurmdbd.own.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
chmod 600 "$ETC/slurmdbd.conf"
umask 022

cat >"$SLURM_CONF" <<EOF
# Written by slurm/local/start.sh; rewritten on every start.
# Settings chosen to need no cgroups and no systemd (see slurm/local/README.md).
ClusterName=$CLUSTER
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$CTLD_PORT
# Bind slurmctld and slurmd to their host name's address (127.0.0.1 under AS_LOCALHOST),
# not to every interface.
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# cred_expire also sets how long a requeued job waits before it may start again: 120 s by
# default, far too long for tests of preemption and requeue.
AuthInfo=socket=$MUNGE_SOCKET,cred_expire=10
CredType=cred/munge
StateSaveLocation=$SPOOL/ctld
SlurmdSpoolDir=$SPOOL/d
SlurmctldPidFile=$RUN/slurmctld.own.pid
SlurmdPidFile=$RUN/slurmd.own.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# batch_sched_delay=0: no ~3 s wait per job. sched_interval / bf_interval: a job that
# becomes eligible later (a requeued one) starts within a second, not up to a minute.
SchedulerParameters=batch_sched_delay=0,sched_interval=1,bf_interval=1
MailProg=/bin/true
MinJobAge=3600
# submitit ignores SIGTERM, so a cancelled job holds its CPUs until SIGKILL, KillWait
# seconds later (30 by default).
KillWait=5
# Preempted / timed-out jobs may be requeued (submitit's checkpoint + scontrol requeue).
JobRequeue=1
ReturnToService=2
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
# For the slurmdbd connection the munge socket is given here, not by AuthInfo.
AccountingStoragePass=$MUNGE_SOCKET
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF

# ---- slurmdbd, then register the cluster before slurmctld first connects ------------
start_daemon slurmdbd "${AS_LOCALHOST[@]}" slurmdbd -D
wait_for slurmdbd "$LOG/slurmdbd.log" "slurmdbd to answer sacctmgr" sacctmgr -n list cluster
if [[ -z "$(sacctmgr -n -P list cluster "$CLUSTER" format=cluster)" ]]; then
    sacctmgr -i add cluster "$CLUSTER" >/dev/null
fi

# ---- slurmctld and slurmd -----------------------------------------------------------
start_daemon slurmctld "${AS_LOCALHOST[@]}" slurmctld -D
wait_for slurmctld "$LOG/slurmctld.log" "slurmctld to answer sinfo" sinfo -h
start_daemon slurmd "${AS_LOCALHOST[@]}" slurmd -D -N localhost
node_idle() { [[ "$(sinfo -h -n localhost -o %T)" == idle ]]; }
wait_for slurmd "$LOG/slurmd.log" "node 'localhost' to become idle (sinfo)" node_idle

{
    echo "# Written by slurm/local/start.sh: source it to point SLURM clients at this cluster."
    echo "export SLURM_CONF=$SLURM_CONF"
    echo "export SINGER_SLURM_DIR=$STATE"
} >"$STATE/env.sh"
echo "start.sh: cluster '$CLUSTER' is up (node localhost idle, $CPUS CPUs); source $STATE/env.sh"
