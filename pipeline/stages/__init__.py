"""Pipeline stages. Each module has `run(cfg, ctx) -> dict` and may declare:

UPSTREAM: stages whose results feed this stage's input signature (a stage whose outputs exist and whose
    inputs are unchanged skips itself); SKIP_IF_DONE: False for stages that must always run;
STANDALONE: True when the stage also runs without --run-id (then run_standalone(cfg, args) is called);
add_arguments(parser) / overrides_from_args(args): stage-specific flags mapped onto config keys.
"""
