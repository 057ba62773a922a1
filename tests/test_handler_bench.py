"""The benchmark's pieces on a tiny workload: the plain C loop, the report, the command."""

from __future__ import annotations

import json

import pytest
from test_handler_support import assert_indexed, no_leaks  # noqa: F401 - fixture

from uffdharness import _native, benchmark
from uffdharness.abi import Feature, RegisterMode
from uffdharness.cli import main
from uffdharness.uffd import probe_api

pytestmark = [pytest.mark.usefixtures("no_leaks"), pytest.mark.timeout(60)]

ffi, lib = _native.ffi, _native.lib


@pytest.mark.parametrize("wp", [False, True])
def test_c_loop(wp, uffd_factory, region_factory):
    region = region_factory("anon", 32)
    source = region_factory("anon", 32)
    source.fill_indexed(3)
    if wp:
        region.fill_indexed(3)
        uffd = uffd_factory(Feature.PAGEFAULT_FLAG_WP)
        uffd.register(region, mode=RegisterMode.WP)
        uffd.writeprotect(region)
    else:
        uffd = uffd_factory(Feature(0))
        uffd.register(region)
    faults = ffi.new("uint64_t *")
    elapsed = lib.uh_bench_c_loop(
        uffd.fileno(),
        ffi.cast("char *", region.addr),
        32,
        region.page_size,
        ffi.cast("char *", source.addr),
        lib.UH_BENCH_WP if wp else lib.UH_BENCH_COPY,
        -1,
        -1,
        faults,
    )
    assert elapsed > 0
    assert faults[0] == 32
    assert_indexed(region, 3)


def test_report_on_a_tiny_run():
    config = benchmark.BenchConfig(pages_4k=64, pages_2m=2, reps=1, workloads=("anon", "wp"))
    report = benchmark.run(config)
    placements = [p.name for p in report.placements]
    assert placements[0] == "same-cpu"
    for placement in placements:
        for workload in ("anon-4K COPY", "WP round trip anon-4K"):
            for engine in benchmark.ENGINES:
                figure = report.find(workload, engine, placement)
                assert figure is not None and len(figure.samples) == 1
                assert figure.samples[0] > 0 and figure.ratio is not None
                assert not figure.note, figure.note  # every page faulted exactly once
        assert report.find("readahead-64 anon-4K", "native", placement).ratio is not None
        assert report.find("no-uffd first read anon-4K", "kernel", placement).median > 0
    text = benchmark.render(report)
    assert "c-loop" in text and "busy-poll vs poll()" in text
    json.dumps(report.to_json())


def test_bench_command_json(capsys):
    code = main(["bench", "--json", "--reps", "1", "--pages", "32", "--workloads", "anon"])
    data = json.loads(capsys.readouterr().out)
    assert code == (1 if data["missed"] else 0)
    engines = {f["engine"] for f in data["figures"] if f["workload"] == "anon-4K COPY"}
    assert engines == set(benchmark.ENGINES)
    assert data["notes"]


def test_rwp_workload_skips_with_the_release_where_the_kernel_lacks_it():
    if Feature.RWP in probe_api().features:
        pytest.skip("this kernel has RWP: the workload runs (see the guest bench test)")
    config = benchmark.BenchConfig(pages_4k=32, pages_2m=2, reps=1, workloads=("rwp",))
    report = benchmark.run(config)
    assert report.skipped == ["rwp: kernel lacks UFFD_FEATURE_RWP (added in 7.3)"]
    assert not any(f.workload.startswith("RWP") for f in report.figures)


def test_rwp_against_wp_pairs_each_repetition():
    placement = benchmark.Placement("same-cpu", 0, 0)
    report = benchmark.BenchReport(benchmark.BenchConfig(), [placement])
    for title, samples in (
        ("WP round trip anon-4K", [100.0, 200.0, 400.0]),
        ("RWP round trip anon-4K", [110.0, 180.0, 480.0]),
    ):
        figure = benchmark.Figure(title, "native", "same-cpu", "faults/s")
        figure.samples = samples
        report.figures.append(figure)
    # per-repetition ratios 1.1, 0.9, 1.2: median 1.1 (not the ratio of medians, 0.9)
    assert benchmark._rwp_against_wp(report) == [
        "RWP vs WP round trip, native same-cpu: 1.10x (180 vs 200 faults/s)"
    ]


def test_bench_refuses_unknown_workloads_before_running(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["bench", "--workloads", "anon,bogus"])
    assert stop.value.code == 2
    assert "unknown workload(s) bogus" in capsys.readouterr().err
