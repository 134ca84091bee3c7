"""`python -m mltrain.ops.file_sd RUN_DIR RUN_NAME PORT [HOSTS]`: the Slurm batch script writes the job's
Prometheus scrape targets with it before srun. The targets and their format are mltrain.telemetry.file_sd's."""

from mltrain.telemetry.file_sd import main

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
