"""Why an intact cache entry cannot be used by this install: the user fixes the install, not the entry.

An entry whose files match their manifest is exactly what was built. If this pdo-hub still cannot load
it because the recipe is newer than it reads, names a method it does not have, or needs an optional
package that is not installed, rebuilding would only hide the problem (and set aside a good entry), so
the flow leaves it in place and says what to upgrade or install.

An entry whose int8 kernels need an instruction set this CPU lacks (`wrong_cpu`) is fine for the
machines it was built for; only this one needs another variant, which the flow builds online.
"""

from __future__ import annotations

from pdo_hub.cache import CacheEntry
from pdo_hub.core.errors import CacheError, UnsupportedCpuError
from pdo_hub.optimizers import available_methods
from pdo_hub.optimizers.recipe import RECIPE_VERSION, format_needed
from pdo_hub.optimizers.storage import RECIPE_NAME

_UPGRADE = "upgrade pdo-hub (pip install -U pdo-hub) to use it"


def incompatibility(entry: CacheEntry) -> str | None:
    """Why the entry's recipe needs a newer pdo-hub (a newer recipe format, or a method this one does not
    have), as the end of a sentence; None when this pdo-hub can replay it. A malformed recipe is left to
    the load, which fails and gets the entry rebuilt."""
    if RECIPE_NAME not in entry.manifest["files"]:
        return None
    try:
        recipe = entry.read_json(RECIPE_NAME)
    except CacheError:
        return None
    if not isinstance(recipe, dict):
        return None
    version, records = recipe.get("version"), recipe.get("records")
    records = records if isinstance(records, list) else []
    if isinstance(version, int) and not isinstance(version, bool) and (needed := format_needed(version, records)) > RECIPE_VERSION:
        return (f"was written by a newer pdo-hub (recipe format {needed}; this one reads up to {RECIPE_VERSION}): "
                f"{_UPGRADE}")
    names = [r.get("method") for r in records if isinstance(r, dict)]
    unknown = sorted({name for name in names if isinstance(name, str)} - set(available_methods()))
    if unknown:
        return (f"needs the optimization method(s) {', '.join(map(repr, unknown))}, which this pdo-hub does not "
                f"have (it was written by a newer pdo-hub): {_UPGRADE}")
    return None


def missing_package(err: BaseException) -> str | None:
    """When a load failed because a package is not installed (an ImportError anywhere in the chain, as
    `quanto_int8` raises without optimum-quanto), what to install, as the end of a sentence; else None."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, ImportError):
            break
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    if not isinstance(current, ImportError):
        return None
    if current is not err:  # pdo-hub's own message names the package and the pip command
        return f"needs a package that is not installed: {err}. Install it and retry"
    module = current.name or "?"
    return (f"needs the Python module {module!r}, which cannot be imported ({current}). Install the package that "
            "provides it and retry")


def wrong_cpu(err: BaseException) -> UnsupportedCpuError | None:
    """The `UnsupportedCpuError` behind a failed load (its int8 kernels would saturate on this CPU), else None."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, UnsupportedCpuError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None
