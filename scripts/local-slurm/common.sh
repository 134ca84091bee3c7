#!/usr/bin/env bash
# Per-checkout defaults shared by up.sh, down.sh and the test fixture, so two checkouts (or two
# worktrees) testing at once run two independent clusters instead of tearing each other's down.
#   D (state dir) = /tmp/mltrain-slurm-<8 hex of cksum(repo path)>; ports from the same hash:
#   CTLD_PORT = 20000 + 10*slot, node i on CTLD_PORT+1+i (slot in 0..899, so 20000-29000).
# Every value can still be set from the environment (MLTRAIN_SLURM_DIR, CTLD_PORT, NODE_PORT_BASE).
# `bash common.sh` prints the values (the fixture reads them from there).
_repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)
_h=$(printf %s "$_repo" | cksum | cut -d' ' -f1)
_slot=$((_h % 900))
D=${MLTRAIN_SLURM_DIR:-/tmp/mltrain-slurm-$(printf %08x "$_h")}
CTLD_PORT=${CTLD_PORT:-$((20000 + 10 * _slot))}
NODE_PORT_BASE=${NODE_PORT_BASE:-$((CTLD_PORT + 1))}
NNODES=${NNODES:-3}
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  echo "MLTRAIN_SLURM_DIR=$D"; echo "CTLD_PORT=$CTLD_PORT"; echo "NODE_PORT_BASE=$NODE_PORT_BASE"; echo "NNODES=$NNODES"
fi
