"""The example inputs an ONNX export traces and calibrates with (`pdo-hub export` and `pdo-hub push --format onnx`).

They are the inputs pdo-hub calibrated the variant with: the same built-in (or given) sentences for
transformers models, synthesized images at the traced size for vision models. Shared by the CLI and
`push_entry` so both exports of one variant are built from the same inputs.
"""

from __future__ import annotations

from typing import Any

from pdo_hub.export._variant import Variant


def calibration_inputs(variant: Variant, calibration: str | None = None) -> list[Any]:
    """Batch-1 inputs of `variant`: `calibration` (a text file) encoded for text models, else built-in ones.

    Vision models always get pdo-hub's built-in images: an image folder chose the variant but is not
    read again for the export.
    """
    from pdo_hub.hub import examples

    count = int((variant.report.get("config") or {}).get("calibration_samples") or 32)
    if variant.is_transformers:
        from transformers import AutoTokenizer

        from pdo_hub.hub.calibration import read_calibration

        texts = read_calibration(calibration).texts if calibration else None
        return examples.text_inputs(AutoTokenizer.from_pretrained(str(variant.folder)), variant.model, count, texts)
    return examples.image_inputs(count, size=image_size(variant))


def image_size(variant: Variant) -> int:
    """The image side the variant was traced with (recorded by int8 graphs), else torchvision's 224."""
    for record in variant.model.pdo_recipe.records:
        for spec in record.get("inputs") or []:  # [{"shape": [1, 3, 224, 224], "dtype": ...}]
            shape = spec.get("shape") if isinstance(spec, dict) else None
            if isinstance(shape, list) and len(shape) == 4 and isinstance(shape[-1], int):
                return shape[-1]
    return 224
