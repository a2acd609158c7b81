"""StageSpec: what a stage module declares to the CLI, in one value instead of hooks found by name.

Each `pipeline/stages/<name>.py` ends with `SPEC = StageSpec(...)` beside its `run(cfg, ctx) -> result`; the CLI
reads only `module.SPEC` and `module.run`. Every field has a default, so a stage that needs none of them (and
a test's fake stage) may leave `SPEC` out: it then gets `StageSpec()`.

Plain dataclass, standard library only: `nightshift --help` and every stage module import it.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class StageSpec:
    # stages whose results feed this stage's input signature: a stage whose result.json says ok with the same
    # signature (same resolved config, same upstream results) skips itself when `skip_if_done`
    upstream: tuple[str, ...] = ()
    # False for a stage that must always run (a cheap check, or one whose answer depends on the registry)
    skip_if_done: bool = True
    # one run of this stage per run id at a time (shared scratch space, outputs replaced in place): a second
    # is refused before it reads or writes anything
    exclusive: bool = False
    # the stage also runs without --run-id: then `standalone(cfg, args) -> exit code` is called instead of run
    standalone: Callable[[Any, argparse.Namespace], int] | None = None
    # stage-specific flags: added to its parser ...
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None
    # ... mapped onto config keys (`--set`-style "key=value" strings, applied after the user's --set) ...
    overrides_from_args: Callable[[argparse.Namespace], list[str]] | None = None
    # ... or passed to run() as keyword arguments ...
    run_kwargs: Callable[[argparse.Namespace], dict] | None = None
    # ... and written back into reproduce.sh (flags that are not config keys)
    reproduce_args: Callable[[argparse.Namespace], list[str]] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.upstream, str) or not all(isinstance(s, str) for s in self.upstream):
            raise TypeError(f"StageSpec.upstream must be a tuple of stage names, not {self.upstream!r}")
        object.__setattr__(self, "upstream", tuple(self.upstream))

    def extra_overrides(self, args: argparse.Namespace) -> list[str]:
        return list(self.overrides_from_args(args)) if self.overrides_from_args else []

    def kwargs(self, args: argparse.Namespace) -> dict:
        return dict(self.run_kwargs(args)) if self.run_kwargs else {}

    def extra_reproduce_args(self, args: argparse.Namespace) -> list[str]:
        return list(self.reproduce_args(args)) if self.reproduce_args else []


DEFAULT = StageSpec()


def spec_of(module) -> StageSpec:
    """A stage module's declaration: its SPEC, or the defaults when it declares none."""
    spec = getattr(module, "SPEC", DEFAULT)
    if not isinstance(spec, StageSpec):
        raise TypeError(f"{getattr(module, '__name__', module)}.SPEC must be a StageSpec, not {type(spec).__name__}")
    return spec
