#!/usr/bin/env bash
# The Debian packages the test suite starts for real: Slurm (+ munge), Prometheus/promtool, shellcheck, and an
# OpenSSH server and client (the pipeline's head-node commands over SSH).
# Installed once, before pytest, so that parallel test workers never race for the dpkg lock.
# Without root or apt-get nothing is installed: the fixtures then say what is missing.
set -euo pipefail

need=()
for bin_pkg in slurmctld:slurmctld slurmd:slurmd sbatch:slurm-client munged:munge \
               prometheus:prometheus promtool:prometheus shellcheck:shellcheck \
               sshd:openssh-server ssh:openssh-client ssh-keygen:openssh-client; do
  bin=${bin_pkg%%:*}; pkg=${bin_pkg#*:}
  command -v "$bin" >/dev/null 2>&1 || need+=("$pkg")
done
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "test-deps: missing ${need[*]} and cannot install them (needs root and apt-get)" >&2
  exit 0
fi
mapfile -t pkgs < <(printf '%s\n' "${need[@]}" | sort -u)
echo "test-deps: installing ${pkgs[*]}"
created_policy=0
if [ ! -e /usr/sbin/policy-rc.d ]; then  # keep the packages' postinst scripts from starting system daemons
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; created_policy=1
fi
trap 'if [ "$created_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi' EXIT
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
