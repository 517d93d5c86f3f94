"""The run loop: a config built into arrays, stepped in compiled chunks over devices, saved.

- ``experiment``: config -> environments, initial logits, hyperparameter grid, seed keys.
- ``runner``: ``jit(scan(step))`` over seed blocks in chunks; the non-finite guard.
- ``sharding``: grid points and seeds across devices, in fixed-size seed blocks (bitwise-stable).
- ``checkpoint``: a run's progress after every chunk; resume.
- ``store``: full mode's per-seed rows as Parquet parts, written chunk by chunk, read back.
- ``memory``: a run's peak memory estimated up front; runs that cannot fit are refused.
- ``compile_cache``: JAX's persistent compilation cache.
"""
