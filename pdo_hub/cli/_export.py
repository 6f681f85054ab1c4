"""`pdo-hub export SOURCE --format onnx|transformers --out DIR`: the cached variant in another runtime's format."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pdo_hub.cli._optimize import add_source_options, optimized_source
from pdo_hub.cli._progress import progress


def _run(args: argparse.Namespace) -> int:
    from pdo_hub.export import read_variant, write_transformers_format
    from pdo_hub.export.onnx_format import export_onnx

    spec, model = optimized_source(args, offline=args.offline)
    with progress(not args.json and not args.quiet):
        variant = read_variant(model.pdo_cache_path)
        if args.format == "onnx":
            record = export_onnx(variant, args.out, _calibration_inputs(variant, args.calibration))
        else:
            record = write_transformers_format(variant, args.out)
    if args.json:
        print(json.dumps({"source": str(spec), "out": args.out, **record}, indent=2))
        return 0
    print(f"Exported {spec} ({', '.join(variant.report.get('optimizations_applied') or []) or 'original kept'}) "
          f"to {args.out} as {record['format']}")
    if args.format == "onnx":
        parity = record["parity"]
        print(f"{record['file_name']} ({record['scheme']}): output cosine vs the PyTorch variant "
              f"{parity['output_cosine']:.4f}" + (f", top-1 agreement {parity['top1_agreement']:.4f}"
                                                  if "top1_agreement" in parity else "") +
              f"; ONNX Runtime {parity['latency_ms']['onnxruntime']} ms vs PyTorch {parity['latency_ms']['pytorch_variant']} ms")
        print(f"Load it with: onnxruntime.InferenceSession({str(Path(args.out) / record['file_name'])!r})")
    else:
        measured = record.get("measured") or {}
        print(f"Stock transformers: output cosine vs pdo-hub {measured.get('output_cosine_vs_pdo_hub')}, "
              f"latency {measured.get('latency_ms')}")
        print(f"Load it with: transformers.AutoModel.from_pretrained({args.out!r}) (torchao installed)")
    return 0


def _calibration_inputs(variant, calibration: str | None) -> list:
    """The export's inputs (`pdo_hub.export._inputs`), with a note when an image folder is not read again."""
    from pdo_hub.export._inputs import calibration_inputs

    if calibration and not variant.is_transformers:
        print("pdo-hub: note: ONNX Runtime calibrates vision exports on pdo-hub's built-in images; your --calibration "
              "folder chose the variant but is not read again for the export.", file=sys.stderr)
    return calibration_inputs(variant, calibration)


def register(commands) -> None:
    parser = commands.add_parser(
        "export", help="write the optimized variant as ONNX (ONNX Runtime) or stock-transformers (torchao) files",
        description="SOURCE: hf:org/name[@revision], torchvision:name[:weights], or a local file/folder; the variant "
                    "comes from the optimized cache (built first on a miss).")
    add_source_options(parser)
    parser.add_argument("--format", required=True, choices=("onnx", "transformers"),
                        help="onnx: model.onnx + model_quantized.onnx with a parity report; transformers: torchao int8 "
                             "safetensors that stock transformers loads")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--offline", action="store_true", help="no network: the optimized cache only")
    parser.add_argument("--json", action="store_true", help="print the export record as JSON")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress lines")
    parser.set_defaults(run=_run)
