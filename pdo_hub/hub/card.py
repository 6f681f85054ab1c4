"""Model cards for cache entries, built with huggingface_hub's `ModelCard` / `ModelCardData`.

The card carries the lineage (`base_model`, `base_model_relation`), tags (`pdo-hub` and the methods
applied), the measured results as a `model-index`, the seed's "Example Benchmark" summary, the
Pareto chart (`pareto.png` beside the card: size vs speed of every candidate), the config and its
hash, the report as tables (size, speed, accuracy, every candidate tried: the same table the CLI
prints), the environment it was measured on, and how to load the variant. It is built from the report and the source record only, so no token or other secret can
end up in it.

`library_name` names what loads the repo. A variant in pdo-hub's format (int8 and factorized layers
replayed from `pdo_recipe.json`) says `pdo-hub`: stock transformers or torch cannot load it, so claiming
`transformers` would send Hub users to a loader that fails; the base model's library is kept in
`pdo_hub.base_library`. A variant pushed in the stock-transformers format (`export=` given: torchao int8
in safetensors) says `transformers`, shows the stock snippet first, and carries the measured speed and
fidelity of the stock load against pdo-hub's own model, in the body and in `model-index`. A variant
pushed as ONNX (`export` of format `onnx`) says `onnx` and carries the parity of ONNX Runtime against
the PyTorch variant (`pdo_hub.hub._card_onnx`).
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from pdo_hub.core.errors import RecipeError
from pdo_hub.hub import _card_onnx
from pdo_hub.optimizers.chart import CHART_NAME, has_chart
from pdo_hub.optimizers.report import CANDIDATE_COLUMNS, candidate_rows, example_benchmark

CARD_NAME = "README.md"
LIBRARY_NAME = "pdo-hub"
#: The record beside a variant written in another runtime's format, and its `format` for the
#: stock-transformers one (`pdo_hub.export.transformers_format`).
EXPORT_RECORD = "pdo_export.json"
TRANSFORMERS_FORMAT = "transformers-torchao"

# The Hub task (pipeline tag) of each transformers Auto class pdo-hub loads with.
_AUTO_CLASS_TASKS = {
    "AutoModel": "feature-extraction",
    "AutoModelForSequenceClassification": "text-classification",
    "AutoModelForCausalLM": "text-generation",
    "AutoModelForMaskedLM": "fill-mask",
    "AutoModelForTokenClassification": "token-classification",
    "AutoModelForQuestionAnswering": "question-answering",
    "AutoModelForSeq2SeqLM": "text2text-generation",
    "AutoModelForImageClassification": "image-classification",
    "AutoModelForMultipleChoice": "multiple-choice",
}
# torchvision model families by builder module; everything else is an image classifier.
_TORCHVISION_TASKS = {".detection": "object-detection", ".segmentation": "image-segmentation",
                      ".video": "video-classification", ".optical_flow": "other"}


def base_model_relation(report: Mapping[str, Any]) -> str | None:
    """The Hub's `base_model_relation` for a variant: `quantized` when int8 is involved.

    Factorized or pruned weights are a transformation of the base weights with no Hub-specific
    relation; `finetune` ("weights derived from the base") is the closest the Hub accepts.
    """
    applied = report.get("optimizations_applied") or []
    if not applied:
        return None
    return "quantized" if any(label.startswith("quantization") for label in applied) else "finetune"


def task_of(source: Mapping[str, Any]) -> str | None:
    """The Hub task of the model a source record describes (None when unknown)."""
    loader = source.get("loader") or {}
    if loader.get("library") == "transformers":
        return _AUTO_CLASS_TASKS.get(loader.get("auto_class"))
    builder = loader.get("builder") or str(loader.get("architecture", "")).removeprefix("torchvision:")
    if not builder or loader.get("library") not in ("torchvision", "torch"):
        return None
    try:
        import torchvision.models

        module = torchvision.models.get_model_builder(builder).__module__
    except (ImportError, ValueError):
        return None
    return next((task for part, task in _TORCHVISION_TASKS.items() if part in module), "image-classification")


def build_card(report: Mapping[str, Any], source: Mapping[str, Any], *, pushed_as: str | None = None,
               chart: bool | None = None, export: Mapping[str, Any] | None = None) -> ModelCard:
    """The card of one entry, or of the Hub repo it is pushed to.

    Args:
        report: The optimization report.
        source: The entry's source record (`kind`, `source_id`, `revision`, `loader`, `config_hash`, ...).
        pushed_as: The Hub repo id the variant is published under (`pdo-hub push`): the card then names
            that repo and tells how to load it from there.
        chart: Whether `pareto.png` lies beside the card (default: whenever the report has timed candidates).
        export: The export record (`pdo_export.json`) when the repo holds the variant in another format than
            pdo-hub's own (stock-transformers or ONNX): library, snippets and measurements follow it.

    Returns:
        The card; `card.save(path)` writes it, `card.data` is its metadata.

    Raises:
        RecipeError: the report or the source record is not a mapping, or a field has the wrong shape.
    """
    if not isinstance(report, Mapping) or not isinstance(source, Mapping):
        raise RecipeError("The optimization report and the source record must be JSON objects; the card cannot be built.")
    try:
        return _card(report, source, pushed_as, chart, export or {})
    except (ArithmeticError, AttributeError, LookupError, TypeError, ValueError) as err:
        # A published variant's report and source record were downloaded: a field of the wrong shape is a
        # damaged record, to be reported as one, not as a traceback from inside the card's tables.
        raise RecipeError(f"The optimization report or the source record is malformed ({type(err).__name__}: {err}); "
                          "the card cannot be built. Load the model again to rebuild the entry.") from err


def _card(report: Mapping[str, Any], source: Mapping[str, Any], pushed_as: str | None, chart: bool | None,
          export: Mapping[str, Any]) -> ModelCard:
    methods = sorted({m for c in report.get("candidates", []) if c.get("status") == "selected" for m in c["methods"]})
    stock, onnx = export.get("format") == TRANSFORMERS_FORMAT, _card_onnx.is_onnx(export)
    tags = ["pdo-hub", *methods, *(report.get("optimizations_applied") or []), *(["torchao", "int8"] if stock else []),
            *(_card_onnx.tags(export) if onnx else [])]
    loader = source.get("loader") or {}
    data: dict[str, Any] = {
        "tags": list(dict.fromkeys(tags)),
        "library_name": "transformers" if stock else _card_onnx.LIBRARY_NAME if onnx else LIBRARY_NAME,
        "pdo_hub": {
            "format": export.get("format", "pdo"),
            "source": {k: source[k] for k in ("kind", "source_id", "revision", "ref") if source.get(k)},
            "base_library": loader.get("library"),
            "config_hash": source.get("config_hash"),
            "cache_key_hash": source.get("key_hash"),
            "optimizations_applied": list(report.get("optimizations_applied") or []),
            **({"pushed_as": pushed_as} if pushed_as else {}),
        },
    }
    if source.get("kind") == "huggingface":
        data["base_model"] = source["source_id"]
        relation = base_model_relation(report)
        if relation:
            data["base_model_relation"] = relation
    task = task_of(source)
    if task:
        data["pipeline_tag"] = task
    results = eval_results(report, task) + _stock_results(export, task) + _card_onnx.results(export, task)
    if results:
        data.update(eval_results=results, model_name=pushed_as or f"{source.get('source_id', 'model')} (pdo-hub)")
    card_data = ModelCardData(**data)
    body = "\n".join(_body(report, source, pushed_as, has_chart(report) if chart is None else chart, export))
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n{body}\n")


def eval_results(report: Mapping[str, Any], task: str | None) -> list[EvalResult]:
    """The measured results of a report as `model-index` entries (size, speed, accuracy vs the original).

    The "dataset" is what the optimizer measured on (held-out calibration inputs, or the user's
    `eval_fn`), not a Hub dataset: the numbers compare the variant with its own base model.
    """
    size, perf, acc = (report.get(k) or {} for k in ("model_size_metrics", "performance_metrics", "accuracy_metrics"))
    metrics = [
        ("size_reduction_percent", "Size reduction vs the original (%)", size.get("size_reduction_percent")),
        ("speedup", f"Speedup vs the original (median, batch {perf.get('batch_size')}, {perf.get('threads')} threads)",
         perf.get("speedup")),
        ("accuracy", "Task accuracy (eval_fn)", acc.get("optimized_accuracy")),
        ("cosine_similarity", "Output cosine vs the original", acc.get("output_cosine")),
        ("accuracy_loss", f"Accuracy loss vs the original ({acc.get('metric')})", acc.get("accuracy_loss")),
    ]
    common = {"task_type": task or "other", "dataset_type": "pdo-hub-held-out",
              "dataset_name": f"Held-out inputs ({acc.get('evaluated_on', 'not measured')})"}
    return [EvalResult(metric_type=kind, metric_name=name, metric_value=float(value), **common)
            for kind, name, value in metrics if isinstance(value, (int, float)) and not isinstance(value, bool)]


def _stock_results(export: Mapping[str, Any], task: str | None) -> list[EvalResult]:
    """The stock-transformers load measured against pdo-hub's own model, as `model-index` entries."""
    measured = export.get("measured") or {}
    metrics = [("cosine_similarity", "Stock transformers output cosine vs pdo-hub's own model",
                measured.get("output_cosine_vs_pdo_hub")),
               ("speedup", "Stock transformers (eager torchao) speed vs pdo-hub's own model",
                measured.get("stock_speed_vs_pdo_hub"))]
    common = {"task_type": task or "other", "dataset_type": "pdo-hub-stock-load-check",
              "dataset_name": f"Stock load check ({measured.get('inputs', 'not measured')})"}
    return [EvalResult(metric_type=kind, metric_name=name, metric_value=float(value), **common)
            for kind, name, value in metrics if isinstance(value, (int, float)) and not isinstance(value, bool)]


