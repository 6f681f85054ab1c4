"""The fused per-token int8 kernel: built here, bit-identical to the ATen ops it replaces, and optional.

`_token_int8_kernel` compiles its C++ source with the system compiler on first use (into the session's
`XDG_CACHE_HOME`, see conftest). These tests run where the project is developed and tested, which has
g++: a build that stops working fails them rather than silently falling back.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from pdo_hub.core import cpu
from pdo_hub.optimizers.methods import _token_int8_kernel
from pdo_hub.optimizers.methods._int8_linear import ASYMMETRIC, PORTABLE_MAX, TokenInt8Linear, aten_per_token_int8_linear
from pdo_hub.optimizers.methods._shared_input import group_siblings

ROOT = Path(__file__).resolve().parents[1]
HAS_VNNI = "avx512_vnni" in cpu.cpu_flags()


def _layer(k: int, n: int, seed: int, bias: bool = True, portable: bool = False, asymmetric: bool = False) -> TokenInt8Linear:
    torch.manual_seed(seed)
    return TokenInt8Linear.from_float(nn.Linear(k, n, bias=bias), portable=portable, asymmetric=asymmetric)


def _rows(m: int, k: int, seed: int) -> torch.Tensor:
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(seed)) * 3
    if m and k > 5:
        x[0, 5] = 40.0  # an outlier token: its row scale differs from the others'
    if m > 4:  # rows an asymmetric grid meets: after GELU, all positive, all negative, all zero
        x[1] = torch.nn.functional.gelu(x[1])
        x[2], x[3], x[4] = x[2].abs() + 0.5, -x[3].abs(), 0.0
    return x


def test_the_kernel_builds_and_loads_on_this_machine():
    fused = _token_int8_kernel.op()
    assert fused is not None, f"the fused kernel did not build: {_token_int8_kernel.status()}"
    assert _token_int8_kernel.status().startswith("fused")
    assert _token_int8_kernel.library_path().is_file()


# Row counts on both sides of the VNNI path's limit (512 rows), of the AMX path's start (32 rows) and its
# 32-row steps, of the VNNI path's 4-row blocks and of the 64-row work items; widths not multiples of 4
# (padded inputs) or of 16 and 64 (masked output columns), and of 64 (inputs padded to whole AMX weight tiles).
@pytest.mark.parametrize("m", [1, 3, 8, 17, 31, 32, 48, 49, 65, 130, 512, 513])
@pytest.mark.parametrize("k,n", [(384, 1152), (130, 70), (128, 70), (1536, 384), (7, 1)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("asymmetric", [False, True])
def test_fused_outputs_equal_the_aten_ops_bit_for_bit(m, k, n, bias, asymmetric):
    layer = _layer(k, n, seed=m + k + n, bias=bias, portable=n == 1, asymmetric=asymmetric)
    assert layer.activation_levels == (PORTABLE_MAX if n == 1 else ASYMMETRIC if asymmetric else 127)
    x = _rows(m, k, seed=m * 7 + k)
    reference = aten_per_token_int8_linear(x, layer.activation_levels, layer.weight_t, layer.scale,
                                           layer.bias if bias else None)
    fused = _token_int8_kernel.op()
    plain = fused(x, layer.activation_levels, layer.weight_t, layer.scale, layer.bias if bias else None)
    packed, sums = _token_int8_kernel.packed_weights(layer, layer.weight_t)
    assert (packed is not None) == HAS_VNNI
    via_packed = fused(x, layer.activation_levels, layer.weight_t, layer.scale, layer.bias if bias else None, packed, sums)
    assert torch.equal(plain, reference)
    assert torch.equal(via_packed, reference)
    assert torch.equal(layer(x), reference)


def test_asymmetric_rows_follow_a_gelu_output_closer_than_symmetric_ones():
    # After GELU a row is almost all >= 0: a symmetric grid wastes the negative half of its levels.
    x = torch.nn.functional.gelu(torch.randn(64, 1536, generator=torch.Generator().manual_seed(8)) * 2)
    linear = nn.Linear(1536, 384)
    exact = linear(x).detach()
    errors = {}
    for asymmetric in (False, True):
        layer = TokenInt8Linear.from_float(linear, portable=True, asymmetric=asymmetric)
        errors[asymmetric] = float((layer(x) - exact).pow(2).mean())
    assert errors[True] < 0.6 * errors[False], errors


def test_an_asymmetric_layer_with_one_portable_output_keeps_symmetric_7_bit_activations():
    # oneDNN's GEMV (one output column) widens the weights to u8: 8-bit activations could overflow its int16 pairs.
    assert _layer(32, 1, seed=1, portable=True, asymmetric=True).activation_levels == PORTABLE_MAX
    assert _layer(32, 1, seed=1, portable=False, asymmetric=True).activation_levels == ASYMMETRIC


def test_levels_outside_the_symmetric_range_or_asymmetric_are_refused():
    layer = _layer(16, 8, seed=2)
    with pytest.raises(RuntimeError, match="levels must be 1-127"):
        _token_int8_kernel.op()(_rows(2, 16, seed=3), 200, layer.weight_t, layer.scale, layer.bias)


def test_portable_activation_levels_and_other_dtypes_match_too():
    layer = _layer(256, 1, seed=3, portable=True)
    assert layer.activation_levels == PORTABLE_MAX
    x = _rows(5, 256, seed=4).to(torch.bfloat16)
    reference = aten_per_token_int8_linear(x, layer.activation_levels, layer.weight_t, layer.scale, layer.bias)
    assert torch.equal(layer(x), reference.to(torch.bfloat16))


def test_new_weights_are_repacked_not_served_from_the_stale_copy():
    layer, other = _layer(384, 96, seed=1), _layer(384, 96, seed=2)
    x = _rows(4, 384, seed=5)
    before = layer(x)
    layer.load_state_dict(other.state_dict())
    assert torch.equal(layer(x), other(x))
    assert not torch.equal(layer(x), before)
    with torch.no_grad():  # an in-place change of the same tensor
        layer.weight_t.neg_()
    assert torch.equal(layer(x), aten_per_token_int8_linear(x, 127, layer.weight_t, layer.scale, layer.bias))


def test_grouped_siblings_and_a_frozen_trace_run_the_fused_op_with_the_same_outputs():
    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.query, self.key, self.value = (_layer(64, 64, seed=s) for s in (1, 2, 3))

        def forward(self, x):
            return self.query(x) + self.key(x) * self.value(x)

    model = Attention().eval()
    x = _rows(6, 64, seed=9).reshape(2, 3, 64)
    with torch.no_grad():
        reference = aten_per_token_int8_linear(x.reshape(-1, 64), 127, model.query.weight_t, model.query.scale, model.query.bias)
        eager, groups = group_siblings(model, lambda: model(x))
        assert len(groups) == 1 and len(groups[0].members) == 3
        # Packed when grouped: the group's first call is usually inside the trace, where nothing is packed.
        assert ("_packed_weights" in groups[0].__dict__) == HAS_VNNI
        assert torch.equal(model.query(x).reshape(-1, 64), reference)
        traced = torch.jit.freeze(torch.jit.trace(model, (x,), check_trace=False))
        assert "pdo_hub::per_token_int8_linear" in str(traced.graph)
        assert "pack_weights" not in str(traced.graph)  # packed before the trace, a constant in it
        assert torch.equal(traced(x), eager)
        longer = _rows(10, 64, seed=10).reshape(2, 5, 64)
        assert torch.equal(traced(longer), model(longer))


_AVX2_SCRIPT = """
    import itertools
    import torch, torch.nn as nn
    torch.ops.load_library(LIBRARY)
    from pdo_hub.optimizers.methods._int8_linear import TokenInt8Linear, aten_per_token_int8_linear
    torch.manual_seed(0)
    for (m, k, n), levels in itertools.product(((1, 384, 96), (17, 130, 70), (64, 1536, 40), (5, 7, 3)), (127, 255)):
        layer = TokenInt8Linear.from_float(nn.Linear(k, n))
        x = torch.randn(m, k) * 3
        x[0] = torch.nn.functional.gelu(x[0])
        got = torch.ops.pdo_hub.per_token_int8_linear(x, levels, layer.weight_t, layer.scale, layer.bias)
        expected = aten_per_token_int8_linear(x, levels, layer.weight_t, layer.scale, layer.bias)
        assert torch.equal(got, expected), (m, k, n, levels)
        # The fused GELU (activation=1): the AVX2 build of ATen's vectorized formula at every size, against
        # torch's GELU to float rounding (this process's ATen runs its AVX-512 kernels or oneDNN's erf).
        with_gelu = torch.ops.pdo_hub.per_token_int8_linear(x, levels, layer.weight_t, layer.scale, layer.bias, None, None, 1)
        torch.testing.assert_close(with_gelu, torch.nn.functional.gelu(expected), rtol=1e-5, atol=1e-5)
        # The output projection's add + LayerNorm (`_fused_norm`): ATen's LayerNorm steps on 8-lane vectors.
        residual, weight, bias = torch.randn(m, n), torch.rand(n) + 0.5, torch.randn(n)
        normed = torch.ops.pdo_hub.per_token_int8_linear_add_norm(x, levels, layer.weight_t, layer.scale, layer.bias, None, None,
                                                                  residual, weight, bias, 1e-12)
        torch.testing.assert_close(normed, torch.nn.functional.layer_norm(expected + residual, (n,), weight, bias, 1e-12), rtol=0, atol=2e-5)
    # The int8 lookup and channel gate (`_int8_lookup`): their scalar loops.
    from pdo_hub.optimizers.methods._int8_lookup import table_for
    x = torch.quantize_per_tensor(torch.randn(3, 21, 5, 7) * 3, 0.05, 117, torch.quint8).contiguous(memory_format=torch.channels_last)
    scale, zero_point = torch.tensor(0.021), torch.tensor(13)
    table = table_for(torch.nn.functional.silu, 0.05, 117, scale, zero_point)
    silu = torch.quantize_per_tensor(torch.nn.functional.silu(x.dequantize()), scale, zero_point, torch.quint8)
    assert torch.equal(torch.ops.pdo_hub.int8_lookup(x, table, 0.021, 13).int_repr(), silu.int_repr())
    gate = torch.quantize_per_tensor(torch.rand(3, 21, 1, 1), 1 / 256, 0, torch.quint8)
    product = torch.ops.quantized.mul(x, gate, 0.031, 121)
    assert torch.equal(torch.ops.pdo_hub.int8_scale_channels(x, gate, 0.031, 121).int_repr(), product.int_repr())
    print("identical")
