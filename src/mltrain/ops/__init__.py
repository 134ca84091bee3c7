"""Operating a cluster and its runs: the pre-flight doctor, GPU health, the collective bandwidth bench, and
the shipped Grafana dashboard's queries. What a run reports while it trains is mltrain.telemetry."""
