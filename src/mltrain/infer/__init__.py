"""Use a trained run: `mltrain export` (Hugging Face format), `mltrain eval` (loss/perplexity on given
text) and `mltrain sample` (generation)."""
