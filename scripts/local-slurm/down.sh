#!/usr/bin/env bash
# Stop the daemons started by up.sh, by PID file only (never by name).
#   --keep-munge  leave munged running      --purge  also delete Slurm state and logs
# Env: MLTRAIN_SLURM_DIR (default per checkout, see common.sh), as for up.sh.
# shellcheck source=common.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/common.sh"
keep_munge=0; purge=0
for a in "$@"; do case $a in --keep-munge) keep_munge=1;; --purge) purge=1;; esac; done

pidfiles=("$D"/run/slurmd-*.pid "$D/run/slurmctld.pid")
[ "$keep_munge" = 1 ] || pidfiles+=("$D/munge/munged.pid")

# cancel jobs first so their slurmstepd's exit cleanly (only while slurmctld is alive, else scancel hangs)
if [ -f "$D/run/slurmctld.pid" ] && kill -0 "$(cat "$D/run/slurmctld.pid")" 2>/dev/null; then
  SLURM_CONF=$D/etc/slurm.conf timeout 5 scancel -u root 2>/dev/null || true
fi
pids=()
for f in "${pidfiles[@]}"; do
  [ -f "$f" ] || continue
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" && pids+=("$pid") && echo "stopping $(basename "$f" .pid) (pid $pid)"
  fi
  rm -f "$f"
done
alive=()
for _ in $(seq 1 100); do   # up to 10 s, then SIGKILL the stragglers
  alive=(); for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive+=("$p"); done
  [ ${#alive[@]} = 0 ] && break
  sleep 0.1
done
for p in "${alive[@]}"; do kill -KILL "$p" 2>/dev/null && echo "killed $p"; done
[ "$purge" = 1 ] && rm -rf "$D/state" "$D/spool" "$D/log"
exit 0
