"""The one world DeviceMesh of a run, with torchtitan's named axes (outermost first):
pp, dp_replicate, dp_shard, cp, tp.

Only axes of degree > 1 are in the mesh, so a degree-1 axis creates no process group. The data-parallel
sub-mesh is (dp_replicate, dp_shard): 2-D for HSDP, 1-D for FSDP2 or DDP; the loader's sample split is
over its ranks, while the tp and cp ranks of one dp group see the same batch. FSDP shards over dp_shard x
cp; that one flattened axis is made only with cp > 1 (each is another process group on every rank).

Ranks are laid out row-major over the axes in that order (tp innermost, so a tp group is consecutive
ranks, i.e. one node's GPUs), which `dp_coordinate` reproduces without a process group.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mltrain.config import ParallelConfig

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh

MESH_DIMS = ("pp", "dp_replicate", "dp_shard", "cp", "tp")


def degrees(p: ParallelConfig) -> dict[str, int]:
    """{axis: degree} in mesh order; dp_shard must already be resolved (not -1)."""
    if p.dp_shard < 1:
        raise ValueError("dp_shard must be resolved before building a mesh (see config.resolve_parallel)")
    return {name: getattr(p, name) for name in MESH_DIMS}


def dp_coordinate(p: ParallelConfig, rank: int) -> tuple[int, int]:
    """(data-parallel rank, data-parallel size) of global `rank`: its index among the dp_replicate x
    dp_shard groups. The ranks of one tp (and cp) group share it, so they load the same batch."""
    d = degrees(p)
    inner = d["cp"] * d["tp"]
    dp_size = d["dp_replicate"] * d["dp_shard"]
    return (rank // inner) % dp_size, dp_size


def build_mesh(p: ParallelConfig, device_type: str) -> DeviceMesh | None:
    """The world mesh over the axes of degree > 1 (None when every degree is 1: one process)."""
    from torch.distributed.device_mesh import init_device_mesh

    active = [(name, n) for name, n in degrees(p).items() if n > 1]
    if not active:
        return None
    names = tuple(name for name, _ in active)
    return init_device_mesh(device_type, tuple(n for _, n in active), mesh_dim_names=names)


def dp_mesh(mesh: DeviceMesh | None) -> DeviceMesh | None:
    """The data-parallel sub-mesh for FSDP2/HSDP (2-D: replicate x shard) or DDP (1-D), None without one.

    The cp ranks of a group hold the same parameters and each computes gradients from its own slice of
    the sequence, so FSDP shards and reduces over dp_shard x cp together (one flattened axis,
    "dp_shard_cp", torchtitan's name); the loss is a per-token mean, so that average is the whole
    sequence's."""
    if mesh is None or mesh.mesh_dim_names is None:
        return None
    dims = mesh.mesh_dim_names
    shard = tuple(n for n in ("dp_shard", "cp") if n in dims)
    if len(shard) == 2:
        # kept on the world mesh: flattening twice would make a second process group
        flat = getattr(mesh, "_mltrain_dp_shard_cp", None)
        if flat is None:
            flat = mesh[shard]._flatten("dp_shard_cp")
            mesh._mltrain_dp_shard_cp = flat
        if "dp_replicate" not in dims:
            return flat
        shard = ("dp_shard_cp",)  # HSDP: the 2-D (replicate, dp_shard_cp) slice of the world mesh
    names = (("dp_replicate",) if "dp_replicate" in dims else ()) + shard
    return mesh[names] if names else None


def shards_parameters(dp: DeviceMesh) -> bool:
    """Whether the data-parallel mesh shards (FSDP2/HSDP) rather than only replicates (DDP)."""
    return bool(set(dp.mesh_dim_names or ()) & {"dp_shard", "cp", "dp_shard_cp"})


def axis_mesh(mesh: DeviceMesh | None, name: str) -> DeviceMesh | None:
    """The 1-D sub-mesh of axis `name`, None when the world mesh has no such axis (degree 1)."""
    if mesh is None or mesh.mesh_dim_names is None or name not in mesh.mesh_dim_names:
        return None
    return mesh[name]


def cp_mesh(mesh: DeviceMesh | None) -> DeviceMesh | None:
    return axis_mesh(mesh, "cp")


def tp_mesh(mesh: DeviceMesh | None) -> DeviceMesh | None:
    return axis_mesh(mesh, "tp")
