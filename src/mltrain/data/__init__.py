"""Data pipeline: sources -> tokenizer -> packed token shards + manifest -> validate -> loader.

Submodules are imported where used so that `import mltrain.data` stays cheap.
"""