"""


@pytest.mark.slow
def test_an_avx2_build_without_avx512_gives_the_aten_ops_bit_for_bit_too(tmp_path):
    # Hosts without AVX-512 build the AVX2 branches (8-lane row maximum and LayerNorm, no VNNI GEMM, no one-op
    # attention, scalar int8 lookups and channel gates);
    # this host runs them only in a build made for such a CPU.
    flags = tuple("-march=haswell" if flag == "-march=native" else flag for flag in _token_int8_kernel.FLAGS)
    library = tmp_path / "avx2.so"
    _token_int8_kernel._build(library, flags)
    done = _run(_AVX2_SCRIPT.replace("LIBRARY", repr(str(library))))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "identical" in done.stdout


def test_a_failing_compile_names_the_compiler_error_and_leaves_no_partial_library(tmp_path):
    library = tmp_path / "broken.so"
    with pytest.raises(_token_int8_kernel.KernelUnavailable, match="failed .*pdo-hub-no-such-option"):
        _token_int8_kernel._build(library, (*_token_int8_kernel.FLAGS, "-fpdo-hub-no-such-option"))
    assert list(tmp_path.iterdir()) == []


def _run(script: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=dict(os.environ, PYTHONWARNINGS="ignore", **env),
                          capture_output=True, text=True, timeout=300, cwd=ROOT)


_FALLBACK_SCRIPT = """
    import torch, torch.nn as nn
    from pdo_hub.optimizers.methods import _token_int8_kernel
    from pdo_hub.optimizers.methods._int8_linear import TokenInt8Linear, aten_per_token_int8_linear
    layer = TokenInt8Linear.from_float(nn.Linear(32, 8))
    x = torch.randn(3, 32)
    assert torch.equal(layer(x), aten_per_token_int8_linear(x, 127, layer.weight_t, layer.scale, layer.bias))
    print(_token_int8_kernel.status())
