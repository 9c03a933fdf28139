#!/usr/bin/env bash
# Install SLURM (slurm-wlm: slurmctld, slurmd, sbatch, ...) and MUNGE with apt, for the local 2-node test cluster
# that tests/slurm_cluster.py brings up (`pytest -m slurm`). Root only, Debian/Ubuntu only, idempotent: when every
# binary is already there it returns at once without touching apt.
#
#   sudo scripts/setup_slurm.sh          # or: sudo make slurm-setup
#
# Nothing is configured or started here: the test fixture writes its own slurm.conf in a temp folder and starts
# (and stops, by pid) munged, slurmctld and two slurmd daemons itself.
set -euo pipefail

NEEDED=(slurmctld slurmd sbatch srun scontrol squeue sacct sinfo munged mungekey)

missing=()
for bin in "${NEEDED[@]}"; do
    PATH="$PATH:/usr/sbin:/sbin" command -v "$bin" >/dev/null 2>&1 || missing+=("$bin")
done
if [ "${#missing[@]}" -eq 0 ]; then
    echo "setup_slurm: slurm-wlm and munge already installed ($(PATH="$PATH:/usr/sbin" slurmctld -V 2>/dev/null))"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "setup_slurm: missing ${missing[*]}; run as root: sudo scripts/setup_slurm.sh (or sudo make slurm-setup)" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "setup_slurm: apt-get not found; install slurm-wlm and munge with your package manager" >&2
    exit 1
fi

echo "setup_slurm: installing slurm-wlm and munge (missing: ${missing[*]})"
# Packages whose daemons this run newly installs (the only ones it may stop again below).
new_services=()
for svc in slurmctld slurmd munge; do
    dpkg-query -W -f='${Status}' "$svc" 2>/dev/null | grep -q "install ok installed" || new_services+=("$svc")
done
export DEBIAN_FRONTEND=noninteractive DEBCONF_NOWARNINGS=yes
apt-get update -qq
# slurm-client brings sacct/squeue; slurm-wlm pulls slurmctld + slurmd; no recommends (docs, mailers, X).
apt-get install -y -qq --no-install-recommends slurm-wlm slurm-client munge >/dev/null
# On systemd hosts the packages' postinst starts the system-wide daemons; the test cluster runs its own (own
# config, key, ports), so stop and disable the ones installed just now. Daemons that were already there are left.
if [ "${#new_services[@]}" -gt 0 ] && command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl disable --now "${new_services[@]}" >/dev/null 2>&1 || true
fi
echo "setup_slurm: done ($(PATH="$PATH:/usr/sbin" slurmctld -V))"
