"""The ``vyrecache`` command line: ``info``, ``demo`` and ``bench``.

Run ``python -m vyrecache --help`` (or the installed ``vyrecache`` script).
Every command has ``--help`` and ``--json``; a bad argument or a cache error
ends the command with one line on stderr and a non-zero exit status:

* 0: success;
* 1: the command ran but failed (a cache or device error, a benchmark that
  failed, bytes that did not verify);
* 2: bad arguments or a missing optional dependency;
* 130: interrupted.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from typing import NoReturn

from .._version import __version__

__all__ = ["main", "build_parser", "parse_size", "CommandError"]

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mb": 1 << 20,
          "mib": 1 << 20, "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30, "t": 1 << 40, "tib": 1 << 40}


class CommandError(Exception):
    """A command cannot go on; the message is printed as one line and the exit status is kept."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (no usage dump) and exit with status 2."""

    def error(self, message: str) -> NoReturn:
        """Print ``prog: error: message. Fix: ...`` on one line and exit with status 2."""
        self.exit(2, f"{self.prog}: error: {message}. Fix: see `{self.prog} --help`.\n")


def parse_size(text: str) -> int:
    """Parse a byte size such as ``4096``, ``64KiB``, ``16M`` or ``1.5GiB`` (binary units).

    Raises:
        argparse.ArgumentTypeError: the text is not a non-negative size.
    """
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS:
        raise argparse.ArgumentTypeError(
            f"invalid size {text!r} (expected e.g. 4096, 64KiB, 16MiB or 1GiB)")
    return int(float(match.group(1)) * _UNITS[unit])


def _int_at_least(text: str, minimum: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise argparse.ArgumentTypeError(f"invalid {what} {text!r} (expected an integer >= {minimum})")
    return value


def positive_int(text: str) -> int:
    """Parse an integer >= 1.

    Raises:
        argparse.ArgumentTypeError: the text is not an integer >= 1.
    """
    return _int_at_least(text, 1, "count")


def non_negative_int(text: str) -> int:
    """Parse an integer >= 0.

    Raises:
        argparse.ArgumentTypeError: the text is not an integer >= 0.
    """
    return _int_at_least(text, 0, "number")


def positive_float(text: str) -> float:
    """Parse a finite number > 0 (seconds, exponents).

    Raises:
        argparse.ArgumentTypeError: the text is not a finite number > 0.
    """
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r} (expected a number > 0)") from None
    if not 0.0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"invalid number {text!r} (expected a number > 0)")
    return value


def build_parser() -> argparse.ArgumentParser:
    """Return the parser of the whole command line, every sub-command registered."""
    from . import bench, demo, info, replay

    parser = _Parser(prog="vyrecache",
                     description="vyrecache: a tiered cache for GPU buffers (Vulkan, with a host fallback).")
    parser.add_argument("--version", action="version", version=f"vyrecache {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    info.register(commands)
    demo.register(commands)
    bench.register(commands)
    replay.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with *argv* (default ``sys.argv[1:]``) and return the exit status.

    Errors never escape as tracebacks: bad arguments exit with status 2 and a
    vyrecache error (``vc.CacheError``) with status 1, each as one line on stderr.
    """
    from ..errors import CacheError

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        status: int = args.run(args)
        return status
    except CommandError as exc:
        print(f"vyrecache {args.command}: error: {exc}", file=sys.stderr)
        return exc.status
    except CacheError as exc:
        # Messages of vyrecache errors already end with "Fix: ...".
        print(f"vyrecache {args.command}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"vyrecache {args.command}: interrupted", file=sys.stderr)
        return 130
