"""Operating a run: pre-flight doctor, collective bandwidth test, GPU health, metrics sinks, stragglers."""
