"""bench/bench_stress.py: uffd-stress's model, its output, the harness's report and the
arithmetic, without the network; and one real build and run of uffd-stress from a cached
Debian source tree (skipped when none is cached)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest

from uffdharness.matrix.cachedir import cache_root
from uffdharness.matrix.kbuild import debsource, specs

REPO = Path(__file__).resolve().parent.parent


def _load():
    spec = importlib.util.spec_from_file_location("bench_stress", REPO / "bench/bench_stress.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_stress"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


bench = _load()

# uffd-stress anon 32 8 on 2 CPUs (Debian's 7.3.4 source), stdout as a pipe gets it.
ANON_OUTPUT = """TAP version 13
1..1
# nr_pages: 8192, nr_pages_per_cpu: 4096
# bounces: 7, mode: rnd racing ver read, userfaults: 4138 missing (2063+2075+) \x08
# bounces: 6, mode: racing ver read, userfaults: 3885 missing (1946+1939+) \x08
# bounces: 1, mode: rnd read, userfaults: 2041 missing (1015+1026+) 12 wp (6+6+) \x08
# bounces: 0, mode: read, userfaults: 4415 missing (2233+2182+) \x08
ok 1 uffd-stress anon
# Totals: pass:1 fail:0 xfail:0 xpass:0 skip:0 error:0
"""

MAKEFILE = """\
TEST_GEN_FILES += uffd-stress
$(TEST_GEN_PROGS): vm_util.c hugepage_settings.c
$(TEST_GEN_FILES): vm_util.c hugepage_settings.c
$(OUTPUT)/uffd-stress: uffd-common.c
$(OUTPUT)/uffd-unit-tests: uffd-common.c
$(OUTPUT)/protection_keys: pkey_util.c
CFLAGS = -Wall -O2 -I $(top_srcdir)
"""


def test_bounce_modes_follow_the_bits_of_the_bounces_left():
    assert bench.bounce_mode(7) == " rnd racing ver read"
    assert bench.bounce_mode(4) == " ver read"
    assert bench.bounce_mode(0) == " read"
    assert bench.bounce_mode(8) == " poll"
    assert bench.bounce_mode(15) == " rnd racing ver poll"


def test_poll_serves_faults_only_from_the_ninth_bounce_on():
    assert bench.poll_bounces(8) == 0
    assert bench.poll_bounces(9) == 1
    assert bench.poll_bounces(16) == 8
    assert bench.poll_bounces(32) == 16


def test_area_pages_round_down_to_whole_per_cpu_shares():
    assert bench.parallel_threads(2) == 2
    assert bench.parallel_threads(64) == 32
    assert bench.area_pages(32, 4096, 2) == 8192
    assert bench.area_pages(1, 4096, 3) == 255  # 256 pages, 85 per CPU
    assert bench.area_pages(4, 2 << 20, 2) == 2


def test_hugetlb_needs_both_areas_and_one_spare_per_extra_cpu():
    assert bench.hugepages_needed(32, 2 << 20, 2) == 33
    assert bench.hugepages_needed(32, 2 << 20, 1) == 32
    assert bench.hugepages_needed(2048, 1 << 30, 4) == 7


def test_the_output_gives_pages_modes_and_faults_per_bounce():
    output = bench.parse_stress_output(ANON_OUTPUT)
    assert (output.nr_pages, output.nr_pages_per_cpu) == (8192, 4096)
    assert output.modes == (" rnd racing ver read", " racing ver read", " rnd read", " read")
    assert output.missing_faults == (4138, 3885, 2041, 4415)
    assert output.wp_faults == (0, 0, 12, 0)
    assert output.passed and output.skip_reason is None


def test_a_skip_and_a_failure_are_told_apart():
    skipped = bench.parse_stress_output(
        "TAP version 13\n1..1\nok 1 # SKIP Skipping userfaultfd... not enough hugepages\n"
    )
    assert skipped.skip_reason == "Skipping userfaultfd... not enough hugepages"
    assert not skipped.passed
    failed = bench.parse_stress_output("# nr_pages: 8, nr_pages_per_cpu: 4\nnot ok 1 uffd-stress\n")
    assert not failed.passed and failed.skip_reason is None


def test_the_link_sources_come_from_the_makefile():
    assert bench.link_sources(MAKEFILE) == ["vm_util.c", "hugepage_settings.c", "uffd-common.c"]


def test_the_compile_line_puts_the_trees_uapi_headers_first(tmp_path):
    mm_dir = tmp_path / "tree/tools/testing/selftests/mm"
    command = bench.compile_command(
        "gcc", mm_dir, tmp_path / "obj/usr/include", ["uffd-common.c"], tmp_path / "out"
    )
    assert command[0] == "gcc"
    first_include = command.index("-isystem") + 1
    assert command[first_include] == str(tmp_path / "obj/usr/include")
    assert str(tmp_path / "tree/tools/include/uapi") in command
    assert command[command.index("-I") + 1] == str(tmp_path / "tree/tools/testing/selftests")
    assert [c for c in command if c.endswith(".c")] == [
        str(mm_dir / "uffd-stress.c"),
        str(mm_dir / "uffd-common.c"),
    ]
    assert command[-2:] == ["-o", str(tmp_path / "out")]


def test_a_tree_with_headers_made_in_it_is_unclean(tmp_path):
    assert bench.unclean_markers(tmp_path) == []
    (tmp_path / "usr/include/linux").mkdir(parents=True)
    (tmp_path / ".config").write_text("")
    assert bench.unclean_markers(tmp_path) == [".config", "usr/include/linux"]


def test_the_cache_entry_is_named_by_the_source_version():
    name = bench.entry_name("linux-source-7.3=7.3.4-1~bpo13+1")
    assert name == "linux-source-7.3_7.3.4-1~bpo13+1"
    assert bench.entry_name("git 1a2b+dirty.0f/x") == "git_1a2b+dirty.0f_x"


def test_the_harness_report_gives_the_run_of_the_kind_and_engine():
    report = {
        "runs": [
            {"memory": "anon", "engine": "thread", "mib": 32, "bounces": 8, "pages": 65536,
             "seconds": 2.0, "pages_per_s": 32768.0, "verdict": "pass"},
            {"memory": "anon", "engine": "native", "mib": 32, "bounces": 8, "pages": 65536,
             "seconds": 0.5, "pages_per_s": 131072.0, "verdict": "pass"},
        ]
    }  # fmt: skip
    run = bench.harness_run(report, "anon", "native")
    assert run == bench.HarnessRun(pages=65536, seconds=0.5, pages_per_s=131072.0, verdict="pass")
    with pytest.raises(ValueError, match="no run of memory 'shmem'"):
        bench.harness_run(report, "shmem", "native")
    with pytest.raises(ValueError, match='no "runs" list'):
        bench.harness_run({"results": []}, "anon", "native")


def test_ratios_and_medians():
    assert bench.pages_per_s(65536, 0.5) == 131072
    with pytest.raises(ValueError):
        bench.pages_per_s(1, 0)
    assert bench.ratio(150.0, 100.0) == 1.5
    assert bench.ratio(None, 100.0) is None
    assert bench.ratio(1.0, 0.0) is None
    assert bench.median([3.0, None, 1.0, 2.0]) == 2.0
    assert bench.median([None]) is None


def _stress_run(seconds: float, loop_s: float) -> object:
    output = bench.parse_stress_output(ANON_OUTPUT)
    return bench.StressRun(output, pages=8192 * 4, wall_s=seconds, loop_s=loop_s)


def _harness(pages_per_s: float, wall_s: float) -> object:
    run = bench.HarnessRun(pages=32768, seconds=32768 / pages_per_s, pages_per_s=pages_per_s,
                           verdict="pass")  # fmt: skip
    return bench.HarnessTimed(run, wall_s)


def test_a_row_compares_the_medians_of_both_sides():
    result = bench.KindResult(
        "anon",
        "anon",
        [_stress_run(0.5, 0.4), _stress_run(0.25, 0.2), _stress_run(1.0, 0.8)],
        [_harness(65536.0, 1.0), _harness(262144.0, 0.5), _harness(131072.0, 2.0)],
    )
    row = result.row()
    assert row["uffd_stress"] == 65536  # 32768 pages in 0.5 s
    assert row["uffd_stress_loop"] == 81920
    assert row["harness_loop"] == 131072
    assert row["harness_wall"] == 32768
    assert row["ratio_loop"] == 2.0
    assert row["ratio_wall"] == 0.5
    line = bench.format_row(result)
    assert "65,536" in line and "2.00" in line and "0.50" in line
    assert "by uffd threads" in line


def test_without_the_harness_only_uffd_stress_is_shown():
    result = bench.KindResult("anon", "anon", [_stress_run(0.5, 0.4)], [])
    assert result.row()["ratio_loop"] is None
    assert bench.format_row(result).count(" - ") >= 2


def test_the_thread_model_line_names_threads_and_modes():
    line = bench.describe_model(2, 8)
    assert "2 locking + 2 uffd + 2 background threads" in line
    assert "read(2) in 8 and poll(2) in 0 of 8 bounces" in line
    assert line.endswith("rnd racing ver read, racing ver read, rnd ver read, ver read, "
                         "rnd racing read, racing read, rnd read, read")  # fmt: skip


def test_arguments_default_and_deduplicate():
    args = bench.parse_args([])
    assert (args.memory, args.mib, args.bounces, args.reps) == (["anon"], 32, 8, 3)
    assert (args.source, args.engine) == ("debian-src:7.3", "native")
    args = bench.parse_args(["--memory", "memfd", "--memory", "anon", "--memory", "memfd"])
    assert args.memory == ["memfd", "anon"]
    with pytest.raises(SystemExit):
        bench.parse_args(["--mib", "0"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--memory", "anon-thp"])


def test_no_source_package_is_a_skip_with_exit_0(monkeypatch, capsys):
    def no_source(spec_text, log):
        raise bench.Skipped(f"{spec_text}: the kernel source cannot be had: no network")

    monkeypatch.setattr(bench, "obtain_source", no_source)
    assert bench.main([]) == 0
    assert capsys.readouterr().out == (
        "skipped: debian-src:7.3: the kernel source cannot be had: no network\n"
    )


def test_a_cached_source_is_found_without_apt(tmp_path):
    spec = specs.parse("debian-src:7.3")
    assert debsource.cached(spec, tmp_path) is None
    for version in ("7.3.2-1", "7.3.4-1~bpo13+1"):
        entry = tmp_path / "sources/debian" / f"linux-source-7.3_{version}"
        (entry / "tree").mkdir(parents=True)
        meta = {"package": "linux-source-7.3", "version": version}
        (entry / "source.json").write_text(json.dumps(meta))
    assert debsource.cached(spec, tmp_path).package_version == "7.3.4-1~bpo13+1"
    exact = specs.parse("debian-src:7.3.2-1")
    assert debsource.cached(exact, tmp_path).package_version == "7.3.2-1"
    assert debsource.cached(specs.parse("debian-src:7.2"), tmp_path) is None


CACHED_73 = debsource.cached(specs.parse(bench.DEFAULT_SOURCE), cache_root())


@pytest.mark.skipif(CACHED_73 is None, reason=f"{bench.DEFAULT_SOURCE} is not in {cache_root()}")
@pytest.mark.skipif(shutil.which("gcc") is None or shutil.which("make") is None, reason="no gcc")
@pytest.mark.timeout(300)
def test_uffd_stress_builds_from_the_cached_tree_and_runs(tmp_path):
    tree = CACHED_73.path
    binary = bench.build_uffd_stress(tree, CACHED_73.identity.text, tmp_path, lambda _: None)
    assert binary == tmp_path / bench.entry_name(CACHED_73.identity.text) / "uffd-stress"
    assert bench.unclean_markers(tree) == []  # make O= headers left the tree as it was
    meta = json.loads((binary.parent / "build.json").read_text())
    assert meta["sources"][0] == "uffd-stress.c" and "uffd-common.c" in meta["sources"]
    assert not list(binary.parent.glob("build-*"))  # the scratch directory is gone
    run = bench.run_uffd_stress(binary, "anon", 4, 2, timeout=120)
    assert isinstance(run, bench.StressRun), run
    pages = bench.area_pages(4, 4096, bench.os.sysconf("SC_NPROCESSORS_ONLN"))
    assert run.output.nr_pages == pages and run.pages == 2 * pages
    assert run.output.modes == (" rnd read", " read")  # bounces 1 and 0
    assert len(run.output.missing_faults) == 2
    assert run.wall_s > 0 and run.loop_s is not None and run.loop_s <= run.wall_s
    # A second call is the cache.
    assert bench.build_uffd_stress(tree, CACHED_73.identity.text, tmp_path, print) == binary


FAKE_HARNESS = """\
import json, sys
seconds = float(sys.argv.pop(1))
argv = sys.argv[1:]
option = dict(zip(argv[1::2], argv[2::2]))  # argv[0] is "stress"
pages = 8192 * int(option["--bounces"])
run = {"memory": option["--memory"], "engine": option["--engine"], "mib": int(option["--mib"]),
       "bounces": int(option["--bounces"]), "pages": pages, "seconds": seconds,
       "pages_per_s": pages / seconds, "verdict": "pass"}
