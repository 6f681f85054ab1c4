"""Which int8 dot-product instructions this CPU's quantized kernels use: whether full-range int8 is exact here.

x86 int8 GEMMs multiply unsigned by signed bytes. With VNNI (AVX512-VNNI, AVX-VNNI; every AMX CPU also
has AVX512-VNNI) one instruction sums four products in int32. Without it, the kernels use `vpmaddubsw`,
which adds pairs of products into int16 and saturates at 32767: two full-range products
(255 x 127 x 2 = 64770) overflow and the layer's output is wrong. torch.ao's x86 default therefore
quantizes activations to 7 bits. Measured on this project's development CPU with the libraries capped
below VNNI (FBGEMM_ENABLE_INSTRUCTIONS=AVX2, ONEDNN_MAX_CPU_ISA=AVX2 or AVX512_CORE): a full-range
dynamic Linear was off by 49% of its output range and the per-token `torch._int_mm` by 99%, while
|weights| <= 64 stayed exact (for oneDNN's AVX-512 GEMV, |activations| <= 64: `_int8_linear`).

The libraries (`KERNELS`): fbgemm (torch.ao's x86 Linear, and its convs on CPUs without AVX512-VNNI) has
VNNI kernels for AVX512-VNNI only; oneDNN (`torch._int_mm`, x86 convs on AVX512-VNNI CPUs) also uses
AVX-VNNI. Either can be capped below what the CPU has by an environment variable, which `vnni_isas`
honours, so a cap (or a test) sees the same answer the kernels act on.
"""

from __future__ import annotations

import functools
import os

import torch

#: Per int8 kernel library, the instruction sets with which it accumulates full-range products exactly.
KERNELS: dict[str, tuple[str, ...]] = {
    "fbgemm": ("avx512_vnni",),
    "onednn": ("avx512_vnni", "avx_vnni", "amx_int8"),
}
#: CPU flags the optimization report shows (int8 and float kernels' instruction sets).
REPORTED_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8")
# Library caps (environment) below VNNI. fbgemm reads FBGEMM_ENABLE_INSTRUCTIONS; oneDNN reads
# ONEDNN_MAX_CPU_ISA (or the older DNNL_MAX_CPU_ISA). Other values do not cap below VNNI.
_FBGEMM_NO_VNNI = {"AVX2", "AVX512", "AVX512_256"}
_ONEDNN_NO_VNNI = {"SSE41", "AVX", "AVX2", "AVX512_CORE"}
_ONEDNN_AVX2_VNNI = {"AVX2_VNNI", "AVX2_VNNI_2"}
# cpuinfo (the library fbgemm and torch consult) spells some flags differently from /proc/cpuinfo.
_PROC_NAMES = {"fma3": "fma", "avx512_f": "avx512f"}


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's instruction-set flags, as /proc/cpuinfo names them (`avx512_vnni`, `avx_vnni`, `amx_int8`...).

    From torch's cpuinfo, the source fbgemm consults, falling back to /proc/cpuinfo; empty when neither
    answers (then no VNNI is assumed: the safe side).
    """
    try:
        capabilities = torch._C._cpu._get_cpu_capability()
        return frozenset(_PROC_NAMES.get(name, name) for name, value in capabilities.items() if value is True)
    except (AttributeError, RuntimeError):  # a torch without the private helper
        pass
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def vnni_isas(kernel: str) -> tuple[str, ...]:
    """The instruction sets of `KERNELS[kernel]` that the library will use here (none: int16 accumulation)."""
    present = tuple(isa for isa in KERNELS[kernel] if isa in cpu_flags())
    if kernel == "fbgemm" and os.environ.get("FBGEMM_ENABLE_INSTRUCTIONS", "").upper() in _FBGEMM_NO_VNNI:
        return ()
    if kernel == "onednn":
        cap = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "").upper()
        if cap in _ONEDNN_NO_VNNI:
            return ()
        if cap in _ONEDNN_AVX2_VNNI:
            return tuple(isa for isa in present if isa == "avx_vnni")
    return present


def int8_environment() -> dict[str, str]:
    """Per int8 kernel library, the instruction set its int8 products run on here (the report's `int8_kernels`).

    oneDNN takes AMX tiles for its int8 GEMMs where the CPU has them and no `ONEDNN_MAX_CPU_ISA` cap
    below AMX is set; otherwise each library's VNNI instruction set, or int16 pairs without VNNI.
    """
    found = {}
    for kernel in KERNELS:
        isas = vnni_isas(kernel)
        if kernel == "onednn" and "amx_int8" in isas and onednn_allows_amx():
            found[kernel] = "amx_int8"
        else:
            found[kernel] = next((isa for isa in isas if isa != "amx_int8"), isas[0] if isas else "int16 pairs (no VNNI): full-range int8 saturates")
    return found


def onednn_allows_amx() -> bool:
    """No `ONEDNN_MAX_CPU_ISA` cap below AMX in this process (pdo-hub's own int8 op follows the same cap)."""
    cap = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "ALL").upper()
    return cap in ("ALL", "DEFAULT") or "AMX" in cap


def reported_flags() -> list[str]:
    return [flag for flag in REPORTED_FLAGS if flag in cpu_flags()]
