"""`TokenInt8Linear`'s forward as one compiled op, built on this machine once per torch and CPU.

Why: in ATen ops, a per-token int8 Linear is about a dozen small ops around its GEMM (absolute value,
row maximum, clamp, two divisions, rounding, casts, two scalings, the bias). For a batch-1 request of a
few dozen tokens their dispatch and their passes over memory cost as much as the int8 GEMM itself, even
inside a frozen trace. `_token_int8_kernel.cpp` does the quantization in one vectorized pass per row
and the dequantization in one pass per output, around the same `at::_int_mm` (oneDNN) GEMM.

Results are bit-identical to the ATen sequence (the same operations in the same order, no fused
multiply-adds; a test compares them), so which one runs changes no stored variant, recipe, trace check
or accuracy figure; only speed.

For inputs of up to 512 tokens on CPUs with AVX512-VNNI, the op also runs its own int8 GEMM on weights
packed once per layer (`packed_weights`, kept beside the layer, never saved), with the dequantization in
registers: at batch-1 request sizes oneDNN's per-call set-up costs more than the multiply-adds, and up to
512 rows the packed loop was measured faster than oneDNN's GEMM too. On CPUs with AMX-INT8 (built with
it, and granted the tile state by Linux), the same packed weights run on the tile units from 32 tokens,
at any size: `torch._int_mm` reaches oneDNN's gemm API, which does not use the tiles (the figures are in
the .cpp). Integer products are exact, so every path's int32 sums are oneDNN's. A `ONEDNN_MAX_CPU_ISA`
cap below VNNI (`core.cpu`) turns the packed paths off, and one below AMX the tiles, so a capped process
behaves as a CPU without them would. The report's `per_token_int8_kernel` says which GEMMs ran.

How: the C++ source ships in the package. The first call in a process loads the library from the
kernel cache (`PDO_HUB_KERNEL_CACHE`, default `$XDG_CACHE_HOME/pdo_hub_kernels`, else
`~/.cache/pdo_hub_kernels`: beside the optimized cache, never inside it), building it first when
absent with the system C++ compiler (`CXX`, else `c++` or `g++`) against the installed torch's headers
and libraries, as one translation unit (12-13 s on a 2-core EPYC), once. Concurrent
processes wait on a file lock for one build, which is written to a temporary name and renamed. The
file's key covers the sources, torch's version and location, the compiler and its flags, and the CPU's
flags (the build targets this CPU, `-march=native`).

The same library holds the small-input attention op (`_small_attention_kernel.cpp`, used by
`_small_attention`), the int8 table lookup (`_int8_lookup_kernel.cpp`, used by `_int8_lookup`), and the
layer's forward followed by a residual add and LayerNorm (`per_token_int8_linear_add_norm`, used by `_fused_norm`).
Without a compiler or torch's headers, or when the build fails, the ATen sequence
runs (and the plain attention ops), with one warning per process; `PDO_HUB_FUSED_KERNEL=0` chooses it
outright.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Callable

import torch

from ...core import cpu
from ...core.constants import user_cache_home
from ..modules import version_counter

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_suffix(".cpp")
#: Built into the same library: the small-input attention op (`_small_attention`, on AVX-512 builds) and the
#: int8 table lookup (`_int8_lookup`).
SOURCES = (SOURCE, Path(__file__).with_name("_small_attention_kernel.cpp"), Path(__file__).with_name("_int8_lookup_kernel.cpp"))
# -fopenmp: at::parallel_for is inline OpenMP; the library links the libgomp torch has already loaded.
FLAGS = ("-O3", "-march=native", "-fopenmp", "-std=c++20", "-fPIC", "-shared", "-ffp-contract=off")
_BUILD_TIMEOUT_S = 600
_LOCK = threading.Lock()
_loaded: dict[str, object] = {}  # "op": the op or None, "why": why not (once decided in this process)


class KernelUnavailable(RuntimeError):
    """The fused kernel cannot be built or loaded here (the message says why and what to do)."""


def op() -> Callable | None:
    """`torch.ops.pdo_hub.per_token_int8_linear`, built and loaded on first use; None: use ATen ops."""
    if "op" not in _loaded:
        with _LOCK:
            if "op" not in _loaded:
                _loaded.update(_decide())
    return _loaded["op"]


def packed_weights(owner: object, weight_t: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(packed weights, int32 column sums) of `weight_t` for the op's VNNI GEMM; packed None: not here (the
    sums still serve oneDNN's GEMM); (None, None): no op, or a trace is recording.

    Packed on first use and kept on `owner` (the layer or group that holds `weight_t`), valid while it
    holds the same, unmodified tensor. Never packed while a trace records: the packing would be
    replayed on every call; a trace made before the first eager call runs oneDNN's GEMM instead.
    """
    cached = owner.__dict__.get("_packed_weights")
    if cached is not None and cached[0] is weight_t and cached[1] == version_counter(weight_t):
        return cached[2], cached[3]
    fused = op()
    if fused is None or torch.jit.is_tracing():
        return None, None
    with torch.no_grad():
        # The column sums serve oneDNN's GEMM too: asymmetric rows take their zero point's share off with them.
        sums = weight_t.sum(0, dtype=torch.int32)
        packed = torch.ops.pdo_hub.pack_weights(weight_t) if "avx512_vnni" in cpu.vnni_isas("onednn") else None
        packed = packed if packed is not None and packed.numel() else None
    owner.__dict__["_packed_weights"] = (weight_t, version_counter(weight_t), packed, sums)
    return packed, sums


