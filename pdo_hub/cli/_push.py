"""`pdo-hub push SOURCE --repo-id ORG/NAME`: optimize a model (or reuse its cache entry) and publish it."""

from __future__ import annotations

import argparse
import json

from pdo_hub.cli._optimize import add_source_options, optimized_source
from pdo_hub.cli._progress import progress


def _run(args: argparse.Namespace) -> int:
    from pdo_hub.push import push_entry

    spec, model = optimized_source(args)
    with progress(not args.json and not args.quiet):
        result = push_entry(model.pdo_cache_path, args.repo_id, endpoint=args.endpoint, private=args.private,
                            revision=args.revision, commit_message=args.message, format=args.format,
                            calibration=args.calibration)
    if args.json:
        print(json.dumps({"source": str(spec), "cache_status": model.pdo_cache_status, **result}, indent=2))
        return 0
    print(f"Pushed {spec} ({', '.join(model.pdo_report.get('optimizations_applied') or []) or 'original kept'}) "
          f"to {result['repo_url']}")
    print(f"Commit: {result['commit_sha']} on {result['revision']} ({len(result['files'])} files)")
    if args.format == "onnx":
        print(f"Load it with onnxruntime (the repo's {result['export']['file_name']}), Optimum's ORTModel, or "
              f"pdo_hub.from_pretrained({result['repo_id']!r}) (an ONNX Runtime model); parity: output cosine vs "
              f"the PyTorch variant {result['export']['parity']['output_cosine']:.4f}")
    elif args.format == "transformers":
        print(f"Load it with stock transformers + torchao: AutoModel.from_pretrained({result['repo_id']!r}) "
              f"(or pdo_hub.from_pretrained({result['repo_id']!r}))")
    else:
        print(f"Load it with: pdo_hub.from_pretrained({result['repo_id']!r})")
    return 0


def register(commands) -> None:
    parser = commands.add_parser(
        "push", help="optimize a model and publish the variant to a Hub repo",
        description="SOURCE: hf:org/name[@revision], torchvision:name[:weights], or a local file/folder. The source "
                    "is fetched from HF_ENDPOINT; the token comes from HF_TOKEN or `hf auth login`.")
    add_source_options(parser)
    parser.add_argument("--repo-id", required=True, help="Hub repo to push to, ORG/NAME (created if missing)")
    parser.add_argument("--endpoint", default=None, help="Hub to push to (default: HF_ENDPOINT, else huggingface.co)")
    parser.add_argument("--private", action="store_true", help="create the repo private")
    parser.add_argument("--revision", default="main", help="branch to commit to (default main)")
    parser.add_argument("--message", default=None, help="commit message")
    parser.add_argument("--format", default="pdo", choices=("pdo", "transformers", "onnx"),
                        help="pdo: pdo-hub's own files (pdo_hub.from_pretrained loads them); transformers: torchao int8 "
                             "that stock transformers loads without pdo-hub (transformers models, widths unpruned); "
                             "onnx: model.onnx + model_quantized.onnx with a parity report (onnxruntime, Optimum, "
                             "pdo_hub.from_pretrained)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress lines")
    parser.set_defaults(run=_run)
