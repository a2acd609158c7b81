"""rollback: serve the previous registered model version again (or the one given with --to).

`nightshift rollback --model NAME [--to VERSION] [--config FILE] [--set key=value]`

Moves the registry alias (`promote.alias`) back to the previous registered version of NAME, or to
registry version VERSION, and makes Triton serve its Triton version: under the repository lock the
model-level config.pbtxt is re-pinned (version_policy specific) to that version and its labels restored;
with `promote.triton_url` set, Triton reloads it and must report it ready before the alias moves. Newer
versions stay in the repository, unserved, until pruning: a rollback is reversible with `--to`. Prints a
JSON summary; announces nothing (the notify side does). Exit 3 when there is nothing to roll back to.
"""
from __future__ import annotations

import logging
import time

from pipeline.errors import InputRejected

log = logging.getLogger(__name__)


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="registered model name (= Triton model name)")
    parser.add_argument("--to", type=int, metavar="VERSION",
                        help="registry version to serve (default: the one before the alias's current version)")
    parser.add_argument("--config", help="YAML config file (sections as in pipeline/config.py)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config value, e.g. --set promote.triton_url=http://triton:8000")


def rollback(cfg, model: str, to: int | None = None) -> dict:
    """Do the rollback; returns the summary. InputRejected (exit 3) when there is nothing to roll back to."""
    from pipeline import tracking
    from pipeline.triton.repository import ModelRepository

    alias = cfg.promote.alias
    client = tracking.registry_client(cfg)
    current = tracking.current_alias(client, model, alias)
    if current is None:
        raise InputRejected(f"registered model {model!r} has no @{alias} version: nothing to roll back from",
                            field="--model")
    repo = ModelRepository(cfg.promote.triton_repo, cfg.promote.triton_endpoint_url)
    published = set(repo.versions(model))
    versions = tracking.registered_versions(client, model)

    if to is not None:
        target = next((mv for mv in versions if int(mv.version) == to), None)
        if target is None:
            raise InputRejected(f"registered model {model!r} has no version {to}", field="--to")
        if int(target.version) == int(current.version):
            raise InputRejected(f"version {to} is already @{alias}: nothing to roll back", field="--to")
        if tracking.triton_version(target) not in published:
            raise InputRejected(f"registry version {to} has no published Triton version in {repo.url(model)} "
                                f"(Triton version {tracking.triton_version(target)} was pruned or never published)",
                                field="--to")
    else:
        older = [mv for mv in versions if int(mv.version) < int(current.version)
                 and tracking.triton_version(mv) in published]
        if not older:
            raise InputRejected(f"registered model {model!r}: no version older than @{alias} (version "
                                f"{current.version}) is still published in {repo.url(model)}: nothing to roll back to",
                                field="--model")
        target = older[0]  # newest first

    triton_version = tracking.triton_version(target)
    with repo.lock(model, cfg.promote.lock_timeout_s, cfg.promote.lock_ttl_s):
        served_before = repo.served_version(model)
        repo.activate(model, triton_version)
        try:
            if cfg.promote.triton_url:
                from pipeline.triton.client import load_and_wait

                load_and_wait(cfg.promote.triton_url, model, triton_version, cfg.promote.ready_timeout_s)
            client.set_registered_model_alias(model, alias, target.version)
        except BaseException:
            repo.activate(model, served_before if served_before in repo.versions(model) else None)
            raise
        repo.clear_journal(model)  # pin and alias agree now: an interrupted promotion's journal is moot
    client.set_model_version_tag(model, current.version, tracking.ROLLED_BACK_TAG, str(int(time.time())))
    summary = {
        "model": model, "alias": alias, "status": "rolled_back",
        "from": {"registry_version": int(current.version), "triton_version": tracking.triton_version(current)},
        "to": {"registry_version": int(target.version), "triton_version": triton_version},
        "repository": repo.url(model, triton_version), "served_before": served_before,
    }
    log.info("rolled back %s @%s: registry %s -> %s, Triton %s -> %s", model, alias, current.version,
             target.version, served_before, triton_version)
    return summary


def main(args) -> int:
    from pipeline.config import load_config

    from pipeline import alerts
    from pipeline.resultline import print_result

    cfg = load_config(args.config, args.overrides).resolved()
    summary = rollback(cfg, args.model, args.to)
    text = (f"[nightshift_rollback] {summary['model']} @{summary['alias']} rolled back from registry version "
            f"{summary['from']['registry_version']} (Triton {summary['from']['triton_version']}) to "
            f"{summary['to']['registry_version']} (Triton {summary['to']['triton_version']}); "
            f"Triton now serves {summary['repository']}.")
    summary["announced_to"] = alerts.send(cfg, text, "rollback", {"model": summary["model"],
                                                                  "version": summary["to"]["registry_version"]})
    print_result(summary)
    return 0
