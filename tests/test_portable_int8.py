"""Portable int8: records say which instruction sets their int8 kernels assume, and a CPU without them refuses.

A CPU without VNNI is simulated by replacing `pdo_hub.core.cpu.cpu_flags`; one test also runs the real
kernels in a subprocess with fbgemm and oneDNN capped below VNNI, which any x86 CPU can do.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import apply_method, make_context
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tiny_models import MLP, KitchenSink

from pdo_hub.cache import CacheKey, OptimizedCache
from pdo_hub.core import cpu
from pdo_hub.core.errors import IncompatibleCacheEntryError, RecipeError, UnsupportedCpuError
from pdo_hub.hub.flow import Request, load_or_build
from pdo_hub.optimizers import get_method, load_optimized, save_optimized
from pdo_hub.optimizers.methods import _eager_static, _int8_isa
from pdo_hub.optimizers.methods._int8_linear import PORTABLE_MAX, FullRangeDynamicLinear, TokenInt8Linear
from pdo_hub.optimizers.recipe import NEW_RECIPE_VERSION, Recipe
from pdo_hub.optimizers.report import environment
from pdo_hub.optimizers.storage import read_recipe

X = torch.randn(4, 32, generator=torch.Generator().manual_seed(0))
VNNI = frozenset({"avx2", "fma", "avx512f", "avx512_vnni"})
NO_VNNI = frozenset({"avx2", "fma"})


@pytest.fixture
def cpu_flags(monkeypatch):
    """`cpu_flags(flags)` makes pdo-hub see a CPU with exactly these flags (and no library caps)."""
    for var in ("FBGEMM_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        monkeypatch.delenv(var, raising=False)

    def set_flags(flags: frozenset[str]) -> None:
        monkeypatch.setattr(cpu, "cpu_flags", lambda: flags)
    return set_flags


def full_range_mlp(cpu_flags, method: str = "dynamic"):
    """An MLP built with full-range int8, as asked for on a CPU with VNNI (the default is portable)."""
    cpu_flags(VNNI)
    if method == "eager":
        return _eager(MLP().eval(), portable=False)
    ctx = make_context(MLP().eval(), X[:1])
    ctx.extras["portable_int8"] = False
    model, records = get_method(method).apply(MLP().eval(), ctx)
    model.eval().pdo_recipe = Recipe(records)
    return model, records


def _eager(model, portable: bool):
    ctx = make_context(model, X[:1])
    ctx.extras["portable_int8"] = portable
    quantized, record = _eager_static.quantize(model, ctx, "static", None)
    quantized.pdo_recipe = Recipe([record])
    return quantized.eval(), [record]


def rewrite_recipe(directory: Path, change) -> None:
    """Edit the recipe in both copies (the safetensors metadata is the one loads read)."""
    path = directory / "model.safetensors"
    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata())
    recipe = json.loads(metadata["pdo_recipe"])
    change(recipe)
    metadata["pdo_recipe"] = json.dumps(recipe)
    save_file(load_file(str(path)), str(path), metadata=metadata)
    (directory / "pdo_recipe.json").write_text(json.dumps(recipe))


def as_version_1(recipe: dict) -> None:
    """What a recipe written before `int8_isa` looked like."""
    recipe["version"] = 1
    for record in recipe["records"]:
        record.pop("int8_isa", None)


# --- detection ---------------------------------------------------------------------------------------


def test_detection_follows_flags_and_library_caps(cpu_flags, monkeypatch):
    cpu_flags(VNNI)
    assert cpu.vnni_isas("fbgemm") == ("avx512_vnni",) and cpu.vnni_isas("onednn") == ("avx512_vnni",)
    cpu_flags(frozenset({"avx2", "avx_vnni"}))  # AVX-VNNI only: oneDNN uses it, fbgemm has no kernels for it
    assert cpu.vnni_isas("fbgemm") == () and cpu.vnni_isas("onednn") == ("avx_vnni",)
    cpu_flags(VNNI)
    monkeypatch.setenv("FBGEMM_ENABLE_INSTRUCTIONS", "AVX2")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx512_core")
    assert cpu.vnni_isas("fbgemm") == () and cpu.vnni_isas("onednn") == ()
    assert "int16" in cpu.int8_environment()["fbgemm"]


def test_report_names_amx_for_onednn_where_present_and_not_capped(cpu_flags, monkeypatch):
    cpu_flags(VNNI | {"amx_tile", "amx_int8"})
    assert cpu.int8_environment() == {"fbgemm": "avx512_vnni", "onednn": "amx_int8"}
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_VNNI")  # capped below AMX: VNNI runs
    assert cpu.int8_environment()["onednn"] == "avx512_vnni"


def test_report_environment_names_the_int8_kernels(cpu_flags):
    cpu_flags(VNNI)
    env = environment(torch.device("cpu"), 2)
    assert env["int8_kernels"] == {"fbgemm": "avx512_vnni", "onednn": "avx512_vnni"}
    assert "avx512_vnni" in env["cpu_flags"] and env["quantized_engine"] == torch.backends.quantized.engine


# --- what is built -------------------------------------------------------------------------------------


def test_default_builds_are_portable_with_7_bit_operands(cpu_flags):
    cpu_flags(VNNI)
    model, [record] = apply_method("dynamic", MLP().eval(), X[:1])
    assert record["int8_isa"]["portable"] is True
    for module in model.modules():
        if isinstance(module, FullRangeDynamicLinear):
            assert module.weight().int_repr().abs().max() <= PORTABLE_MAX
        if isinstance(module, TokenInt8Linear):
            assert module.portable and module.levels == PORTABLE_MAX and module.weight_t.abs().max() <= PORTABLE_MAX
    eager, [record] = _eager(MLP().eval(), portable=True)
    assert record["int8_isa"]["portable"] is True
    assert max(m.module.weight().int_repr().abs().max() for m in eager.modules() if hasattr(m, "quant")) <= PORTABLE_MAX
    _, [fx_record] = apply_method("static", KitchenSink().eval(), torch.randn(1, 3, 16, 16))
    assert fx_record["int8_isa"]["portable"] is True  # torch.ao's 7-bit activations


def test_full_range_is_never_built_on_a_cpu_without_vnni(cpu_flags):
    cpu_flags(NO_VNNI)
    ctx = make_context(MLP().eval(), X[:1])
    ctx.extras["portable_int8"] = False
    _, [record] = get_method("dynamic").apply(MLP().eval(), ctx)
    assert record["int8_isa"]["portable"] is True and any("no VNNI" in note for note in ctx.notes)


def test_recipe_field_round_trips(cpu_flags, tmp_path):
    model, [record] = full_range_mlp(cpu_flags)
    assert record["int8_isa"]["portable"] is False and set(record["int8_isa"]["needs"]) <= {"fbgemm", "onednn"}
    save_optimized(model, tmp_path)
    recipe = read_recipe(tmp_path)
    assert recipe.version == NEW_RECIPE_VERSION == 2 and recipe.records[0]["int8_isa"] == record["int8_isa"]
    assert json.loads((tmp_path / "pdo_recipe.json").read_text())["records"][0]["int8_isa"] == record["int8_isa"]


# --- loading -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["dynamic", "eager"])
def test_full_range_variant_is_refused_without_vnni_and_loads_with_it(cpu_flags, tmp_path, method):
    model, _ = full_range_mlp(cpu_flags, method)
    save_optimized(model, tmp_path)
    with torch.inference_mode():
        expected = model(X)
    cpu_flags(NO_VNNI)
    with pytest.raises(UnsupportedCpuError) as err:
        load_optimized(tmp_path, MLP())
    message = str(err.value)
    assert "AVX512-VNNI" in message and ("fbgemm" in message or "onednn" in message)
    assert "from_pretrained" in message and "portable" in message and "avx2" in message
    cpu_flags(VNNI)
    with torch.inference_mode():
        assert torch.equal(load_optimized(tmp_path, MLP())(X), expected)


@pytest.mark.parametrize("method", ["dynamic", "static", "eager"])
def test_portable_variant_loads_without_vnni(cpu_flags, tmp_path, method):
    cpu_flags(VNNI)
    if method == "eager":
        model, _ = _eager(MLP().eval(), portable=True)
    else:
        model, _ = apply_method(method, MLP().eval(), X[:1])
    save_optimized(model, tmp_path)
    with torch.inference_mode():
        expected = model(X)
    cpu_flags(NO_VNNI)
    with torch.inference_mode():
        assert torch.equal(load_optimized(tmp_path, MLP())(X), expected)


@pytest.mark.parametrize("method, refused", [("dynamic", True), ("eager", True), ("static", False)])
def test_recipes_from_before_the_field_are_judged_by_their_records(cpu_flags, tmp_path, method, refused):
    if method == "static":
        cpu_flags(VNNI)
        model, _ = apply_method("static", MLP().eval(), X[:1])  # FX: 7-bit activations, portable
    else:
        model, _ = full_range_mlp(cpu_flags, method)
    save_optimized(model, tmp_path)
    rewrite_recipe(tmp_path, as_version_1)
    cpu_flags(VNNI)
    assert read_recipe(tmp_path).version == 1
    load_optimized(tmp_path, MLP())
    cpu_flags(NO_VNNI)
    if refused:
        with pytest.raises(UnsupportedCpuError, match="AVX512-VNNI"):
            load_optimized(tmp_path, MLP())
    else:
        load_optimized(tmp_path, MLP())


def test_malformed_or_newer_field_is_a_recipe_error(cpu_flags, tmp_path):
    model, _ = full_range_mlp(cpu_flags)
    save_optimized(model, tmp_path)
    rewrite_recipe(tmp_path, lambda r: r["records"][0].update(int8_isa={"portable": "yes"}))
    with pytest.raises(RecipeError, match="int8_isa"):
        load_optimized(tmp_path, MLP())
    rewrite_recipe(tmp_path, lambda r: r["records"][0].update(int8_isa={"portable": False, "needs": {"npu": ["x"]}}))
    with pytest.raises(RecipeError, match="newer pdo-hub"):
        load_optimized(tmp_path, MLP())


# --- the cache flow ------------------------------------------------------------------------------------


KEY = CacheKey("local", "mlp.pt", "ab" * 32, "cd" * 32)


class Writer:
    """Writes a dynamic-int8 MLP, full range for the first build, then as the optimizer does (portable)."""

    def __init__(self, cpu_flags) -> None:
        self.cpu_flags, self.calls = cpu_flags, 0

    def __call__(self, folder: Path) -> None:
        self.calls += 1
        model, _ = full_range_mlp(self.cpu_flags) if self.calls == 1 else apply_method("dynamic", MLP().eval(), X[:1])
        save_optimized(model, folder, report={"optimizations_applied": ["dynamic"]})


def load(entry):
    return load_optimized(entry.path, MLP(), assign=True)


@pytest.mark.parametrize("offline", [False, True], ids=["online", "offline"])
def test_cache_entry_for_another_cpu(cpu_flags, offline):
    cache, write = OptimizedCache(), Writer(cpu_flags)
    entry = cache.commit(KEY, write)
    before = (entry.path / "model.safetensors").read_bytes()
    cpu_flags(NO_VNNI)
    request = Request(key=KEY, what="the test MLP", fetch_hint="pdo-hub optimize mlp.pt", offline=offline,
                      offline_reason="test offline" if offline else "")
    if offline:  # left in place, saying what is missing and how to rebuild
        with pytest.raises(IncompatibleCacheEntryError) as err:
            load_or_build(request, load, write, cache)
        assert "AVX512-VNNI" in str(err.value) and "pdo-hub optimize mlp.pt" in str(err.value)
        assert isinstance(err.value.__cause__, UnsupportedCpuError)
        assert (entry.path / "model.safetensors").read_bytes() == before and write.calls == 1
        return
    model = load_or_build(request, load, write, cache)  # online: set aside and rebuilt portable
    assert model.pdo_cache_status == "built" and write.calls == 2
    assert model.pdo_recipe.records[0]["int8_isa"]["portable"] is True
    assert list((cache.root / ".quarantine").glob("*/*"))
    cpu_flags(VNNI)  # the rebuilt portable entry serves the machines the old one was built for, too
    assert load_or_build(request, load, write, cache).pdo_cache_status == "hit"


# --- the real kernels, capped below VNNI ---------------------------------------------------------------


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 int8 kernels")
@pytest.mark.parametrize("onednn_cap", ["AVX2", "AVX512_CORE"])  # AVX512_CORE: oneDNN's GEMV swaps operands
def test_portable_layers_are_exact_where_full_range_saturates(onednn_cap):
    """Both libraries capped below VNNI (what a CPU without it runs): full range overflows, portable does not."""
    script = textwrap.dedent("""
        import json, torch, torch.nn as nn
        from pdo_hub.optimizers.methods._int8_linear import TokenInt8Linear
        from pdo_hub.optimizers.methods.dynamic import _fast_linear
        errors = {}
        for outputs in (64, 1):
            linear = nn.Linear(256, outputs)
            with torch.no_grad():  # every product at its largest: the worst case for int16 pair sums
                linear.weight.fill_(1.0); linear.weight[:, 0] = -1.0; linear.bias.zero_()
            x = torch.ones(4, 256); x[:, 0] = 0.0
            ref = linear(x)
            error = lambda layer: float((layer(x) - ref).abs().max() / ref.abs().max())
            errors.update({
                f"fbgemm_full_{outputs}": error(_fast_linear(linear, portable=False)),
                f"fbgemm_portable_{outputs}": error(_fast_linear(linear, portable=True)),
                f"onednn_full_{outputs}": error(TokenInt8Linear.from_float(linear)),
                f"onednn_portable_{outputs}": error(TokenInt8Linear.from_float(linear, portable=True)),
            })
        print(json.dumps(errors))
    """)
    env = dict(os.environ, FBGEMM_ENABLE_INSTRUCTIONS="AVX2", ONEDNN_MAX_CPU_ISA=onednn_cap, OMP_NUM_THREADS="1",
               PYTHONWARNINGS="ignore")
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0, done.stderr[-2000:]
    errors = json.loads(done.stdout.strip().splitlines()[-1])
    assert all(v < 0.02 for k, v in errors.items() if "portable" in k), f"portable int8 overflowed: {errors}"
    assert errors["fbgemm_full_64"] > 0.2 and errors["onednn_full_64"] > 0.2, f"the cap did not take effect: {errors}"
