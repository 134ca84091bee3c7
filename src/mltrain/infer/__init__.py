"""Use a trained run: `mltrain eval` (loss/perplexity on given text) and `mltrain sample` (generation)."""
