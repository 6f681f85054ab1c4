"""The public loading API: `from_pretrained`, pdo-hub's Auto classes, `get_model`, `intercept`.

Layer 2: thin wrappers over `pdo_hub.hub`, shaped like the transformers and torchvision calls they
replace, so switching is a change of import.
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from pdo_hub.core.config import PostDownloadOptimizationConfig
from pdo_hub.hub.intercept import intercept
from pdo_hub.hub.torchvision_models import get_model
from pdo_hub.hub.transformers_models import from_pretrained as _hub_from_pretrained

ConfigLike = PostDownloadOptimizationConfig | dict | str | None


def from_pretrained(repo_id: str, *, revision: str | None = None, config: ConfigLike = None, auto_class: str = "AutoModel",
                    cache_dir: str | None = None, local_files_only: bool = False, token: str | bool | None = None,
                    **kwargs: Any) -> nn.Module:
    """The optimized model of a Hub repo: from the optimized cache, or fetched, optimized and cached once.

    Args:
        repo_id: Hub repo id, e.g. `sentence-transformers/all-MiniLM-L6-v2`.
        revision: Branch, tag or commit sha (default `main`); the cache is keyed by the commit sha.
        config: Optimization config: object, mapping, preset name (`conservative`...) or YAML path.
        auto_class: transformers Auto class to load the original with (`AutoModelForSequenceClassification`...).
        cache_dir: Hub client cache for the original files (default `HF_HUB_CACHE`).
        local_files_only: No network: load from the optimized cache or raise `OfflineCacheMissError`.
        token: Hub token for private or gated repos (used for downloads only, never stored).
        **kwargs: transformers `from_pretrained` arguments (e.g. `num_labels`), part of the cache key; also
            pdo-hub's `calibration_data=` (a text file, sentences or tokenized batches from your domain) and
            `eval_fn=` (your task metric `eval_fn(model) -> accuracy`), see `pdo_hub.hub.from_pretrained`.

    Returns:
        The optimized `nn.Module`; its report is `model.pdo_report`. A repo made by `pdo-hub push` loads as
        published; one pushed with `--format onnx` returns an ONNX Runtime model (`pdo_hub.export.OnnxRuntimeModel`,
        its parity report in `model.pdo_export`).

    Example:
        >>> model = pdo_hub.from_pretrained("sentence-transformers/all-MiniLM-L6-v2")
        >>> model.pdo_report["optimizations_applied"]
    """
    return _hub_from_pretrained(repo_id, revision=revision, config=config, auto_class=auto_class, cache_dir=cache_dir,
                                local_files_only=local_files_only, token=token, **kwargs)


class _PdoAutoClass:
    """Base of pdo-hub's Auto classes: `from_pretrained` with the transformers signature."""

    _auto_class = "AutoModel"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError(f"{type(self).__name__} is not instantiated: use {type(self).__name__}.from_pretrained(repo_id).")

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str, *model_args: Any, config: Any = None,
                        pdo_config: ConfigLike = None, **kwargs: Any) -> nn.Module:
        """Like `transformers.{Auto class}.from_pretrained`, returning the optimized model.

        Args:
            pretrained_model_name_or_path: Hub repo id, or a local transformers save folder.
            config: A transformers `PretrainedConfig` (as in transformers), or an optimization config.
            pdo_config: Optimization config (takes precedence over an optimization config in `config`).
            **kwargs: As in transformers (`revision`, `cache_dir`, `token`, `local_files_only`, `num_labels`, ...).
        """
        if model_args:
            raise TypeError("pdo-hub Auto classes take no positional model arguments: pass keyword arguments.")
        model_config = None
        if config is not None and hasattr(config, "to_dict") and not isinstance(config, (dict, PostDownloadOptimizationConfig)):
            model_config = config
        elif pdo_config is None:
            pdo_config = config
        import os

        from pdo_hub.hub import load_local

        name = str(pretrained_model_name_or_path)
        if os.path.isdir(name):
            return load_local(name, auto_class=cls._auto_class, config=pdo_config,
                              local_files_only=bool(kwargs.get("local_files_only", False)))
        return _hub_from_pretrained(name, config=pdo_config, auto_class=cls._auto_class, model_config=model_config, **kwargs)


def _auto(name: str) -> type:
    return type(name, (_PdoAutoClass,), {"_auto_class": name, "__doc__": f"pdo-hub's `transformers.{name}`: optimized models.",
                                         "__module__": __name__})


AutoModel = _auto("AutoModel")
AutoModelForSequenceClassification = _auto("AutoModelForSequenceClassification")
AutoModelForCausalLM = _auto("AutoModelForCausalLM")
AutoModelForMaskedLM = _auto("AutoModelForMaskedLM")
AutoModelForTokenClassification = _auto("AutoModelForTokenClassification")
AutoModelForQuestionAnswering = _auto("AutoModelForQuestionAnswering")
AutoModelForSeq2SeqLM = _auto("AutoModelForSeq2SeqLM")
AutoModelForImageClassification = _auto("AutoModelForImageClassification")
AutoModelForMultipleChoice = _auto("AutoModelForMultipleChoice")

AUTO_CLASSES = (
    "AutoModel", "AutoModelForSequenceClassification", "AutoModelForCausalLM", "AutoModelForMaskedLM",
    "AutoModelForTokenClassification", "AutoModelForQuestionAnswering", "AutoModelForSeq2SeqLM",
    "AutoModelForImageClassification", "AutoModelForMultipleChoice",
)

__all__ = ["from_pretrained", "get_model", "intercept", *AUTO_CLASSES]
