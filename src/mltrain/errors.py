"""Typed errors. Library code raises these; only cli/ turns them into exit codes and one line."""

from __future__ import annotations


class MltrainError(Exception):
    """Base for every error a user can cause or fix. `exit_code` is what the CLI exits with."""

    exit_code = 1


class ConfigError(MltrainError):
    """A config file or override is wrong: message names the file, the key and the reason."""

    exit_code = 2


class DataError(MltrainError):
    """The corpus, tokenizer, shards or manifest are missing, unreadable or inconsistent."""

    exit_code = 1


class CheckpointError(MltrainError):
    """A checkpoint cannot be written, found or loaded into this model."""

    exit_code = 1


class RunDirError(MltrainError):
    """A run directory is missing or was written by an incompatible config."""

    exit_code = 2


class LaunchError(MltrainError):
    """A scheduler (Slurm, torchrun, Kubernetes) refused or failed to start a job."""

    exit_code = 1


class ClusterError(MltrainError):
    """A cluster spec, fleet plan or ParallelCluster config is invalid or infeasible."""

    exit_code = 1