"""


def test_without_a_compiler_layers_run_the_aten_ops_and_say_why(tmp_path):
    done = _run(_FALLBACK_SCRIPT, CXX=str(tmp_path / "no-such-compiler"), PDO_HUB_KERNEL_CACHE=str(tmp_path / "kernels"),
                PDO_HUB_VERBOSITY="warning")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "aten ops (no C++ compiler found" in done.stdout
    assert done.stderr.count("fused per-token int8 kernel is unavailable") == 1  # one warning per process
    assert not list((tmp_path / "kernels").glob("*.so"))


def test_the_environment_switch_turns_the_kernel_off(tmp_path):
    done = _run(_FALLBACK_SCRIPT, PDO_HUB_FUSED_KERNEL="0", PDO_HUB_KERNEL_CACHE=str(tmp_path / "kernels"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "aten ops (PDO_HUB_FUSED_KERNEL=0)" in done.stdout


@pytest.mark.slow
def test_two_processes_building_at_once_share_one_build_and_clear_a_killed_builds_leftover(tmp_path):
    script = """
        from pdo_hub.optimizers.methods import _token_int8_kernel
        assert _token_int8_kernel.op() is not None, _token_int8_kernel.status()
        print(_token_int8_kernel.library_path())
    """
    env = dict(os.environ, PYTHONWARNINGS="ignore", PDO_HUB_KERNEL_CACHE=str(tmp_path / "kernels"))
    (tmp_path / "kernels").mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    leftover = tmp_path / "kernels" / f".token_int8-0123456789abcdef.so.{dead.pid}.tmp"  # a build killed midway
    leftover.write_bytes(b"partial")
    runs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], env=env, cwd=ROOT, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    outputs = [run.communicate(timeout=600) for run in runs]
    assert all(run.returncode == 0 for run in runs), [err[-2000:] for _, err in outputs]
    assert outputs[0][0] == outputs[1][0]
    assert [p.name for p in (tmp_path / "kernels").iterdir() if not p.name.endswith(".lock")] == [Path(outputs[0][0].strip()).name]


def test_the_kernel_source_ships_as_package_data():
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]["package-data"]
    assert "*.cpp" in package_data["pdo_hub.optimizers.methods"]
    assert _token_int8_kernel.SOURCE.is_file()


def test_the_report_says_which_kernel_the_per_token_layers_ran_on():
    from pdo_hub.optimizers.report import environment

    _layer(16, 8, seed=0)(_rows(2, 16, seed=0))
    ran_on = environment(torch.device("cpu"), 2)["per_token_int8_kernel"]
    assert ran_on.startswith("fused (GEMM: ")
    assert ("AMX-INT8" in ran_on) == ("amx_int8" in cpu.cpu_flags()), ran_on
    assert ("AVX512-VNNI" in ran_on) == HAS_VNNI, ran_on


_CAPPED_SCRIPT = """
    import torch, torch.nn as nn
    from pdo_hub.optimizers.methods import _token_int8_kernel
    from pdo_hub.optimizers.methods._int8_linear import TokenInt8Linear, aten_per_token_int8_linear
    torch.manual_seed(0)
    layer = TokenInt8Linear.from_float(nn.Linear(384, 1152))
    x = torch.randn(130, 384)
    assert torch.equal(layer(x), aten_per_token_int8_linear(x, layer.activation_levels, layer.weight_t, layer.scale, layer.bias))
    print(_token_int8_kernel.status())
"""


def test_a_onednn_cap_below_amx_keeps_the_op_off_the_tiles_with_the_same_outputs():
    # The same cap that keeps oneDNN off AMX keeps pdo-hub's op off it (a capped process runs as a CPU
    # without AMX would); on a CPU without AMX both runs take the VNNI loop.
    free = _run(_CAPPED_SCRIPT)
    capped = _run(_CAPPED_SCRIPT, ONEDNN_MAX_CPU_ISA="AVX512_CORE_VNNI")
    assert free.returncode == 0 and capped.returncode == 0, (free.stderr + capped.stderr)[-2000:]
    assert ("AMX-INT8" in free.stdout) == ("amx_int8" in cpu.cpu_flags()), free.stdout
    assert "AMX" not in capped.stdout and ("fused (GEMM: AVX512-VNNI" in capped.stdout) == HAS_VNNI, capped.stdout