json.dump({"runs": [run]}, open(option["--json"], "w"))
"""


@pytest.mark.parametrize(
    ("harness_s", "status", "verdict"),
    [
        (0.25, 0, "target loop/us >= 1.0 met"),
        (4.0, 1, "target loop/us >= 1.0 missed: anon"),
        (None, 0, "rest by background UFFDIO_COPY)"),  # no stress command: the footnote ends
    ],
)
def test_both_sides_run_interleaved_and_the_target_is_judged(
    monkeypatch, tmp_path, capsys, harness_s, status, verdict
):
    # uffd-stress: 32768 pages in at least 0.5 s, at most 65536 pages/s
    fake_stress = tmp_path / "uffd-stress"
    fake_stress.write_text(f"#!/bin/sh\nsleep 0.5\ncat <<'EOF'\n{ANON_OUTPUT}EOF\n")
    fake_stress.chmod(0o755)
    fake_harness = tmp_path / "harness.py"
    fake_harness.write_text(FAKE_HARNESS)
    order = []

    def harness_argv(memory, mib, bounces, engine, json_path, churn=False):
        order.append("uffdharness")
        options = ["--memory", memory, "--mib", str(mib), "--bounces", str(bounces)]
        options += ["--engine", engine, "--json", json_path]
        return [sys.executable, str(fake_harness), str(harness_s), "stress", *options]

    real_run = bench.run_uffd_stress

    def run_uffd_stress(*args, **kwargs):
        order.append("uffd-stress")
        return real_run(*args, **kwargs)

    monkeypatch.setattr(bench, "obtain_source", lambda spec, log: (tmp_path, "fake", "fake 1.0"))
    monkeypatch.setattr(bench, "build_uffd_stress", lambda *args: fake_stress)
    monkeypatch.setattr(bench, "harness_available", lambda: harness_s is not None)
    monkeypatch.setattr(bench, "_harness_argv", harness_argv)
    monkeypatch.setattr(bench, "run_uffd_stress", run_uffd_stress)
    assert bench.main(["--bounces", "4", "--reps", "2"]) == status
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("anon "))
    assert "   32768  " in row  # 8192 pages x 4 bounces
    assert out.rstrip().endswith(verdict)
    if harness_s is None:
        assert order == ["uffd-stress", "uffd-stress"]
        assert "uffdharness stress not available: timing uffd-stress alone" in out
        return
    assert order == ["uffd-stress", "uffdharness", "uffdharness", "uffd-stress"]
    assert "uffdharness stress not available" not in out
    assert f"{32768 / harness_s:,.0f}" in row


def test_a_long_run_names_the_mode_bits_instead_of_every_bounce():
    line = bench.describe_model(4, 2000)
    assert "4 locking + 4 uffd + 4 background threads" in line
    assert "read(2) in 1000 and poll(2) in 1000 of 2000 bounces" in line
    assert line.endswith("1 rnd, 2 racing, 4 ver, 8 poll (else read)")


def test_a_bad_source_spec_is_exit_2_before_any_download(capsys):
    assert bench.main(["--source", "debian-src:seven"]) == 2
    assert "expected debian-src:X.Y" in capsys.readouterr().err


def test_the_harness_runs_uffd_stress_s_design_without_churn_unless_asked():
    argv = bench._harness_argv("anon", 32, 8, "native", "/tmp/x.json")
    assert "--no-churn" in argv
    assert "--no-churn" not in bench._harness_argv("anon", 32, 8, "native", "/tmp/x.json", True)
