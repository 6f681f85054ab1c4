"""Real workloads, side by side at 2 threads: corpora, request streams of any length, mixed batch sizes.

One fixed shape flatters a runtime that prepares per shape. This script times what people run:

- all-MiniLM-L6-v2 (real weights), `corpus`: N sentences sorted by length, batches of 32 (`--batch`) padded
  to each batch's longest (what sentence-transformers' `encode` does); `stream`: batch-1 requests of
  random length (5-128 tokens; `--max-tokens` moves both workloads' limit), unsorted.
- the digits-trained ResNet-18 (real weights, 32x32), `mixed`: requests of batch 1, 8 and 32 (`--cnn-batches`)
  in random order; `--cnn resnet18` (or another torchvision classifier, e.g. `mobilenet_v2`) runs the same stream
  on torchvision's stock model at 224x224 (ImageNet shapes; seeded random weights, BatchNorm statistics set from
  the images, so its fidelity is the output's error against FP32, not accuracy).

Each workload runs once per variant `cold`, on a freshly loaded variant (a new process would pay the
same: first calls, traces, compiles; the ONNX export and quantization themselves are not counted), then
`--rounds` times `warm` (median). Every pass is interleaved across the variants in 8 slices, so the
host's drifting speed hits them alike. `load` is the time to get a ready variant from disk: pdo-hub's `load_optimized` on a fresh
skeleton plus the background build of its frozen trace (waited for here), ONNX Runtime's session creation
(its graph optimizations). Variants: FP32 eager; pdo-hub (`dynamic` for MiniLM, `static` for the CNN, built through the
public optimizer, saved and loaded back as a user's cache hit would be); ONNX Runtime (dynamic int8 after
its BERT fusion; int8 QDQ from the pre-processed graph for the CNN); torchao int8 dynamic-activation +
torch.compile (MiniLM; `--skip-compile` leaves it out: minutes of compiling). Fidelity: mean and worst
cosine of the mean-pooled sentence embeddings against FP32 (MiniLM), top-1 on 400 held-out digits (CNN).
The sentences are generated from the word lists below with a seed (`--seed`): pass another seed, or
`--sentences FILE` (one per line), or `--stdlib-text` (sentences of standard-library docstrings), to rerun on
text this repository never saw. `--lengths 8,32,128`
adds MiniLM's batch-1 latency at those token counts (without torchao): a gap of the same ms at every
length is a fixed cost per request, one that grows is GEMM throughput.

    flock /tmp/pdo-heavy.lock python scripts/bench_workloads.py [--models minilm,resnet] [--skip-compile]
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import random
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench_peers as peers  # noqa: E402

import pdo_hub  # noqa: E402
from pdo_hub.core import cpu  # noqa: E402
from pdo_hub.core.config import PostDownloadOptimizationConfig  # noqa: E402
from pdo_hub.optimizers import create_post_download_optimizer  # noqa: E402
from pdo_hub.optimizers.methods import _warm_up  # noqa: E402

THREADS = 2
SLICES = 8  # each pass is interleaved across the variants in this many slices (`interleaved`)
SUBJECTS = ("the old harbor", "my neighbour", "a small startup", "the city council", "our research team", "the museum",
            "a young violinist", "the weather service", "the football club", "this recipe", "the new library", "her doctor")
VERBS = ("announced", "questioned", "celebrated", "postponed", "described", "rejected", "improved", "explained",
         "measured", "photographed", "criticised", "repaired")
OBJECTS = ("the winter schedule", "a surprising result", "the bridge over the river", "several old paintings",
           "the budget for next year", "an unusual recipe for bread", "the results of the election", "a quiet village",
           "the train timetable", "a rare species of bird", "the hospital's new wing", "a letter from abroad")
TAILS = ("after a long discussion", "despite the heavy rain", "because nobody had expected it", "on Tuesday morning",
         "while the children were asleep", "with the help of volunteers", "for the third time this month",
         "although the cost was high", "in front of a large audience", "before anyone could object")


def sentences(count: int, seed: int) -> list[str]:
    """Sentences of 1-9 clauses (about 6-120 tokens), deterministic for a seed."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        clauses = [f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(TAILS)}"
                   for _ in range(rng.choice((1, 1, 1, 2, 2, 3, 4, 6, 9)))]
        out.append(("; ".join(clauses) + ".").capitalize())
    return out


