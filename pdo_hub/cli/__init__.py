"""The `pdo-hub` command: the only place that prints for humans.

One module per command (`_demo`, `_optimize`, `_mirror`, `_push`, `_export`, `_serve`, `_cache`), each with a
`register(subparsers)` that adds its parser and sets `run`; `_output` holds the shared tables.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from pdo_hub.core.errors import PdoHubError

# Command modules, in the order `pdo-hub --help` lists them.
_COMMANDS = ("_demo", "_optimize", "_mirror", "_push", "_export", "_serve", "_cache")
_OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "PDO_HUB_OFFLINE")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pdo-hub", description="Hugging Face Hub model mirror with post-download optimization.")
    commands = parser.add_subparsers(dest="command", required=True)
    for name in _COMMANDS:
        try:
            module = importlib.import_module(f"pdo_hub.cli.{name}")
        except ModuleNotFoundError as err:
            if err.name == f"pdo_hub.cli.{name}":
                continue  # command not built yet
            raise
        module.register(commands)
    return parser


def _quiet_third_party() -> None:
    """Keep the terminal for pdo-hub's own output: torchao's import-time notices and transformers' bars."""
    import logging

    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
    # transformers reads this when it is imported; importing it here would cost a cached mirror run ~1 s.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    saved = {name: os.environ.get(name) for name in _OFFLINE_VARIABLES}
    if getattr(args, "offline", False):
        # Before huggingface_hub is imported (it reads HF_HUB_OFFLINE once, at import): no request at all.
        os.environ.update({name: "1" for name in _OFFLINE_VARIABLES})
    _quiet_third_party()
    try:
        return args.run(args)
    except PdoHubError as err:
        print(f"pdo-hub: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 - only the Hub's answers become one line; anything else is a bug
        message = _hub_error_line(err)
        if message is None:
            raise
        print(f"pdo-hub: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pdo-hub: interrupted", file=sys.stderr)
        return 130
    finally:  # main() is also called in-process (tests, scripts): leave the environment as it was
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _hub_error_line(err: Exception) -> str | None:
    """One line for an error the Hub answered (no such repo, revision or file; gated; denied), else None."""
    hub_errors = sys.modules.get("huggingface_hub.errors")  # loaded if and only if a Hub call was made
    if hub_errors is None or not isinstance(err, hub_errors.HfHubHTTPError):
        return None
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    url = getattr(err.response, "url", None) if err.response is not None else None
    hint = " Check the repo id and revision, and HF_TOKEN for private or gated repos." if err.response is not None \
        and err.response.status_code in (401, 403, 404) else ""
    return f"{type(err).__name__}: {first}" + (f" ({url})" if url else "") + "." + hint


if __name__ == "__main__":
    sys.exit(main())
