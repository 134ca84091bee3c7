"""The checks a run must pass before it starts, each refused with one line before a GPU is touched or a
job is queued: the data is prepared and verified, the run dir was written by a compatible config, a
`model.init_from` checkpoint fits the model, and no live trainer holds the run dir.

`mltrain train` runs them before it starts torchrun (and then takes the run dir's lease), `mltrain
submit` before sbatch, and the trainer's rank 0 at every start of a Slurm or Kubernetes job (the nodes
may see other data than the login node did). Shard verification is recorded in the run dir, so a
second call costs nothing. They live here, beside the trainer, because both the launchers and the
trainer run them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mltrain import rundir
from mltrain.config import RunConfig
from mltrain.errors import DataError, RunDirError

# Config sections that must not change under an existing run dir (they change what the weights mean).
FROZEN_KEYS = ("model", "data.dir", "data.tokenizer", "train.seq_len")


def precheck(cfg: RunConfig) -> Any:
    """The data, run dir and init_from checks, in that order; returns the data manifest. The lease is
    not checked here: a launcher takes it (mltrain.lease) or asks check_lease_free."""
    from mltrain.data.manifest import MANIFEST_FILE
    from mltrain.data.validate import check_manifest_consistency

    manifest_path = Path(cfg.data.dir) / MANIFEST_FILE
    if not manifest_path.exists():
        raise DataError(f"{manifest_path}: no prepared data; run `mltrain data prepare <run.yaml>` first")
    manifest = check_manifest_consistency(cfg.data.dir)  # loads it, checks shard headers and sizes
    if manifest.vocab_size > cfg.model.vocab_size:
        raise DataError(
            f"{manifest_path}: tokenizer vocab {manifest.vocab_size} is larger than "
            f"model.vocab_size {cfg.model.vocab_size}; raise model.vocab_size or use a smaller tokenizer"
        )
    check_run_dir(cfg)
    verify_data_once(cfg, manifest)
    if cfg.model.init_from:
        from mltrain.model.hf.load import check_hf_matches

        check_hf_matches(cfg.model, cfg.model.init_from)  # reads config + file list, no weights
    return manifest


def check_layout(cfg: RunConfig, world_size: int, device_type: str) -> None:
    """ConfigError (one line) when the `parallel:` block does not fit `world_size` ranks on this device:
    the degrees' product, context parallel on CPU, or pipeline stages over DDP alone (config.resolve_parallel).
    Nothing to check without the block."""
    from mltrain.config import resolve_parallel

    if cfg.parallel is not None and cfg.script is None:
        resolve_parallel(cfg, world_size, device_type)


def verify_data_once(cfg: RunConfig, manifest: Any) -> None:
    """Full sha256 + id-range check of every shard the first time this run uses it (recorded in the
    run dir: later starts, and the trainer's call after the launcher's, pay nothing)."""
    from mltrain.data.verify import verify_shards_once

    checked = verify_shards_once(cfg.data.dir, manifest, cfg.run_dir, cfg.model.vocab_size)
    if checked:
        print(f"[mltrain] verified {len(checked)} data shard(s) against the manifest (sha256, id range)", flush=True)


def _get(d: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        d = d.get(part, {}) if isinstance(d, dict) else {}
    return d


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """{"a.b": value} for every leaf of a nested dict (a config as dotted keys)."""
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(flatten(v, f"{prefix}.{k}" if prefix else k))
    return out


def check_run_dir(cfg: RunConfig) -> None:
    """Refuse a run dir written by a config whose model, data or sequence length differ."""
    import yaml

    path = cfg.run_dir / rundir.CONFIG_FILE
    if not path.exists():
        return
    try:
        old = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise RunDirError(f"{path}: unreadable ({e}); move the run dir away or pick a new run name") from None
    new = cfg.model_dump(mode="json")
    diffs = []
    for key in FROZEN_KEYS:
        a, b = flatten(_get(old, key), key), flatten(_get(new, key), key)
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                diffs.append(f"{k}: run dir has {a.get(k)!r}, config has {b.get(k)!r}")
    if diffs:
        raise RunDirError(
            f"{cfg.run_dir} was written by an incompatible config ({'; '.join(diffs[:5])}); "
            "use a new run name, or restore the original values"
        )


def check_lease_free(run_dir: Path) -> None:
    """RunDirError when a live trainer holds the run dir's lease (mltrain.lease): a second job would be
    refused by it seconds after it starts."""
    from mltrain.lease import lease_holder

    holder = lease_holder(run_dir)
    if holder:
        who = ", ".join(f"{k} {v}" for k, v in holder.items() if k in ("host", "pid", "job_id") and v)
        raise RunDirError(f"{run_dir}: in use by a running trainer ({who or holder}); stop it first")
