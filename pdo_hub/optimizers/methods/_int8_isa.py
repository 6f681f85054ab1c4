"""The instruction-set assumptions of a record's int8 kernels: written when a method builds, checked on load.

A variant may be loaded on another machine (`pdo-hub serve`, `pdo-hub push`, a shared cache), and
full-range int8 is exact only where the kernels accumulate with VNNI (`pdo_hub.core.cpu`). So every int8
record says which case it is, under `int8_isa`:

- `{"portable": true, "operands": ...}`: no pair of int8 products can overflow an int16 sum (7-bit
  weights, or 7-bit activations as in torch.ao's x86 default), so it is exact on every x86 CPU;
- `{"portable": false, "needs": {"fbgemm": ["avx512_vnni"], ...}, "built_on": {...}}`: full-range int8
  on each named library, exact only where that library has one of the listed instruction sets.

Methods build portable records unless a run asks for full range (`ctx.extras["portable_int8"] = False`)
and this CPU has VNNI for every library involved. Records written before the field existed (recipe
format 1) are judged by what they hold: the method passes the libraries they used at full range.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Iterable

from ...core import cpu
from ...core.errors import RecipeError, UnsupportedCpuError

logger = logging.getLogger(__name__)
FIELD = "int8_isa"
_NAMES = {"avx512_vnni": "AVX512-VNNI", "avx_vnni": "AVX-VNNI", "amx_int8": "AMX-INT8"}


def wants_portable(ctx, kernels: Iterable[str], method: str) -> bool:
    """Whether to build portable int8: yes unless asked otherwise and every library has VNNI here.

    A full-range build on a CPU without VNNI would be measured (and stored) saturated, so it is never made.
    """
    if ctx.extras.get("portable_int8", True):
        return True
    lacking = [kernel for kernel in kernels if not cpu.vnni_isas(kernel)]
    if lacking:
        ctx.note(logger, f"{method}: full-range int8 was asked for, but {', '.join(lacking)} has no VNNI on this CPU; built portable int8.")
    return bool(lacking)


def portable(operands: str) -> dict[str, Any]:
    """The field of a record whose int8 operands cannot overflow (`operands` says how, for people)."""
    return {"portable": True, "operands": operands}


def full_range(kernels: Iterable[str]) -> dict[str, Any]:
    """The field of a record with full-range int8 on `kernels` (libraries of `cpu.KERNELS`)."""
    return {"portable": False, "needs": {kernel: list(cpu.KERNELS[kernel]) for kernel in sorted(set(kernels))},
            "built_on": cpu.int8_environment()}


def is_portable(record: dict[str, Any]) -> bool:
    field = record.get(FIELD)
    return isinstance(field, dict) and field.get("portable") is True


def needs(record: dict[str, Any], legacy_kernels: Iterable[str] = ()) -> dict[str, list[str]]:
    """{library: instruction sets, any of which it must use here} for the record's int8 kernels to be exact."""
    field = record.get(FIELD)
    if field is None:  # written before the field: the method says which libraries ran at full range
        return {kernel: list(cpu.KERNELS[kernel]) for kernel in legacy_kernels}
    if not isinstance(field, dict) or not isinstance(field.get("portable"), bool):
        raise RecipeError(f"{record.get('method')}: the record's '{FIELD}' must be an object with a boolean 'portable'.")
    if field["portable"]:
        return {}
    required = field.get("needs")
    if not isinstance(required, dict) or not all(isinstance(v, list) and all(isinstance(i, str) for i in v) for v in required.values()):
        raise RecipeError(f"{record.get('method')}: the record's '{FIELD}.needs' must map libraries to lists of instruction sets.")
    unknown = sorted(set(required) - set(cpu.KERNELS))
    if unknown:
        raise RecipeError(f"{record.get('method')}: the recipe's int8 kernels need {unknown}, which this pdo-hub does not "
                          "know: it was written by a newer pdo-hub; upgrade pdo-hub (pip install -U pdo-hub) to use it.")
    return required


def check(record: dict[str, Any], method: str, legacy_kernels: Iterable[str] = ()) -> None:
    """Raise `UnsupportedCpuError` when the record's int8 kernels would saturate on this CPU."""
    missing = {kernel: isas for kernel, isas in needs(record, legacy_kernels).items()
               if not set(isas) & set(cpu.vnni_isas(kernel))}
    if not missing:
        return
    wanted = " and ".join(f"{kernel} with {' or '.join(_NAMES.get(i, i) for i in isas)}" for kernel, isas in missing.items())
    built = (record.get(FIELD) or {}).get("built_on")
    origin = f" (it was built where {built})" if isinstance(built, dict) else ""
    raise UnsupportedCpuError(
        f"{method}: this variant computes in full-range int8, exact only on CPUs whose int8 kernels run {wanted}"
        f"{origin}. This CPU's do not ({_here()}): its int8 layers would overflow and return wrong outputs here. "
        "Use a variant built for this CPU: online, pdo_hub.from_pretrained (or `pdo-hub optimize`) sets the cached "
        "entry aside and rebuilds it as a portable variant (7-bit int8 operands, exact on every x86 CPU); a "
        "published variant has to be pushed again by a current pdo-hub, whose int8 variants are portable."
    )


def _here() -> str:
    caps = [f"{var}={os.environ[var]}" for var in ("FBGEMM_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA") if var in os.environ]
    text = f"CPU flags: {', '.join(cpu.reported_flags()) or 'unknown'}"
    return text + (f"; capped by {', '.join(caps)}" if caps else "")
