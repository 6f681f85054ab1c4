"""Model cards for cache entries, built with huggingface_hub's `ModelCard` / `ModelCardData`.

The card carries the lineage (`base_model`, `base_model_relation`), tags (`pdo-hub` and the methods
applied), the config and its hash, the report as tables (size, speed, accuracy, every candidate tried),
the environment it was measured on, and how to load the variant. It is built from the report and the
source record only, so no token or other secret can end up in it.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from huggingface_hub import ModelCard, ModelCardData

CARD_NAME = "README.md"


def base_model_relation(report: Mapping[str, Any]) -> str | None:
    """The Hub's `base_model_relation` for a variant: `quantized` when int8 is involved.

    Factorized or pruned weights are a transformation of the base weights with no Hub-specific
    relation; `finetune` ("weights derived from the base") is the closest the Hub accepts.
    """
    applied = report.get("optimizations_applied") or []
    if not applied:
        return None
    return "quantized" if any(label.startswith("quantization") for label in applied) else "finetune"


def build_card(report: Mapping[str, Any], source: Mapping[str, Any]) -> ModelCard:
    """The card of one entry.

    Args:
        report: The optimization report.
        source: The entry's source record (`kind`, `source_id`, `revision`, `loader`, `config_hash`, ...).
    """
    methods = sorted({m for c in report.get("candidates", []) if c.get("status") == "selected" for m in c["methods"]})
    tags = ["pdo-hub", *methods, *(report.get("optimizations_applied") or [])]
    data: dict[str, Any] = {
        "tags": list(dict.fromkeys(tags)),
        "pdo_hub": {
            "source": {k: source[k] for k in ("kind", "source_id", "revision", "ref") if source.get(k)},
            "config_hash": source.get("config_hash"),
            "cache_key_hash": source.get("key_hash"),
            "optimizations_applied": list(report.get("optimizations_applied") or []),
        },
    }
    if source.get("kind") == "huggingface":
        data.update(base_model=source["source_id"], library_name="transformers")
        relation = base_model_relation(report)
        if relation:
            data["base_model_relation"] = relation
    else:
        data["library_name"] = "pytorch"
    card_data = ModelCardData(**data)
    body = "\n".join(_body(report, source))
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n{body}\n")


def _body(report: Mapping[str, Any], source: Mapping[str, Any]) -> list[str]:
    name = source.get("source_id", report.get("model_name", "model"))
    applied = ", ".join(report.get("optimizations_applied") or []) or "none (the original was kept)"
    lines = [
        f"# {name} (pdo-hub optimized variant)",
        "",
        f"Optimized by pdo-hub from `{name}` "
        f"({source.get('kind')}, revision `{source.get('revision')}`). Optimizations applied: **{applied}**.",
        "",
        "## Size",
        *_table(["original (MB)", "optimized (MB)", "reduction (%)"],
                [[_get(report, "model_size_metrics", k) for k in ("original_size_mb", "optimized_size_mb", "size_reduction_percent")]]),
        "",
        "## Speed",
        *_speed(report),
        "",
        "## Accuracy",
        *_table(["metric", "value"], [[k, v] for k, v in (report.get("accuracy_metrics") or {}).items()]),
        "",
        "## Candidates tried",
        *_candidates(report),
        "",
        "## Environment",
        *_table(["key", "value"], [[k, v] for k, v in (report.get("environment") or {}).items()]),
        "",
        "## Config",
        f"Config hash: `{source.get('config_hash')}`",
        "",
        "```json",
        json.dumps(report.get("config") or {}, indent=2, sort_keys=True),
        "```",
        "",
        "## How to load",
        *_how_to_load(source),
    ]
    notes = report.get("notes") or []
    if notes:
        lines += ["", "## Notes", *[f"- {note}" for note in notes]]
    return lines


def _speed(report: Mapping[str, Any]) -> list[str]:
    perf = report.get("performance_metrics") or {}
    if not perf.get("benchmarked"):
        return ["Not benchmarked (`benchmark_optimizations` was off)."]
    keys = ("original_latency_ms", "optimized_latency_ms", "speedup", "original_fps", "optimized_fps", "batch_size", "threads")
    return _table(list(keys), [[perf.get(k) for k in keys]])


def _candidates(report: Mapping[str, Any]) -> list[str]:
    rows = []
    for c in report.get("candidates") or []:
        rows.append([
            "+".join(c.get("methods", [])), c.get("status"), c.get("size_mb"), c.get("size_ratio"), c.get("speedup"),
            c.get("output_cosine"), c.get("accuracy_loss"), c.get("score"), c.get("reason", ""),
        ])
    if not rows:
        return ["No candidate was tried."]
    return _table(["methods", "status", "size (MB)", "size ratio", "speedup", "output cosine", "accuracy loss", "score", "reason"], rows)


def _how_to_load(source: Mapping[str, Any]) -> list[str]:
    if source.get("kind") == "huggingface":
        loader = source.get("loader", {})
        call = f"pdo_hub.from_pretrained({source['source_id']!r}, revision={source['revision']!r}, auto_class={loader.get('auto_class', 'AutoModel')!r}, config=...)"
    elif source.get("kind") == "torchvision":
        call = f"pdo_hub.get_model({source.get('builder')!r}, weights={source.get('source_id')!r}, config=...)"
    else:
        call = "pdo_hub.core.base_model.get_model_manager().download_and_load_model(source='local', model_id=..., name=...)"
    return [
        "```python",
        "import pdo_hub",
        f"model = {call}",
        "```",
        "The same call works offline (`HF_HUB_OFFLINE=1` or `PDO_HUB_OFFLINE=1`) once the variant is cached. Or, "
        "with the original architecture at hand: `pdo_hub.load_optimized(folder, fresh_model)`.",
    ]


def _get(report: Mapping[str, Any], section: str, key: str) -> Any:
    return (report.get(section) or {}).get(key)


def _table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    def cell(value: Any) -> str:
        text = "" if value is None else (json.dumps(value) if isinstance(value, (list, dict)) else str(value))
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return lines