def status() -> str:
    """What per-token int8 layers run on in this process, for reports: `fused (its GEMMs)`, `aten ops (why)`,
    or `not used yet`."""
    if "op" not in _loaded:
        return "not used yet"
    if _loaded["op"] is None:
        return f"aten ops ({_loaded['why']})"
    if "avx512_vnni" not in cpu.vnni_isas("onednn"):
        return "fused (GEMM: oneDNN)"
    vnni_max_rows, amx_min_rows = torch.ops.pdo_hub.gemm_limits()  # the library's own limits
    if _loaded["amx"]:
        return f"fused (GEMM: AVX512-VNNI below {amx_min_rows} tokens, AMX-INT8 tiles from {amx_min_rows})"
    return f"fused (GEMM: AVX512-VNNI up to {vnni_max_rows} tokens, oneDNN above)"


def cache_dir() -> Path:
    configured = os.environ.get("PDO_HUB_KERNEL_CACHE")
    if configured:
        return Path(configured).expanduser()
    return user_cache_home() / "pdo_hub_kernels"


def library_path() -> Path:
    """Where this machine's build of the kernel lives (it may not exist yet)."""
    return cache_dir() / f"token_int8-{_key()}.so"


def _decide() -> dict:
    if os.environ.get("PDO_HUB_FUSED_KERNEL", "1").strip() == "0":
        return {"op": None, "why": "PDO_HUB_FUSED_KERNEL=0"}
    try:
        fused = _load()
        return {"op": fused, "why": "", "amx": bool(torch.ops.pdo_hub.allow_amx(cpu.onednn_allows_amx()))}
    except KernelUnavailable as err:
        logger.warning("pdo-hub's fused per-token int8 kernel is unavailable: %s. Per-token int8 layers run as ATen "
                       "ops instead (same results, slower on small inputs).", err)
        return {"op": None, "why": str(err)}


