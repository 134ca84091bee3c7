#!/usr/bin/env bash
# Import a registry image (ECR or any registry) into an Enroot squashfs on shared storage, for Slurm/Pyxis.
#
#   scripts/enroot-import.sh IMAGE NAME
#   scripts/enroot-import.sh 123456789012.dkr.ecr.us-east-1.amazonaws.com/mltrain:0.1.0 mltrain-0.1.0
#
# Writes $ENROOT_IMAGE_DIR/NAME.sqsh (default /fsx/images) and prints that path as the last line of
# stdout: put it in the Slurm cluster spec as container.image. Run it on a node with enroot (a
# ParallelCluster login/compute node with Pyxis) and, for ECR, the AWS CLI with pull rights.
# ECR login: a fresh token goes into enroot's credentials file (netrc format, mode 600).
# Atomic: enroot writes a temp file in the target dir, renamed over NAME.sqsh only when complete, so a
# job starting meanwhile sees the old image or the new one, never half of one.
set -euo pipefail

die() { echo "enroot-import: error: $*" >&2; exit 1; }
log() { echo "enroot-import: $*" >&2; }

[ $# -eq 2 ] || die "usage: $0 IMAGE NAME   (e.g. 123456789012.dkr.ecr.us-east-1.amazonaws.com/mltrain:0.1.0 mltrain-0.1.0)"
IMAGE=$1
NAME=$2
OUT_DIR=${ENROOT_IMAGE_DIR:-/fsx/images}
[[ $NAME =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] || die "NAME '$NAME': letters, digits, '.', '_' and '-' only"
[[ $IMAGE != *://* && $IMAGE != /* ]] || die "IMAGE '$IMAGE' is not a registry reference (no scheme, no path)"
command -v enroot >/dev/null || die "enroot not found: run this on a node with enroot/pyxis"
mkdir -p "$OUT_DIR" || die "cannot create $OUT_DIR"

# The registry host is the first path component when it looks like one (has '.' or ':' or is localhost).
first=${IMAGE%%/*}
registry=""
if [[ $IMAGE == */* && ( $first == *.* || $first == *:* || $first == localhost ) ]]; then
  registry=$first
fi

# ECR: <account>.dkr.ecr.<region>.amazonaws.com[.cn]
if [[ $registry =~ ^[0-9]{12}\.dkr\.ecr\.([a-z0-9-]+)\.amazonaws\.com(\.cn)?$ ]]; then
  region=${BASH_REMATCH[1]}
  command -v aws >/dev/null || die "aws CLI not found: needed for the ECR login to $registry"
  log "ECR login to $registry ($region)"
  token=$(aws ecr get-login-password --region "$region") || die "aws ecr get-login-password failed for $region"
  conf=${ENROOT_CONFIG_PATH:-${XDG_CONFIG_HOME:-$HOME/.config}/enroot}
  mkdir -p "$conf"
  creds=$conf/.credentials
  (
    umask 077
    { grep -v "^machine $registry " "$creds" 2>/dev/null || true
      printf 'machine %s login AWS password %s\n' "$registry" "$token"
    } > "$creds.tmp.$$"
    mv -f "$creds.tmp.$$" "$creds"
  )
fi

# enroot's URI form: docker://[REGISTRY#]IMAGE[:TAG]
if [ -n "$registry" ]; then
  uri="docker://$registry#${IMAGE#*/}"
else
  uri="docker://$IMAGE"
fi

final=$OUT_DIR/$NAME.sqsh
tmp=$OUT_DIR/.$NAME.$$.sqsh.tmp
rm -f "$tmp"  # enroot import refuses to overwrite
trap 'rm -f "$tmp"' EXIT
log "enroot import $uri -> $final"
enroot import --output "$tmp" "$uri" >&2 || die "enroot import $uri failed; $final is unchanged"
[ -s "$tmp" ] || die "enroot import wrote nothing; $final is unchanged"
chmod 644 "$tmp"
mv -f "$tmp" "$final"
trap - EXIT
echo "$final"
