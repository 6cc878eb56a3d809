"""`medvit` entry point. Parses arguments, then calls the library.

Each subcommand is a small module in `medvit.commands` with `register(subparsers)` and a
`run(args) -> int`. Those modules import nothing heavy at top level, so `medvit --help` stays
instant; torch, timm and albumentations are imported inside `run`.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import re
import sys
from typing import Sequence

from medvit import __version__
from medvit.errors import MedvitError

# Only commands that exist are listed: no placeholders.
COMMANDS = ["synth", "ingest", "train", "pretrain", "evaluate", "explain", "predict", "compare", "study", "analyze"]


def _available_commands() -> list[str]:
    names = []
    for name in COMMANDS:
        if importlib.util.find_spec(f"medvit.commands.{name}") is not None:
            names.append(name)
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medvit",
        description="Ingest DICOM mammograms, train ViT and CNN backbones, evaluate and explain them.",
    )
    parser.add_argument("--version", action="version", version=f"medvit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _available_commands():
        importlib.import_module(f"medvit.commands.{name}").register(sub)
    return parser


OVERRIDE = re.compile(r"^[A-Za-z_][\w.]*=")  # dotted.key=value


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse `argv`; a command with a positional `overrides` (key=value) list accepts them
    anywhere among its flags, in any order (`train --backbone x data.kind=mnist --max-steps 20
    data.workers=0`). argparse stops the positional list at the first flag, and its
    `parse_intermixed_args` refuses parsers with subcommands, so the key=value items it leaves
    over are collected here, in the order given. Anything else left over is an error."""
    args, extra = parser.parse_known_args(argv)
    if extra and isinstance(getattr(args, "overrides", None), list):
        stray = [item for item in extra if not OVERRIDE.match(item)]
        if not stray:
            args.overrides = args.overrides + extra
            return args
        extra = stray
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parse_args(parser, argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except MedvitError as err:
        print(f"medvit {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
