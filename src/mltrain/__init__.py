"""mltrain: plan, provision, feed, train, launch, watch and recover LLM training."""

__version__ = "0.1.0"