def stdlib_sentences() -> list[str]:
    """Prose this repository never saw, shipped with every Python: the sentences of the docstrings of six
    standard-library modules and their public members (most are short: about 21 tokens), in a fixed order."""
    import argparse as argparse_module
    import csv
    import email
    import http.client
    import inspect
    import logging
    import re

    text = ""
    modules = (json, email, http.client, argparse_module, logging, csv)
    for module in modules:
        text += " " + (inspect.getdoc(module) or "")
    for module in modules:
        for name, member in inspect.getmembers(module):
            doc = inspect.getdoc(member)
            if doc and not name.startswith("_"):
                text += " " + doc
    found = (part.strip().replace("\n", " ") for part in re.split(r"(?<=[.!?])\s+", text))
    return list(dict.fromkeys(part for part in found if 20 < len(part) < 600 and not part.startswith((">>>", "..."))))


def cosines(reference: torch.Tensor, got: torch.Tensor) -> str:
    values = F.cosine_similarity(reference, got)
    return f"{values.mean().item():.4f} (worst {values.min().item():.4f})"


def table(title: str, rows: dict, fidelity: dict, base: str = "FP32 eager", peer: str | None = None) -> str:
    lines = [f"\n### {title}", f"| variant | load s | cold s | warm s | x FP32 eager (cold / warm) | x {peer} (cold / warm) | fidelity |",
             "|---|---|---|---|---|---|---|"]
    for name, (load, cold, warm) in rows.items():
        vs_base = f"{rows[base][1] / cold:.2f} / {rows[base][2] / warm:.2f}"
        vs_peer = f"{rows[peer][1] / cold:.2f} / {rows[peer][2] / warm:.2f}" if peer in rows else ""
        lines.append(f"| {name} | {load:.2f} | {cold:.2f} | {warm:.2f} | {vs_base} | {vs_peer} | {fidelity.get(name, '')} |")
    return "\n".join(lines)