def _body(report: Mapping[str, Any], source: Mapping[str, Any], pushed_as: str | None, chart: bool,
          export: Mapping[str, Any]) -> list[str]:
    name = source.get("source_id", report.get("model_name", "model"))
    applied = ", ".join(report.get("optimizations_applied") or []) or "none (the original was kept)"
    lines = [
        f"# {pushed_as or name} (pdo-hub optimized variant)",
        "",
        f"Optimized by pdo-hub from `{name}` "
        f"({source.get('kind')}, revision `{source.get('revision')}`). Optimizations applied: **{applied}**.",
        "",
        *_published(pushed_as, export),
        *_benchmark(report, chart),
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
        *_how_to_load_any(source, pushed_as, export),
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
    lines = _table(list(keys), [[perf.get(k) for k in keys]])
    timing = (report.get("selection") or {}).get("timing") or {}
    if timing.get("noise") is not None:
        lines += ["", f"The original and every candidate were timed in the same {timing.get('rounds')} interleaved rounds; "
                      f"the rounds disagreed by {100 * timing['noise']:.1f}% (median), and speedups closer than that "
                      "counted as equal when choosing."]
    return lines


def _benchmark(report: Mapping[str, Any], chart: bool) -> list[str]:
    """The seed's "Example Benchmark" block, then the Pareto chart."""
    block = example_benchmark(report)
    lines = ["## Example Benchmark", "", "```", *block, "```", ""] if block else []
    if chart:
        lines += [f"![Pareto]({CHART_NAME})", "",
                  "Size against speed of every candidate tried (colour: accuracy loss; star: the chosen one; "
                  "crosses: rejected; dashed: the Pareto front within the accuracy budget).", ""]
    return lines


def _candidates(report: Mapping[str, Any]) -> list[str]:
    rows = candidate_rows(report)
    if not rows:
        return ["No candidate was tried."]
    return _table(list(CANDIDATE_COLUMNS), rows)


def _published(pushed_as: str | None, export: Mapping[str, Any]) -> list[str]:
    if not pushed_as:
        return []
    if export.get("format") == TRANSFORMERS_FORMAT:
        return [f"Published as `{pushed_as}` with `pdo-hub push --format transformers`: stock `transformers` loads it "
                "with `torchao` installed, no pdo-hub needed. The int8 layers are torchao tensors "
                "(`quantization_config.quant_method: torchao`, `Int8DynamicActivationInt8WeightConfig` / "
                "`IntxWeightOnlyConfig`, version 2) stored in safetensors; nothing is pickled.", "",
                *_stock_measurements(export), ""]
    if _card_onnx.is_onnx(export):
        return _card_onnx.published(pushed_as, export, _table)
    return [
        f"Published as `{pushed_as}` with `pdo-hub push`. The weights are in pdo-hub's format (`model.safetensors` "
        "plus `pdo_recipe.json`, which says how to rebuild the int8 / factorized / pruned layers): stock "
        "`transformers` or `torch` cannot load them, `pdo_hub.from_pretrained` can (see below).",
        "",
    ]


def _stock_measurements(export: Mapping[str, Any]) -> list[str]:
    measured = export.get("measured") or {}
    if not measured:
        return ["The stock load was not measured."]
    latency = measured.get("latency_ms") or {}
    return [
        "### Stock transformers vs pdo-hub's own model (measured when pushed, side by side)",
        *_table(["runtime", "latency (ms)", "output cosine vs pdo-hub"],
                [["pdo-hub (`pdo_hub.from_pretrained` of the pdo format)", latency.get("pdo_hub"), 1.0],
                 ["stock transformers + torchao, eager", latency.get("stock_transformers"),
                  measured.get("output_cosine_vs_pdo_hub")]]),
        "",
        f"Inputs: {measured.get('inputs')}; {measured.get('threads')} threads. Stock speed / pdo-hub speed = "
        f"{measured.get('stock_speed_vs_pdo_hub')}: " + ("torchao's eager CPU int8 path is slower than pdo-hub's "
        "kernels; `torch.compile(model)` narrows the gap after a per-shape compile." if (measured.get(
            "stock_speed_vs_pdo_hub") or 0) < 1 else "the stock load is as fast or faster."),
    ]


def _how_to_load_any(source: Mapping[str, Any], pushed_as: str | None, export: Mapping[str, Any]) -> list[str]:
    if export.get("format") == TRANSFORMERS_FORMAT:
        return _how_to_load_stock(source, pushed_as, export)
    if _card_onnx.is_onnx(export):
        return _card_onnx.how_to_load(source, pushed_as, export)
    return _how_to_load(source, pushed_as)


def _how_to_load_stock(source: Mapping[str, Any], pushed_as: str | None, export: Mapping[str, Any]) -> list[str]:
    auto_class = (source.get("loader") or {}).get("auto_class", "AutoModel")
    repo = pushed_as or "<this folder>"
    return [
        "With stock transformers (`pip install transformers torchao`; no pdo-hub):",
        "```python",
        f"from transformers import {auto_class}",
        f"model = {auto_class}.from_pretrained({repo!r})",
        "```",
        "With pdo-hub, the same repo loads as is (no optimizer runs):",
        "```python",
        "import pdo_hub",
        f"model = pdo_hub.from_pretrained({repo!r})",
        "```",
    ]


def _how_to_load(source: Mapping[str, Any], pushed_as: str | None) -> list[str]:
    if pushed_as:
        return [
            "```python",
            "import pdo_hub",
            f"model = pdo_hub.from_pretrained({pushed_as!r})",
            "```",
            "The published variant is downloaded and used as is: no optimizer runs, and a `config=` argument "
            "cannot change it. Later loads come from the local optimized cache, offline too "
            "(`HF_HUB_OFFLINE=1` or `PDO_HUB_OFFLINE=1`).",
        ]
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
