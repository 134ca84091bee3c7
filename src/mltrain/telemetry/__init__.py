"""What a training run reports while it runs, attached by the trainer with one call (`instrument`).

instrument.py wraps the loader and the checkpoint save for timings and attaches the sinks below;
prometheus.py (each node's /metrics), trackers.py (MLflow, W&B), stragglers.py (slow-rank records),
nvml.py (GPU readings, also read by `mltrain health`), file_sd.py (Prometheus scrape targets).
metrics.jsonl itself is written by mltrain.train.metrics; a sink that fails never stops training.
"""
