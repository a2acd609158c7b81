"""Nightshift's Airflow side: the one stage-task factory and the chat notifier.

    from nightshift_airflow import stage, branch_on_change, train_params, NightshiftChatNotifier, default_args

Importing this package reads only environment variables (see settings.py); it touches no database,
Variable or connection, and imports the Kubernetes provider only when NIGHTSHIFT_RUNNER=kubernetes.
"""
from __future__ import annotations

from datetime import timedelta

from nightshift_airflow import settings
from nightshift_airflow.factory import RUNNER, branch_on_change, check_conf, stage, train_params
from nightshift_airflow.notifier import NightshiftChatNotifier


def default_args(**overrides) -> dict:
    """Shared task defaults: one retry (not for rejections or gate refusals, which fail fast), chat alerts."""
    args = {
        "owner": "nightshift",
        "retries": 1,
        "retry_delay": timedelta(minutes=5),
        "execution_timeout": timedelta(hours=4),
        "on_failure_callback": NightshiftChatNotifier(),
    }
    args.update(overrides)
    return args


__all__ = ["RUNNER", "NightshiftChatNotifier", "branch_on_change", "check_conf", "default_args", "settings", "stage",
           "train_params"]
