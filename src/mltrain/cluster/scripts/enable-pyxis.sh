#!/bin/bash
# mltrain: turn on the Pyxis + Enroot that AWS ParallelCluster (>= 3.11) AMIs ship installed but
# disabled, with the sample configs the AMI keeps under /opt/parallelcluster/examples.
# Used as CustomActions.OnNodeConfigured on the head node AND on the GPU queue (`mltrain cluster render`
# wires both); upload this file to the URL in the cluster spec's aws.pyxis_script_url.
#  - head node: plugstack.conf + pyxis.conf into /opt/slurm/etc (shared with the compute nodes), reconfigure
#  - compute nodes: enroot.conf and the runtime/cache directories enroot and pyxis expect
set -euo pipefail
# shellcheck disable=SC1091
. /etc/parallelcluster/cfnconfig
EXAMPLES=/opt/parallelcluster/examples
SLURM_ETC=/opt/slurm/etc
if [[ ! -f "$EXAMPLES/pyxis/pyxis.conf" ]]; then
  echo "enable-pyxis: $EXAMPLES/pyxis/pyxis.conf not found (AMI older than ParallelCluster 3.11?)" >&2
  exit 1
fi
case "${cfn_node_type:-}" in
  HeadNode)
    mkdir -p "$SLURM_ETC/plugstack.conf.d"
    cp "$EXAMPLES/spank/plugstack.conf" "$SLURM_ETC/plugstack.conf"
    cp "$EXAMPLES/pyxis/pyxis.conf" "$SLURM_ETC/plugstack.conf.d/pyxis.conf"
    scontrol reconfigure || systemctl restart slurmctld
    ;;
  ComputeFleet)
    for d in /var/enroot /run/enroot /run/pyxis; do mkdir -p "$d"; chmod 1777 "$d"; done
    install -m 0644 "$EXAMPLES/enroot/enroot.conf" /etc/enroot/enroot.conf
    systemctl restart slurmd || true
    ;;
  *)
    echo "enable-pyxis: nothing to do on node type '${cfn_node_type:-unknown}'"
    ;;
esac
echo "enable-pyxis: done on ${cfn_node_type:-unknown}"
