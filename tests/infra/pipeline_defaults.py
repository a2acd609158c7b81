"""Defaults from pipeline/config.py read without importing it (the Airflow venv has no pipeline deps)."""
from __future__ import annotations

import ast
from pathlib import Path

CONFIG = Path(__file__).resolve().parents[2] / "pipeline" / "config.py"


def promote_model_name() -> str:
    tree = ast.parse(CONFIG.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == "PromoteConfig":
            for item in node.body:
                if isinstance(item, ast.AnnAssign) and getattr(item.target, "id", None) == "model_name":
                    return ast.literal_eval(item.value)
    raise LookupError("PromoteConfig.model_name not found in pipeline/config.py")
