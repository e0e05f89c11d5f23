"""mmfuse: the plugin's steps on files, headless.

Each subcommand lives in a module of :mod:`napari_mmfuse.commands` that defines
``add_parser(subparsers)``; the parser it adds sets ``func(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import signal
import sys
import threading

from . import __version__, commands
from .io.atomic import install_signal_handlers


def build_parser() -> argparse.ArgumentParser:
    """The ``mmfuse`` argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="mmfuse", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if not module.name.startswith("_"):
            importlib.import_module(f"{commands.__name__}.{module.name}").add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``mmfuse``; errors about the input are printed as one line and exit with 1.

    SIGINT and SIGTERM end the command with ``mmfuse: interrupted`` and exit status 130 or
    143 (128 + the signal number); the output being written is left as it was before (its
    temporary is removed, see :mod:`napari_mmfuse.io.atomic`).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)} if in_main_thread else {}
    if in_main_thread:
        install_signal_handlers()
    try:
        from .core.threads import apply_thread_policy

        apply_thread_policy("cli")  # every available CPU; MMFUSE_THREADS overrides (see core.threads)
        return int(args.func(args) or 0)
    except KeyboardInterrupt as interruption:
        print("mmfuse: interrupted", file=sys.stderr)
        return 128 + int(getattr(interruption, "signum", signal.SIGINT))
    except (ValueError, OSError) as error:  # FileNotFoundError, FileExistsError, PermissionError, disk full
        print(f"mmfuse {args.command}: error: {error}", file=sys.stderr)
        return 1
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


if __name__ == "__main__":
    sys.exit(main())
