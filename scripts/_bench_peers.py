"""Peer baselines for bench_quantization.py: ONNX Runtime (FP32, int8 static QDQ, dynamic int8), torch.compile, torchao."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _session(path: str, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def ort_cnn(model, example: torch.Tensor, calibration: list[torch.Tensor], workdir: Path, threads: int):
    """(fp32 runner, int8 QDQ runner, fp32 bytes, int8 bytes); int8 built at ORT's best (pre-processed graph)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    import copy

    fp32 = str(workdir / "cnn.onnx")
    # Export a copy: the legacy exporter's tracing can leave the exported module changed.
    torch.onnx.export(copy.deepcopy(model), (example,), fp32, input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "b"}, "y": {0: "b"}}, dynamo=False)
    pre = str(workdir / "cnn_pre.onnx")
    quant_pre_process(fp32, pre)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{"x": c.numpy()} for c in calibration])

        def get_next(self):
            return next(self.items, None)

    int8 = str(workdir / "cnn_int8.onnx")
    cwd = os.getcwd()
    os.chdir(workdir)  # ORT's tools write temp files into the working directory
    try:
        quantize_static(pre, int8, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    finally:
        os.chdir(cwd)
    runners = []
    for path in (fp32, int8):
        session = _session(path, threads)
        runners.append(lambda x, s=session: torch.from_numpy(s.run(None, {"x": x.numpy()})[0]))
    return runners[0], runners[1], os.path.getsize(fp32), os.path.getsize(int8)


def ort_bert_dynamic(model, encoded: dict, workdir: Path, threads: int, num_heads: int, hidden: int):
    """ONNX Runtime dynamic int8 of a BERT encoder: legacy export with eager attention + ORT's BERT fusion (whole
    attention fused, checked), then quantize_dynamic."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.optimizer import optimize_model

    names = list(encoded)
    fp32 = str(workdir / "bert.onnx")
    axes = {n: {0: "b", 1: "s"} for n in names}
    axes["last_hidden_state"] = {0: "b", 1: "s"}

    class Wrapper(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *args):
            return self.inner(**dict(zip(names, args))).last_hidden_state

    # A copy: tracing leaves transformers' attention-mask handling changed on the exported module
    # (measured: outputs off by 5.0 afterwards), which would corrupt every later variant.
    import copy

    exported = copy.deepcopy(model)
    # Eager attention: transformers' SDPA path exports a graph ORT's fuser does not recognise (measured with
    # transformers 5.24 / ORT 1.32: no Attention fused, only SkipLayerNorm and BiasGelu); eager attention's
    # fuses whole (Attention -> QAttention, EmbedLayerNormalization), ORT at its best.
    exported.set_attn_implementation("eager")
    torch.onnx.export(Wrapper(exported), tuple(encoded[n] for n in names), fp32, input_names=names,
                      output_names=["last_hidden_state"], dynamic_axes=axes, opset_version=17, dynamo=False)
    fused = str(workdir / "bert_fused.onnx")
    optimizer = optimize_model(fp32, model_type="bert", num_heads=num_heads, hidden_size=hidden)
    ops = optimizer.get_fused_operator_statistics()
    if not ops.get("Attention"):
        raise RuntimeError(f"ONNX Runtime's BERT fusion fused no attention ({ops}): the peer would not be at its best")
    optimizer.save_model_to_file(fused)
    int8 = str(workdir / "bert_int8.onnx")
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        import onnx

        # ORT's fused Attention/FastGelu ops defeat its type inference: declare float as the default.
        quantize_dynamic(fused, int8, weight_type=QuantType.QInt8, extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    finally:
        os.chdir(cwd)
    session = _session(int8, threads)

    def run(**inputs):
        feeds = {n: inputs[n].numpy().astype(np.int64) for n in names}
        return torch.from_numpy(session.run(None, feeds)[0])

    return run, os.path.getsize(int8)


def compiled(model, example, call):
    """torch.compile with freezing (the only reliably faster CPU setting here); returns (model, warm-up seconds)."""
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True
    fast = torch.compile(model)
    start = time.perf_counter()
    with torch.inference_mode():
        call(fast, example)
        call(fast, example)
    return fast, time.perf_counter() - start


def torchao_int8(model):
    """torchao int8 dynamic-activation / int8-weight on Linears (needs torch.compile to be fast)."""
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    quantize_(model, Int8DynamicActivationInt8WeightConfig())
    return model


def tempdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="pdo-bench-"))
