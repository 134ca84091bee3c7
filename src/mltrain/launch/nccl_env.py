"""EFA / NCCL / torch.distributed environment per EC2 instance type.

Each variable carries a one-line reason that is rendered as a comment into the sbatch script,
so whoever reads the job later knows why it is there. Settings that are known to hurt on
current stacks are listed in KNOWN_BAD and never emitted by default; a cluster spec `env`
may still set anything (it wins), but submit warns about known-bad ones.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class EnvVar:
    name: str
    value: str
    why: str


# Families whose large sizes have EFA; the set is the sizes that do (p-families: every size we sell).
EFA_SIZES: dict[str, set[str] | None] = {
    "p4d": None,  # None = every size
    "p4de": None,
    "p5": {"48xlarge"},
    "p5e": None,
    "p5en": None,
    "g5": {"8xlarge", "12xlarge", "16xlarge", "24xlarge", "48xlarge"},
    "g6": {"8xlarge", "12xlarge", "16xlarge", "24xlarge", "48xlarge"},
    "g6e": {"8xlarge", "12xlarge", "16xlarge", "24xlarge", "48xlarge"},
}
GPU_FAMILIES = {"p3", "p4d", "p4de", "p5", "p5e", "p5en", "g4dn", "g5", "g6", "g6e", "p6-b200"}

KNOWN_BAD: dict[str, str] = {
    "NCCL_IB_DISABLE": "with EFA it forces NCCL off the aws-ofi-nccl network plugin onto TCP sockets",
    "FI_EFA_USE_DEVICE_RDMA": "current libfabric/aws-ofi-nccl detect RDMA themselves; forcing it breaks p4d/g5",
    "NCCL_PROTO": "pinning the protocol (e.g. simple) costs bandwidth; NCCL tunes it per message size",
    "NCCL_ALGO": "pinning the algorithm defeats NCCL's per-size tuning",
    "NCCL_P2P_DISABLE": "turns off NVLink peer-to-peer inside the node",
    "NCCL_SHM_DISABLE": "turns off shared-memory transport inside the node",
    "NCCL_NET_GDR_LEVEL": "hand-tuned GPUDirect levels are instance-specific; the plugin sets them",
}


def _family_size(instance_type: str) -> tuple[str, str]:
    fam, _, size = instance_type.partition(".")
    return fam.lower(), size.lower()


def has_efa(instance_type: str) -> bool:
    """True when this instance type (at this size) has an EFA interface."""
    fam, size = _family_size(instance_type)
    if fam not in EFA_SIZES:
        return False
    sizes = EFA_SIZES[fam]
    return sizes is None or size in sizes


def is_gpu_instance(instance_type: str) -> bool:
    fam, _ = _family_size(instance_type)
    return fam in GPU_FAMILIES


def default_env(instance_type: str, run_dir_var: str = "${RUN_DIR}") -> list[EnvVar]:
    """The env for this instance type; empty for CPU / local instance types."""
    env: list[EnvVar] = []
    if has_efa(instance_type):
        env += [
            EnvVar("FI_PROVIDER", "efa", "use the EFA libfabric provider; fail loudly instead of falling back to TCP"),
            EnvVar(
                "FI_EFA_USE_HUGE_PAGE",
                "0",
                "huge-page buffers fail with ENOMEM when dataloader workers fork; the cost is negligible",
            ),
        ]
    if is_gpu_instance(instance_type):
        env += [
            EnvVar(
                "NCCL_SOCKET_IFNAME",
                "^docker,lo,veth",
                "NCCL bootstrap over the instance's ENI, never docker bridges, loopback or veth pairs",
            ),
            EnvVar(
                "TORCH_NCCL_ASYNC_ERROR_HANDLING",
                "1",
                "a NCCL error or timeout aborts the rank, so srun --kill-on-bad-exit ends the step and we requeue",
            ),
            EnvVar(
                "TORCH_NCCL_DUMP_ON_TIMEOUT",
                "1",
                "on a collective timeout, dump the NCCL flight recorder (which rank waited on what)",
            ),
            EnvVar("TORCH_NCCL_TRACE_BUFFER_SIZE", "2000", "flight-recorder entries kept per rank (0 = no dump)"),
            EnvVar(
                "TORCH_NCCL_DEBUG_INFO_TEMP_FILE",
                f"{run_dir_var}/hangs/nccl_trace_rank_",
                "flight-recorder dumps land in the run dir next to the watchdog's stack dumps",
            ),
            EnvVar("NCCL_DEBUG", "WARN", "errors with their reason in the job log, without INFO noise"),
        ]
    return env


_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def merged_env(instance_type: str, overrides: dict[str, str], run_dir_var: str = "${RUN_DIR}") -> list[EnvVar]:
    """Defaults, then the cluster spec's `env` (it wins; new names are appended).

    `run_dir_var` is how the run dir is referenced: `${RUN_DIR}` in the sbatch script, `$(MLTRAIN_RUN_DIR)`
    in a Kubernetes container env."""
    env = {v.name: v for v in default_env(instance_type, run_dir_var)}
    for name, value in overrides.items():
        if not _NAME.match(name):
            raise ValueError(f"env: {name!r} is not a valid environment variable name")
        why = "cluster spec env override"
        if name in KNOWN_BAD:
            why += f" (WARNING, known-bad: {KNOWN_BAD[name]})"
        env[name] = EnvVar(name, str(value), why)
    return list(env.values())


def known_bad_in(env: list[EnvVar]) -> list[str]:
    """'NAME: reason' for every known-bad variable present."""
    return [f"{v.name}: {KNOWN_BAD[v.name]}" for v in env if v.name in KNOWN_BAD]