def _load() -> Callable:
    from filelock import FileLock, Timeout

    target = library_path()
    if not target.exists():
        try:
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            with FileLock(str(target) + ".lock", timeout=_BUILD_TIMEOUT_S):
                if not target.exists():  # another process may have built it while this one waited
                    _build(target)
        except (OSError, Timeout) as err:
            raise KernelUnavailable(f"cannot build into {target.parent} ({err}); set PDO_HUB_KERNEL_CACHE to a "
                                    "writable folder") from err
    try:
        torch.ops.load_library(str(target))
    except (OSError, RuntimeError) as err:
        raise KernelUnavailable(f"{target} does not load ({err}); delete it to rebuild") from err
    return torch.ops.pdo_hub.per_token_int8_linear


def _build(target: Path, flags: tuple[str, ...] = FLAGS) -> None:
    """Compile `SOURCES` into `target` (`flags`: another target CPU's build, for tests of its code paths).

    One compiler process builds all three as one translation unit (`SOURCES` in order: the first sets ATen's
    CPU capability before any ATen header): parsing torch's headers is most of each compile, and one parse
    instead of three took the build on a 2-core EPYC from 21-27 s (three processes at once) to 12-13 s.
    """
    compiler = _compiler()
    torch_dir = Path(torch.__file__).parent
    if not (torch_dir / "include" / "torch" / "library.h").exists():
        raise KernelUnavailable(f"this torch install has no C++ headers ({torch_dir / 'include'})")
    _remove_abandoned(target.parent)
    partial = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    logger.info("Building pdo-hub's kernel library (per-token int8 and small-input attention; once per machine and torch "
                "version) into %s", target)
    with tempfile.TemporaryDirectory(prefix="pdo-hub-kernel-") as scratch:
        unit = Path(scratch) / "kernels.cpp"
        unit.write_text("".join(f'#include "{source}"\n' for source in SOURCES))
        command = [compiler, *flags, f"-D_GLIBCXX_USE_CXX11_ABI={int(torch.compiled_with_cxx11_abi())}", f"-I{torch_dir / 'include'}",
                   str(unit), f"-L{torch_dir / 'lib'}", "-lc10", "-ltorch_cpu", f"-Wl,-rpath,{torch_dir / 'lib'}", "-o", str(partial)]
        try:
            _run(command, compiler)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)


def _run(command: list[str], compiler: str) -> None:
    """Run `command`; raise `KernelUnavailable` with the last lines of its errors when it fails or overruns."""
    try:
        done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=_BUILD_TIMEOUT_S)
    except subprocess.TimeoutExpired as err:
        raise KernelUnavailable(f"{Path(compiler).name} ran over {_BUILD_TIMEOUT_S} s") from err
    if done.returncode != 0:
        tail = " ".join(done.stderr.strip().splitlines()[-3:])[-600:]
        raise KernelUnavailable(f"{Path(compiler).name} failed ({tail})")


def _remove_abandoned(folder: Path) -> None:
    """Delete partial builds whose process is gone (killed mid-build); a live builder's file stays."""
    for partial in folder.glob(".token_int8-*.tmp"):
        try:
            os.kill(int(partial.name.rsplit(".", 2)[-2]), 0)
        except ProcessLookupError:
            partial.unlink(missing_ok=True)
        except (ValueError, PermissionError, OSError):  # not our name pattern, or another user's process
            continue


def _find_compiler() -> str | None:
    configured = os.environ.get("CXX")
    return shutil.which(configured) if configured else (shutil.which("c++") or shutil.which("g++"))


def _compiler() -> str:
    found = _find_compiler()
    if not found:
        configured = os.environ.get("CXX")
        raise KernelUnavailable(f"no C++ compiler found ({'CXX=' + configured if configured else 'c++ or g++'}); "
                                "install g++ or set CXX")
    return found


def _key() -> str:
    digest = hashlib.sha256()
    for source in SOURCES:
        digest.update(source.read_bytes())
    compiler = _find_compiler() or ""
    for part in (torch.__version__, str(Path(torch.__file__).parent), compiler, " ".join(FLAGS), " ".join(sorted(cpu.cpu_flags()))):
        digest.update(b"\0" + part.encode())
    return digest.hexdigest()[:16]
