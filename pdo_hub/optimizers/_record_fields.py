"""Numbers read from a recipe record before they size a layer.

A recipe may come from a downloaded file, so a record can hold anything JSON can: a rank of 10**9 would
allocate a layer of tens of gigabytes before the strict load could notice that no weights fit it. Each
size is checked against the layer it rebuilds.
"""

from __future__ import annotations

from typing import Any

from ..core.errors import RecipeError


def record_int(record: dict[str, Any], key: str, low: int, high: int, *, default: int | None = None) -> int:
    """`record[key]` as an int in [low, high] (an integral float such as 8.0 is accepted).

    Raises:
        RecipeError: the value is missing (with no default), not an integer, or out of range.
    """
    value = record.get(key, default)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise RecipeError(
            f"{record.get('method')}: {key}={value!r} in the recipe does not fit the layer it rebuilds (allowed: "
            f"integers from {low} to {high}); the recipe is damaged or was made for another architecture."
        )
    return value
