"""compare: two runs' evaluate metrics side by side, with deltas (the 12 COCO stats and per-class AP; masks too for
segmentation runs; accuracy, top-k, macro F1 and per-class recall / F1 for classifiers).

    nightshift compare RUN_A RUN_B [--config FILE] [--set key=value ...]

Reads `runs/<run>/evaluate/metrics.json` of both runs from the artifact store (`store.uri`) and prints a table
of RUN_A, RUN_B and `RUN_B - RUN_A`. Exits 3 naming the run and the missing file when a run has no metrics.
"""
from __future__ import annotations

import argparse
import sys

from pipeline.errors import EXIT_OK, EXIT_REJECTED


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_a", metavar="RUN_A", help="the base run (deltas are RUN_B - RUN_A)")
    parser.add_argument("run_b", metavar="RUN_B", help="the run compared with it")
    parser.add_argument("--config", help="YAML config file (for store.uri)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config value, e.g. --set store.uri=s3://bucket/nightshift (repeatable)")
    parser.add_argument("--colour", choices=("auto", "always", "never"), default="auto",
                        help="colour the deltas (default: when printing to a terminal)")


def main(args: argparse.Namespace) -> int:
    from pipeline.config import load_config
    from pipeline.context import safe_run_id
    from pipeline.report.comparison import text_table
    from pipeline.store import open_store

    cfg = load_config(args.config, args.overrides).resolved()
    store = open_store(cfg.store.uri, cfg.store.s3_endpoint_url)
    docs = []
    for run in (args.run_a, args.run_b):
        key = f"runs/{safe_run_id(run)}/evaluate/metrics.json"
        if not store.exists(key):
            print(f"nightshift compare: run {run!r} has no evaluation metrics: {store.url(key)} not found "
                  "(did its evaluate stage run?)", file=sys.stderr)
            return EXIT_REJECTED
        docs.append(store.get_json(key))
    base, new = docs
    colour = args.colour == "always" or (args.colour == "auto" and sys.stdout.isatty())
    print(f"{args.run_b} vs {args.run_a} ({new.get('split', '?')} split, {new.get('images', '?')} images vs "
          f"{base.get('split', '?')} split, {base.get('images', '?')} images)")
    if (new.get("split"), new.get("images")) != (base.get("split"), base.get("images")):
        print("note: the runs were scored on different images; deltas mix model and data changes")
    print(text_table(new, base, args.run_b, args.run_a, colour=colour))
    return EXIT_OK
