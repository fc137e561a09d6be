#!/usr/bin/env bash
# Stop the local SLURM cluster started by start.sh, by the PIDs in STATE_DIR/run/*.pid.
#
# Usage: slurm/local/stop.sh [STATE_DIR]   (same default as start.sh)
# Daemons are stopped in the reverse order of their start, each with SIGTERM, then
# waited for (SIGKILL after SINGER_SLURM_STOP_TIMEOUT seconds, 20 by default).
# Jobs still queued or running are cancelled first, so no job processes outlive the
# cluster. Safe to run twice, or on a folder whose daemons are already gone.
set -euo pipefail

STATE=${1:-${SINGER_SLURM_DIR:-$PWD/.slurm}}
if [[ ! -d "$STATE" ]]; then
    echo "stop.sh: no state folder $STATE; nothing to stop."
    exit 0
fi
STATE=$(cd "$STATE" && pwd)
RUN=$STATE/run
TIMEOUT=${SINGER_SLURM_STOP_TIMEOUT:-20}
export SLURM_CONF=$STATE/etc/slurm.conf

# The program each pid file must point at: a PID reused by an unrelated process is
# never signalled.
declare -A PROGRAM=([slurmd]=slurmd [slurmctld]=slurmctld [slurmdbd]=slurmdbd [mariadb]=mariadbd [munged]=munged)

# alive PID: the process exists and is not a zombie waiting to be reaped.
alive() {
    local state
    state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
    [[ -n "$state" && "$state" != Z ]]
}

# pid_of NAME: the PID from NAME's pid file, if that process is alive and is NAME's program.
pid_of() {
    local pidfile=$RUN/$1.pid pid
    [[ -f "$pidfile" ]] || return 1
    pid=$(cat "$pidfile")
    [[ "$pid" =~ ^[0-9]+$ ]] && alive "$pid" || return 1
    if [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" != "${PROGRAM[$1]}" ]]; then
        echo "stop.sh: pid $pid in $pidfile is not ${PROGRAM[$1]}; leaving it alone" >&2
        return 1
    fi
    echo "$pid"
}

# Cancel leftover jobs while slurmctld still runs, so that their processes end too.
if pid_of slurmctld >/dev/null && command -v squeue >/dev/null 2>&1; then
    jobs=$(squeue -h -o %A 2>/dev/null || true)
    if [[ -n "$jobs" ]]; then
        # shellcheck disable=SC2086  # one argument per job id
        scancel $jobs 2>/dev/null || true
        for _ in $(seq 50); do # up to ~5 s for the jobs to end
            [[ -z "$(squeue -h -o %A -t running,completing 2>/dev/null || true)" ]] && break
            sleep 0.1
        done
    fi
fi

for name in slurmd slurmctld slurmdbd mariadb munged; do
    if ! pid=$(pid_of "$name"); then
        rm -f "$RUN/$name.pid"
        continue
    fi
    kill -TERM "$pid"
    deadline=$((SECONDS + TIMEOUT))
    while alive "$pid"; do
        if ((SECONDS >= deadline)); then
            echo "stop.sh: $name (pid $pid) ignored SIGTERM for ${TIMEOUT}s; sending SIGKILL" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
        sleep 0.1
    done
    rm -f "$RUN/$name.pid"
    echo "stop.sh: stopped $name (pid $pid)"
done
