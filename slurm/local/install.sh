#!/usr/bin/env bash
# Install the packages for the local one-node SLURM test cluster (Debian/Ubuntu, apt).
#
# Idempotent: when every package is already installed it exits at once, without
# touching the network. When it cannot install (not root, no apt-get) it prints why
# and exits 0, so callers (the test fixture, CI) can check for the binaries and skip.
set -euo pipefail

# slurm-wlm: slurmctld, slurmd and the client commands; munge: authentication;
# slurmdbd + mariadb-server: job accounting, so that `sacct` works and submitit can
# tell that a job died without writing a result.
PACKAGES=(slurm-wlm munge slurmdbd mariadb-server)

if [[ "$(id -u)" -ne 0 ]]; then
    echo "slurm/local/install.sh: not running as root; skipping the SLURM install." >&2
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "slurm/local/install.sh: apt-get not found; install ${PACKAGES[*]} by hand." >&2
    exit 0
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done
if [[ ${#missing[@]} -eq 0 ]]; then
    echo "slurm/local/install.sh: already installed (${PACKAGES[*]})."
    exit 0
fi

# Package scripts would otherwise start system-wide munge/mariadb/slurm services.
# The test cluster runs its own daemons from its own state folder, so forbid service
# starts during the install (the standard policy-rc.d mechanism) unless a policy
# file is already in place.
POLICY=/usr/sbin/policy-rc.d
if [[ ! -e "$POLICY" ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$POLICY"
    chmod 755 "$POLICY"
    trap 'rm -f "$POLICY"' EXIT
fi

echo "slurm/local/install.sh: installing ${missing[*]} ..."
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "slurm/local/install.sh: done."
