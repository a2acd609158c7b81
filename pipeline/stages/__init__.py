"""Pipeline stages. Each module has `run(cfg, ctx) -> result` (its pipeline.results model, or a dict of the same
keys) and declares what the CLI needs to know about it in `SPEC = StageSpec(...)` (pipeline/spec.py): upstream
stages, skip-if-done, exclusive, standalone use, stage-specific flags.
"""
