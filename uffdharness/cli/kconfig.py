"""``uffdharness kconfig``: the kernel config fragment the catalogue needs; checking a .config.

    uffdharness kconfig                          print the fragment
    uffdharness kconfig --check .config [--tree DIR]
                                                 which options a .config lacks

The fragment is the list the matrix's own builds use (``matrix.kbuild.options``): on top
of ``make tinyconfig``, then ``make olddefconfig``, it gives a kernel that boots in qemu
without modules and runs every scenario.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TextIO

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "kconfig",
        help="print the kernel config fragment the catalogue needs; check a .config",
        description="Print the config fragment every scenario and a module-less qemu guest "
        "need, built in. Use it on top of `make tinyconfig`, then run `make olddefconfig`; "
        "options a kernel version lacks are harmless. With --check, list the options a "
        ".config does not have (exit 1 if any).",
    )
    parser.add_argument(
        "--check", metavar="CONFIG", help="check this .config instead of printing the fragment"
    )
    parser.add_argument(
        "--tree",
        metavar="DIR",
        help="with --check: the kernel tree the .config is for, to tell options that "
        "version lacks (harmless) from options it dropped (and what they depend on)",
    )
    parser.set_defaults(handler=run, usage_error=parser.error)


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    from uffdharness.matrix.kbuild import kconfig, options

    out = out or sys.stdout
    if args.check is None:
        if args.tree:
            args.usage_error("--tree goes with --check")
        out.write(options.fragment())
        return 0
    config_path = Path(args.check)
    try:
        config = kconfig.read_config(config_path)
    except (OSError, UnicodeDecodeError, kconfig.FragmentError) as exc:
        sys.stderr.write(f"uffdharness kconfig: cannot read {config_path}: {exc}\n")
        return 2
    if args.tree:
        tree = Path(args.tree)
        if not (tree / "Kconfig").is_file():
            sys.stderr.write(f"uffdharness kconfig: {tree} is not a kernel tree (no Kconfig)\n")
            return 2
        index = kconfig.symbol_index(tree)
        check = kconfig.check_config(config, kconfig.wanted_values(), index)
        for dropped in check.dropped:
            out.write(f"missing: {dropped}\n")
        for name in check.absent:
            out.write(f"not in this kernel (harmless): CONFIG_{name}\n")
        missing = len(check.dropped)
    else:
        wanted = kconfig.wanted_values()
        lacking = [name for name, value in wanted.items() if config.get(name) != value]
        for name in lacking:
            out.write(f"not =y: CONFIG_{name}\n")
        missing = len(lacking)
        if lacking:
            out.write("(--tree DIR tells options this version lacks from dropped ones)\n")
    total = len(options.REQUIRED)
    out.write(f"{config_path}: {total - missing} of {total} options as needed\n")
    return 1 if missing else 0