def run_cold_warm(variants: dict, workloads: dict, rounds: int, slices: int = SLICES, gaps: dict | None = None) -> tuple[dict, dict]:
    """{workload: {variant: (load seconds, cold seconds, median warm seconds)}}, {(workload, variant): cold outputs};
    `variants`: name -> (fresh() -> runner).

    Cold: the first pass over a workload on a fresh instance of each variant. Warm: `rounds` more passes
    (median). Every pass is interleaved (`interleaved`), so a change of this host's speed during a pass
    (it drifts, sometimes by 1.5x within a minute) hits every variant alike: before, each variant's cold pass
    ran after the other's, and one variant's cold pass could land in a faster phase than its peer's.
    `gaps`: {workload: seconds of quiet before each of its requests} (`interleaved`).
    """
    results, outputs = {}, {}
    for workload, inputs in workloads.items():
        runners, loads = {}, {}
        for name, fresh in variants.items():
            start = time.perf_counter()
            runners[name] = fresh()
            loads[name] = time.perf_counter() - start
        gap = (gaps or {}).get(workload, 0.0)
        cold, cold_outputs = interleaved(runners, inputs, slices, gap)
        warm = [interleaved(runners, inputs, slices, gap)[0] for _ in range(rounds)]
        results[workload] = {name: (loads[name], cold[name], sorted(w[name] for w in warm)[len(warm) // 2]) for name in runners}
        outputs.update({(workload, name): cold_outputs[name] for name in runners})
    return results, outputs


def interleaved(runners: dict, inputs: list, slices: int, gap: float = 0.0) -> tuple[dict, dict]:
    """One pass over `inputs` per runner, cut into `slices` slices, each run on every runner in turn (the
    order rotating from slice to slice): ({runner: seconds}, {runner: outputs}).

    Each runner still serves a run of consecutive requests, as a server would, so its weights stay in
    cache; a pause before each slice (not timed) lets the previous runtime's spinning threads settle.
    `gap` > 0: a server's sparse traffic instead: `gap` seconds of quiet (not timed) before every request.
    """
    size = max(1, -(-len(inputs) // slices))
    names = list(runners)
    seconds, outputs = dict.fromkeys(names, 0.0), {name: [] for name in names}
    with torch.inference_mode():
        for index, first in enumerate(range(0, len(inputs), size)):
            for name in names[index % len(names):] + names[:index % len(names)]:
                time.sleep(0.1)
                if gap > 0:
                    for x in inputs[first:first + size]:
                        time.sleep(gap)
                        start = time.perf_counter()
                        outputs[name].append(runners[name](x))
                        seconds[name] += time.perf_counter() - start
                    continue
                start = time.perf_counter()
                outputs[name].extend([runners[name](x) for x in inputs[first:first + size]])
                seconds[name] += time.perf_counter() - start
    return seconds, outputs


def latency_by_length(variants: dict, inputs: dict, peer: str, calls: int = 50) -> str:
    """Batch-1 latency (ms) per input length: the best of 3 interleaved rounds of `calls` calls, per variant;
    each other variant's speed as a multiple of `peer`'s.

    A gap that stays the same in ms at every length is a fixed cost per request (op dispatch, small
    kernels); one that grows with the length is the GEMMs' throughput.
    """
    runners = {name: fresh() for name, fresh in variants.items()}
    best = {(length, name): float("inf") for length in inputs for name in runners}
    with torch.inference_mode():
        for length, x in inputs.items():
            for run in runners.values():
                for _ in range(10):
                    run(x)
            for _ in range(3):
                for name, run in runners.items():
                    time.sleep(0.1)
                    start = time.perf_counter()
                    for _ in range(calls):
                        run(x)
                    best[length, name] = min(best[length, name], (time.perf_counter() - start) / calls * 1e3)
    names, others = list(runners), [n for n in runners if n != peer]
    lines = ["\n### all-MiniLM-L6-v2 batch-1 latency by length (ms, best of 3 rounds)",
             "| tokens | " + " | ".join(names) + " | " + " | ".join(f"{n} x {peer}" for n in others) + " |",
             "|---" * (1 + len(names) + len(others)) + "|"]
    for length in inputs:
        cells = [f"{best[length, n]:.2f}" for n in names] + [f"{best[length, peer] / best[length, n]:.2f}" for n in others]
        lines.append(f"| {length} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def minilm_dynamic_variant(lengths: tuple[int, ...]):
    """(FP32 MiniLM, its `dynamic` variant built by the public optimizer on 32 generated sentences, {tokens: a
    batch-1 input of that many tokens}): the set-up of the scripts that compare two copies of one variant."""
    from transformers import AutoModel, AutoTokenizer

    from pdo_hub.demo import minilm_folder, tokenized_sentences

    folder = minilm_folder()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()
    texts = sentences(300, 11)
    config = PostDownloadOptimizationConfig(quantization_method="dynamic", enable_low_rank_optimization=False,
                                            enable_tensor_factorization=False, auto_select_best_method=False)
    variant, _ = create_post_download_optimizer(config).optimize_model(
        model=copy.deepcopy(model), model_name="all-MiniLM-L6-v2", example_inputs=tokenized_sentences(tokenizer, texts[:1])[0],
        calibration_data=tokenized_sentences(tokenizer, texts[:32]))
    inputs = {n: dict(tokenizer(" ".join(texts), truncation=True, max_length=n, return_tensors="pt")) for n in lengths}
    return model, variant, inputs


def ready(model):
    """The loaded variant once its background warm-up (the frozen trace) is done: "load" counts it."""
    _warm_up.wait(model)
    return model


def ort_runner(path: Path, names: list[str] | None = None):
    """A fresh ONNX Runtime session on `path` (what a new process creates), as a callable on torch tensors."""
    session = peers._session(str(path), THREADS)
    if names is None:
        return lambda x: torch.from_numpy(session.run(None, {"x": x.numpy()})[0])
    return lambda x: torch.from_numpy(session.run(None, {n: x[n].numpy() for n in names})[0])


def bench_minilm(args) -> None:
    from transformers import AutoModel, AutoTokenizer

    from pdo_hub.demo import minilm_folder, tokenized_sentences
    from pdo_hub.hub.skeleton import transformers_skeleton

    folder = minilm_folder()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()
    if args.sentences:
        texts = Path(args.sentences).read_text().splitlines()
    elif args.stdlib_text:
        texts = stdlib_sentences()
    else:
        texts = sentences(args.corpus + args.requests + 32, args.seed)
    texts = [t for t in texts if t.strip()]
    if len(texts) < 33:
        raise SystemExit(f"{args.sentences}: {len(texts)} sentences; at least 33 are needed (32 calibrate, the rest are encoded)")
    calibration_texts, rest = texts[:32], texts[32:]
    # A short file is reused: the corpus takes what it can, the stream cycles on from there (cut at random lengths).
    corpus_texts = rest[:args.corpus]
    request_texts = [rest[(args.corpus + i) % len(rest)] for i in range(args.requests)]
    rng = random.Random(args.seed)
    by_length = sorted(corpus_texts, key=lambda t: len(tokenizer(t)["input_ids"]))
    batch, most = args.batch, args.max_tokens
    corpus = [dict(tokenizer(by_length[i:i + batch], padding="longest", truncation=True, max_length=most, return_tensors="pt"))
              for i in range(0, len(by_length), batch)]
    stream = []
    for text in request_texts:  # random lengths of 5-`most` tokens: cut each request at a random token count
        ids = tokenizer(text, truncation=True, max_length=most)["input_ids"]
        keep = min(len(ids), rng.randint(5, most))
        stream.append(dict(tokenizer(tokenizer.decode(ids[1:keep - 1]), truncation=True, max_length=most, return_tensors="pt")))
    config = PostDownloadOptimizationConfig(quantization_method="dynamic", enable_low_rank_optimization=False,
                                            enable_tensor_factorization=False, auto_select_best_method=False)
    start = time.perf_counter()
    optimized, report = create_post_download_optimizer(config).optimize_model(
        model=copy.deepcopy(model), model_name="all-MiniLM-L6-v2", example_inputs=tokenized_sentences(tokenizer, calibration_texts[:1])[0],
        calibration_data=tokenized_sentences(tokenizer, calibration_texts))
    build_seconds = time.perf_counter() - start
    saved = Path(tempfile.mkdtemp(prefix="pdo-bench-"))
    pdo_hub.save_optimized(optimized, saved, report=report)
    if args.save_variant:
        pdo_hub.save_optimized(optimized, Path(args.save_variant), report=report)
    del optimized
    ort_dir = peers.tempdir()
    peers.ort_bert_dynamic(model, {k: v[:1] for k, v in corpus[0].items()}, ort_dir, THREADS, 12, 384)

    hidden = lambda m: (lambda x: m(**x).last_hidden_state)  # noqa: E731
    variants = {
        "FP32 eager": lambda: hidden(model),
        # As a cache hit loads it: a skeleton without weight initialization, the stored tensors assigned.
        "pdo dynamic": lambda: hidden(ready(pdo_hub.load_optimized(saved, transformers_skeleton(AutoModel, model.config), assign=True))),
        "ONNX Runtime dynamic int8 (BERT fusion)": lambda: ort_runner(ort_dir / "bert_int8.onnx", list(corpus[0])),
    }
    if args.baseline:  # another pdo-hub's variant (an earlier version, other options), loaded by this one
        variants["pdo baseline"] = lambda: hidden(ready(pdo_hub.load_optimized(Path(args.baseline), transformers_skeleton(AutoModel, model.config), assign=True)))
    if not args.skip_compile:
        def compiled():
            import torch._inductor.config as inductor_config

            inductor_config.freezing = True
            return hidden(torch.compile(peers.torchao_int8(copy.deepcopy(model))))

        variants["torchao int8 + torch.compile"] = compiled
    results, outputs = run_cold_warm(variants, {"corpus": corpus, "stream": stream}, args.rounds, gaps={"stream": args.gap})
    pooled = lambda hs, xs: torch.cat([(h * x["attention_mask"][..., None]).sum(1) / x["attention_mask"].sum(1, keepdim=True) for h, x in zip(hs, xs)])  # noqa: E731
    tokens = {w: sum(int(x["attention_mask"].sum()) for x in xs) for w, xs in (("corpus", corpus), ("stream", stream))}
    for workload, inputs in (("corpus", corpus), ("stream", stream)):
        reference = pooled(outputs[workload, "FP32 eager"], inputs)
        fidelity = {name: cosines(reference, pooled(outputs[workload, name], inputs)) for name in variants}
        what = (f"{len(corpus_texts)} sentences sorted by length, batch {batch}, padded to the longest (at most {most} tokens)"
                if workload == "corpus" else f"{len(stream)} batch-1 requests of 5-{most} tokens, unsorted"
                + (f", {args.gap} s apart" if args.gap else ""))
        print(table(f"all-MiniLM-L6-v2 {workload}: {what} ({tokens[workload]} real tokens)", results[workload], fidelity,
                    peer="ONNX Runtime dynamic int8 (BERT fusion)"), flush=True)
    if args.lengths:
        text = " ".join(request_texts)
        by_length = {length: dict(tokenizer(text, truncation=True, max_length=length, return_tensors="pt"))
                     for length in (int(v) for v in args.lengths.split(","))}
        print(latency_by_length({name: fresh for name, fresh in variants.items() if "compile" not in name}, by_length,
                                peer="ONNX Runtime dynamic int8 (BERT fusion)"), flush=True)
    chosen = report["candidates"][0] if report.get("candidates") else {}
    print(f"\npdo dynamic built in {build_seconds:.1f} s on 32 calibration sentences; {chosen.get('reason', '')}".rstrip())


def cnn_model_and_data(kind: str):
    """(model, train images, test images, test labels or None): `digits` is the digits-trained ResNet-18 at 32x32
    (real weights, real labels); any other `kind` names a torchvision classifier (`resnet18`, `mobilenet_v2`, ...)
    at 224x224 with seeded random weights, fed the digits upsampled to 224. Its BatchNorm statistics are set from
    those images (as a trained network's are; untouched, MobileNetV2's outputs fade to ~1e-9): its speed is real,
    its accuracy is not (fidelity is the output's relative error against FP32 instead)."""
    from digits_resnet import load_digits_split, trained_digits_resnet18

    x_train, _, x_test, y_test = load_digits_split()
    if kind == "digits":
        return trained_digits_resnet18().eval(), x_train, x_test, y_test
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.get_model(kind, weights=None)
    upsample = lambda x: F.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False)  # noqa: E731
    x_train, x_test = upsample(x_train[:256]), upsample(x_test)
    for norm in (m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)):
        norm.momentum = None  # a plain average over the batches below
    model.train()
    with torch.no_grad():
        for batch in x_train[128:].split(32):
            model(batch)
    return model.eval(), x_train, x_test, None


def bench_resnet(args) -> None:
    model, x_train, x_test, y_test = cnn_model_and_data(args.cnn)
    calibration = list(x_train[:128].split(8))
    # Random weights amplify int8 noise (MobileNetV2: ~0.4 output error, for ONNX Runtime too) past the accuracy
    # budget, which would keep the float model: the speed of `static` is what these time.
    budget = {} if args.cnn == "digits" else {"preserve_accuracy_threshold": 0.99}
    config = PostDownloadOptimizationConfig(quantization_method="static", enable_low_rank_optimization=False,
                                            enable_tensor_factorization=False, auto_select_best_method=False, **budget)
    start = time.perf_counter()
    optimized, report = create_post_download_optimizer(config).optimize_model(
        model=copy.deepcopy(model), model_name=f"{args.cnn}-cnn", example_inputs=x_train[:1], calibration_data=calibration)
    build_seconds = time.perf_counter() - start
    saved = Path(tempfile.mkdtemp(prefix="pdo-bench-"))
    pdo_hub.save_optimized(optimized, saved, report=report)
    ort_dir = peers.tempdir()
    peers.ort_cnn(model, x_train[:2], calibration, ort_dir, THREADS)
    rng = random.Random(args.seed)
    pool = torch.cat([x_train, x_test])
    stream, sizes = [], [int(v) for v in args.cnn_batches.split(",")]
    for _ in range(args.cnn_requests):
        size = rng.choice(sizes)
        first = rng.randrange(0, len(pool) - size)
        stream.append(pool[first:first + size])
    variants = {
        "FP32 eager": lambda: model,
        "pdo static": lambda: ready(pdo_hub.load_optimized(saved, copy.deepcopy(model))),
        "ONNX Runtime int8 QDQ": lambda: ort_runner(ort_dir / "cnn_int8.onnx"),
    }
    results, outputs = run_cold_warm(variants, {"mixed": stream}, args.rounds, gaps={"mixed": args.gap})
    fidelity = {}
    with torch.inference_mode():
        reference = torch.cat([model(x_test[i:i + 100]) for i in range(0, len(x_test), 100)])
        for name, fresh in variants.items():
            run = fresh()
            got = torch.cat([run(x_test[i:i + 100]) for i in range(0, len(x_test), 100)])
            if y_test is not None:
                fidelity[name] = f"top-1 {100 * float((got.argmax(1) == y_test).float().mean()):.2f}%"
            else:  # untrained weights: top-1 agreement says little (ResNet-18 gave every image one class)
                fidelity[name] = f"output error vs FP32 {float((got - reference).norm() / reference.norm()):.4f} (relative L2)"
    shape = "x".join(str(v) for v in x_test.shape[2:])
    name = "digits ResNet-18" if args.cnn == "digits" else f"torchvision {args.cnn}"
    print(table(f"{name} {shape} mixed stream: {len(stream)} requests of batch {sorted({len(b) for b in stream})}, random order"
                + (f", {args.gap} s apart" if args.gap else ""),
                results["mixed"], fidelity, peer="ONNX Runtime int8 QDQ"), flush=True)
    stored = "+".join(report["selection"]["selected"] or ["nothing: the float model"])
    print(f"\npdo static built in {build_seconds:.1f} s on 128 calibration images; stored: {stored}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="minilm,resnet")
    parser.add_argument("--corpus", type=int, default=480, help="sentences in the corpus workload")
    parser.add_argument("--requests", type=int, default=240, help="batch-1 requests in the stream workload")
    parser.add_argument("--cnn-requests", type=int, default=60, help="requests in the mixed-batch CNN stream")
    parser.add_argument("--batch", type=int, default=32, help="MiniLM corpus: sentences per batch")
    parser.add_argument("--max-tokens", type=int, default=128, help="MiniLM: the longest input (the corpus truncates "
                        "there, stream requests are 5 to this many tokens); all-MiniLM-L6-v2 was trained up to 256")
    parser.add_argument("--cnn-batches", default="1,8,32", help="ResNet-18 mixed stream: the batch sizes it draws from")
    parser.add_argument("--cnn", default="digits",
                        help="the CNN: `digits` (the digits-trained ResNet-18 at 32x32), or a torchvision classifier at "
                             "224x224, e.g. resnet18, mobilenet_v2 (random weights: speed, and output error against FP32)")
    parser.add_argument("--rounds", type=int, default=2, help="warm passes per variant (median)")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--gap", type=float, default=0.0, help="seconds of quiet before every request of the streams "
                        "(sparse traffic, as a server sees; not timed); 0: requests back to back")
    parser.add_argument("--sentences", help="a text file, one sentence per line, instead of generated ones")
    parser.add_argument("--stdlib-text", action="store_true",
                        help="sentences from the docstrings of six standard-library modules instead of generated ones")
    parser.add_argument("--skip-compile", action="store_true", help="leave out torchao + torch.compile")
    parser.add_argument("--lengths", default="", help="MiniLM: also batch-1 latency at these token counts, e.g. 8,32,128")
    parser.add_argument("--baseline", help="MiniLM: a saved pdo-hub variant folder (e.g. built by an earlier version, "
                                           "`--save-variant`) timed beside the others as `pdo baseline`")
    parser.add_argument("--save-variant", help="MiniLM: also save this run's `dynamic` variant to this folder")
    args = parser.parse_args()
    models = [m for m in args.models.split(",") if m]
    if len(models) > 1:  # one process per model: what one leaves running (thread pools) skews the next
        for name in models:
            subprocess.run([sys.executable, __file__, *sys.argv[1:], "--models", name], check=True)
        return
    warnings.simplefilter("ignore")
    torch.set_num_threads(THREADS)
    print(json.dumps({"model": models[0], "cpu_flags": cpu.reported_flags(), "int8_kernels": cpu.int8_environment(),
                      "torch": torch.__version__, "python": platform.python_version(), "threads": THREADS}))
    (bench_minilm if models == ["minilm"] else bench_resnet)(args)


if __name__ == "__main__":
    main()
