"""The seed's saved artifacts, beside pdo-hub's own safetensors + recipe.

`optimized_model.pt` (state dict) and `optimized_model_full.pt` (whole pickled module) are written
for compatibility with the seed only: pdo-hub never loads them (they need pickle), it reloads from
`model.safetensors` + `pdo_recipe.json` with `pdo_hub.load_optimized`. `pareto.png` is the report's
chart (size vs speed of every candidate).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .chart import write_pareto
from .storage import REPORT_NAME, save_optimized

logger = logging.getLogger(__name__)


def write_seed_artifacts(model: nn.Module, report: dict[str, Any], directory: Path) -> None:
    save_optimized(model, directory, report=None)
    artifacts = {"safetensors": "model.safetensors", "recipe": "pdo_recipe.json", "state_dict": "optimized_model.pt"}
    torch.save(model.state_dict(), directory / "optimized_model.pt")
    try:
        torch.save(model, directory / "optimized_model_full.pt")
        artifacts["full_model"] = "optimized_model_full.pt"
    except Exception as err:  # some modules (local classes, hooks with lambdas) cannot be pickled
        report.setdefault("notes", []).append(f"optimized_model_full.pt not written: the model cannot be pickled ({err}).")
        logger.warning("optimized_model_full.pt not written: %s", err)
    chart = write_pareto(report, directory)
    if chart:
        artifacts["chart"] = chart
    artifacts["report"] = REPORT_NAME
    report["artifacts"] = artifacts
    (directory / REPORT_NAME).write_text(json.dumps(report, indent=2, default=str))
