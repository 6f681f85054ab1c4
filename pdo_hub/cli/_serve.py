"""`pdo-hub serve`: a Hub-compatible endpoint over the optimized cache (Starlette + uvicorn)."""

from __future__ import annotations

import argparse
import sys


def _run(args: argparse.Namespace) -> int:
    from pdo_hub.serve.service import ServeOptions, build_server

    options = ServeOptions(host=args.host, port=args.port, cache=args.cache, repos=args.repos, upstream=args.upstream,
                           tokens_file=args.tokens, public_url=args.public_url, insecure=args.insecure,
                           config=args.preset or args.config, allow_downloads=args.allow_downloads)
    server = build_server(options)
    with server:
        print(f"pdo-hub serve: {server.url} (cache {server.pdo_cache_root}"
              + (f", upstream {args.upstream}" if args.upstream else "") + ")", flush=True)
        print(f"Clients: export HF_ENDPOINT={server.url}", flush=True)
        interrupted = server.serve_forever()
    if not interrupted:
        print("pdo-hub serve: the server stopped by itself (see the log above)", file=sys.stderr)
        return 1
    print("pdo-hub serve: stopped", file=sys.stderr)
    return 0


def register(commands) -> None:
    from pdo_hub.cli._optimize import add_config_options

    parser = commands.add_parser("serve", help="serve the optimized cache to other machines as a Hub-compatible endpoint",
                                 description="Stock clients (huggingface_hub, transformers, pdo_hub.from_pretrained) set "
                                             "HF_ENDPOINT to this server. Read-only unless a token file grants write scope.")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1; others need --tokens or --insecure)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--cache", default=None, help="optimized cache to serve (default $PDO_HUB_CACHE)")
    parser.add_argument("--repos", default=None, help="folder for repos pushed to this server (default <cache>/.hub-repos)")
    parser.add_argument("--upstream", default=None, metavar="URL", help="also pass originals through from this Hub (fetched once, then served from disk)")
    parser.add_argument("--tokens", default=None, metavar="FILE", help="token file (TOML or JSON): users, read/write scopes, namespaces")
    parser.add_argument("--public-url", default=None, help="the URL clients reach this server at (for URLs in answers)")
    parser.add_argument("--insecure", action="store_true", help="allow a non-loopback bind without any token")
    parser.add_argument("--allow-downloads", action="store_true",
                        help="enable POST /models/download (fetch and optimize on request; needs a write token when tokens are set)")
    add_config_options(parser)
    parser.set_defaults(run=_run)
