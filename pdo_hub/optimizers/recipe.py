"""The recipe: the ordered, versioned JSON record of what was applied to a model.

It is what makes an optimized model reloadable without pickle: rebuild the original architecture,
replay each record's `restore` (structure only), then load the tensors strictly.

Format versions: 1, the first; 2 adds `int8_isa` to int8 records, the instruction sets their kernels
assume (`methods/_int8_isa.py`). A version-1 reader would ignore that field and could load a full-range
int8 variant on a CPU where it saturates, so it must refuse version 2; version-1 recipes still load here,
their int8 assumptions inferred from the records. 3: a record may hold state that a version-2 reader
cannot rebuild (int8 activation tables, `methods/_int8_lookup.py`); such a record says so in
`FORMAT_NEEDED`.

A recipe is written in the oldest version that can replay it: the version it was read as (2 for a new
one), raised to what its records need. So a variant without tables still loads in a version-2 reader,
and one with them is refused there as "written by a newer pdo-hub: upgrade" instead of failing to load
its tensors with an error about the architecture.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from ..core.errors import RecipeError, UnknownMethodError

RECIPE_FORMAT = "pdo-hub-recipe"
RECIPE_VERSION = 3  # the newest format this pdo-hub reads
NEW_RECIPE_VERSION = 2  # what a new recipe is written as, unless a record needs more
FORMAT_NEEDED = "format_needed"  # a record's key: the recipe version a reader must understand to replay it


def format_needed(version: int, records: list[Any]) -> int:
    """`version` raised to the newest format any record says it needs (`FORMAT_NEEDED`); what a reader
    must understand to replay the records."""
    needed = (record.get(FORMAT_NEEDED) for record in records if isinstance(record, dict))
    return max([version, *(n for n in needed if isinstance(n, int) and not isinstance(n, bool))])


@dataclasses.dataclass
class Recipe:
    records: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    version: int = NEW_RECIPE_VERSION

    @property
    def written_version(self) -> int:
        """The version `to_dict` writes: `version`, raised to what any record needs."""
        return format_needed(self.version, self.records)

    @property
    def methods(self) -> list[str]:
        """Method names in the order they were first applied."""
        return list(dict.fromkeys(record["method"] for record in self.records))

    def to_dict(self) -> dict[str, Any]:
        return {"format": RECIPE_FORMAT, "version": self.written_version, "records": self.records}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Any) -> "Recipe":
        if not isinstance(data, dict) or data.get("format") != RECIPE_FORMAT:
            raise RecipeError(f"This is not a pdo-hub recipe (expected format '{RECIPE_FORMAT}').")
        version = data.get("version")
        if not isinstance(version, int) or version > RECIPE_VERSION:
            raise RecipeError(
                f"Recipe format version {version!r} is newer than this pdo-hub understands (up to {RECIPE_VERSION}). "
                "Upgrade pdo-hub to load this model."
            )
        records = data.get("records")
        if not isinstance(records, list) or not all(isinstance(r, dict) and isinstance(r.get("method"), str) for r in records):
            raise RecipeError("The recipe's records must be a list of objects, each with a 'method' name.")
        recipe = cls(records=records, version=version)
        if recipe.written_version > RECIPE_VERSION:
            raise RecipeError(
                f"A record of this recipe needs format version {recipe.written_version}, newer than this pdo-hub "
                f"understands (up to {RECIPE_VERSION}). Upgrade pdo-hub to load this model."
            )
        return recipe

    @classmethod
    def from_json(cls, text: str) -> "Recipe":
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as err:  # RecursionError: nesting deeper than the parser goes
            raise RecipeError(f"The recipe is not valid JSON: {err}.") from err
        return cls.from_dict(data)

    def check_methods(self) -> None:
        """Fail early, naming the method, when a record names a method this install does not have."""
        from .registry import get_method

        for record in self.records:
            try:
                get_method(record["method"])
            except UnknownMethodError as err:
                raise RecipeError(f"The recipe names method '{record['method']}' which cannot be replayed: {err}") from err
