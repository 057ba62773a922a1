"""The config fragment and the check of a generated .config: a real .config that Debian's
6.1 source generated from tinyconfig and the fragment without CONFIG_INET=y (where 9P_FS
depends on INET and olddefconfig drops it without a word), and `uffdharness kconfig`."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from uffdharness import cli
from uffdharness.matrix.kbuild import kconfig, options

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "kconfig"
WITHOUT_INET = FIXTURES / "linux-6.1.192-tinyconfig-without-inet.config"
SYMBOLS_61 = FIXTURES / "linux-6.1.192-symbols.json"


SYMBOL_KALLSYMS = kconfig.Symbol("KALLSYMS", "init/Kconfig:1", ())
# Options the fragment gained after the fixtures were recorded (zram swap for the guests):
# the fixture's symbol index does not name them, so its check counts them absent.
NEWER_THAN_FIXTURES = ("ZRAM", "ZSMALLOC", "CRYPTO", "CRYPTO_LZO")
# asked for after the fixtures were taken: CMA (=n there) and what it selects (absent)
CMA_OPTIONS = ("CMA", "CONTIG_ALLOC")


def index_61() -> dict[str, kconfig.Symbol]:
    symbols = json.loads(SYMBOLS_61.read_text())["symbols"]
    return {
        name: kconfig.Symbol(name, found["defined_in"], tuple(found["depends"]))
        for name, found in symbols.items()
    }


def test_the_fragment_sets_every_settable_option_and_parses_as_kconfig_does():
    values = kconfig.parse_assignments(options.fragment())
    settable = [o.name for o in options.REQUIRED if o.settable]
    assert list(values) == settable and set(values.values()) == {"y"}
    # the options without a prompt are named, for the reader, and still checked
    for option in options.REQUIRED:
        assert f"CONFIG_{option.name}" in options.fragment()
    assert set(kconfig.wanted_values()) == set(options.REQUIRED_NAMES)


def test_the_options_the_guest_needs_are_all_there():
    needed = {"USERFAULTFD", "PTE_MARKER_UFFD_WP", "HUGETLBFS", "TRANSPARENT_HUGEPAGE"}
    needed |= {"MEMFD_CREATE", "SHMEM", "SWAP", "VIRTIO_PCI", "NET_9P_VIRTIO", "9P_FS"}
    needed |= {"SERIAL_8250_CONSOLE", "DEVTMPFS", "BLK_DEV_INITRD", "ACPI", "PVH", "INET"}
    assert needed <= set(options.REQUIRED_NAMES)
    assert len(set(options.REQUIRED_NAMES)) == len(options.REQUIRED_NAMES)


def test_a_real_6_1_config_without_inet_names_9p_fs_as_dropped_with_its_dependency():
    config = kconfig.read_config(WITHOUT_INET)
    wanted = {name: value for name, value in kconfig.wanted_values().items() if name != "INET"}
    result = kconfig.check_config(config, wanted, index_61())
    assert not result.ok
    (dropped,) = result.dropped
    assert str(dropped) == (
        "CONFIG_9P_FS=unset where y was asked (fs/9p/Kconfig:2: depends on INET && NET_9P)"
    )
    assert result.absent == ("USERFAULTFD_RWP", *CMA_OPTIONS, *NEWER_THAN_FIXTURES)  # RWP: 7.3's
    assert "1 option(s) dropped: CONFIG_9P_FS=unset" in result.summary()
    # everything else of the fragment came through olddefconfig
    assert config["USERFAULTFD"] == config["PTE_MARKER_UFFD_WP"] == config["SYSCTL"] == "y"


def test_what_a_spec_adds_is_checked_too():
    config = kconfig.read_config(WITHOUT_INET)
    wanted = kconfig.wanted_values({"INET": "y", "SWAP": "n", "KALLSYMS": "y"})
    result = kconfig.check_config(config, wanted, index_61() | {"KALLSYMS": SYMBOL_KALLSYMS})
    dropped = {d.name: str(d) for d in result.dropped}
    assert set(dropped) == {"INET", "SWAP", "9P_FS", "KALLSYMS"}
    assert dropped["SWAP"].startswith("CONFIG_SWAP=y where n was asked")


def test_assignments_and_their_errors():
    text = 'CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C="x y"\n\n# a comment\nCONFIG_A=m\n'
    assert kconfig.parse_assignments(text) == {"A": "m", "B": "n", "C": '"x y"'}
    with pytest.raises(kconfig.FragmentError, match="frag:2: not a CONFIG_NAME=value"):
        kconfig.parse_assignments("CONFIG_A=y\nA=y\n", "frag")
    with pytest.raises(kconfig.FragmentError):
        kconfig.parse_assignments("CONFIG_A=\n")


def test_symbol_index_skips_help_text_and_follows_if_blocks(tmp_path):
    (tmp_path / "arch" / "x86").mkdir(parents=True)
    (tmp_path / "arch" / "arm64").mkdir(parents=True)
    (tmp_path / "Kconfig").write_text(
        'menuconfig NET\n\tbool "Networking"\n\thelp\n\t  Say Y\n'
        "\t  if you have one of these machines.\n\n\t  config NOT_A_SYMBOL\n"
        'if NET\nconfig INET\n\tbool "TCP/IP"\n\tdepends on !UML\nendif # NET\n'
        'choice\n\tprompt "mode"\n\tconfig MODE_A\n\t\tbool "a"\nendchoice\n'
        "config AFTER\n\tdef_bool y\n"
    )
    (tmp_path / "arch" / "x86" / "Kconfig").write_text("config X86_ONLY\n\tdef_bool y\n")
    (tmp_path / "arch" / "arm64" / "Kconfig").write_text("config ARM64_ONLY\n\tdef_bool y\n")
    index = kconfig.symbol_index(tmp_path)
    assert set(index) == {"NET", "INET", "MODE_A", "AFTER", "X86_ONLY"}
    assert index["INET"] == kconfig.Symbol("INET", "Kconfig:9", ("if NET", "depends on !UML"))
    assert index["AFTER"].depends == () and index["NET"].depends == ()


def test_kconfig_command_prints_the_fragment_and_checks_a_config(capsys):
    assert cli.main(["kconfig"]) == 0
    assert capsys.readouterr().out == options.fragment()
    assert cli.main(["kconfig", "--check", str(WITHOUT_INET)]) == 1
    out = capsys.readouterr().out
    assert "not =y: CONFIG_9P_FS\n" in out and "not =y: CONFIG_INET\n" in out
    needed = len(options.REQUIRED) - 3 - len(NEWER_THAN_FIXTURES) - len(CMA_OPTIONS)
    assert f"{needed} of {len(options.REQUIRED)} options as needed" in out
    assert cli.main(["kconfig", "--check", str(FIXTURES / "none.config")]) == 2
    with pytest.raises(SystemExit):
        cli.main(["kconfig", "--tree", "/"])


def test_kconfig_check_of_a_complete_config_passes(tmp_path):
    complete = tmp_path / ".config"
    complete.write_text("".join(f"CONFIG_{name}=y\n" for name in options.REQUIRED_NAMES))
    out = io.StringIO()
    args = cli.build_parser().parse_args(["kconfig", "--check", str(complete)])
    assert args.handler(args, out) == 0
    assert out.getvalue().endswith(
        f"{len(options.REQUIRED)} of {len(options.REQUIRED)} options as needed\n"
    )
