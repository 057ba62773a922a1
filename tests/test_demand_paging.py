"""``bench demand-paging`` on the real kernel with tiny sizes: every mode serves every page
of every vCPU slice with the right content, on the C loop and each engine; bad input is a
usage error before any work; the JSON has one row per V and figure. No timing thresholds."""

from __future__ import annotations

import errno
import json
import os

import pytest
from test_handler_support import no_leaks  # noqa: F401 - fixture

from uffdharness import _native, demandpaging
from uffdharness.cli import bench, bench_demand, build_parser, main
from uffdharness.demandpaging import DemandConfig, DemandError

pytestmark = [pytest.mark.usefixtures("no_leaks"), pytest.mark.timeout(60)]

ffi, lib = _native.ffi, _native.lib

PAIRS = [
    ("copy", "anon"),
    ("copy", "shmem"),
    ("copy", "memfd-private"),
    ("copy", "hugetlb"),
    ("zeropage", "anon"),
    ("continue", "shmem"),
    ("continue", "memfd"),
    ("continue", "memfd-private"),
    ("continue", "hugetlb"),
    ("continue", "hugetlb-private"),
    ("copy", "hugetlb-private"),
    ("move", "anon"),
]


def _skip_unless_runnable(mode: str, memory: str) -> None:
    reason = demandpaging.unavailable_reason(mode, memory)
    if reason:
        pytest.skip(f"{mode} on {memory}: {reason}")
    if demandpaging.SPECS[memory].is_hugetlb and os.geteuid() != 0:
        pytest.skip("hugetlb needs a hugepage pool, which only root may reserve")


def _run(config: DemandConfig) -> demandpaging.DemandReport:
    try:
        return demandpaging.run(config)
    except DemandError as exc:
        if "hugepages" in str(exc):
            pytest.skip(str(exc))
        raise


@pytest.mark.parametrize("handlers", demandpaging.HANDLERS)
@pytest.mark.parametrize(("mode", "memory"), PAIRS)
def test_every_page_of_every_slice_is_served_with_its_content(mode, memory, handlers):
    _skip_unless_runnable(mode, memory)
    excluded = {engine for engine, _ in demandpaging.MODES[mode].no_engine}
    engines = tuple(engine for engine in demandpaging.ENGINES if engine not in excluded)
    pages_each = 2 if demandpaging.SPECS[memory].is_hugetlb else 16
    config = DemandConfig(
        vcpus=(1, 3),
        mode=mode,
        memory=memory,
        handlers=handlers,
        engines=engines,
        pages_per_vcpu=pages_each,
        reps=1,
    )
    report = _run(config)
    assert [(row.vcpus, row.engine) for row in report.rows] == [
        (vcpus, engine) for vcpus in (1, 3) for engine in ("c-loop", *engines, "first-touch")
    ]
    for row in report.rows:
        assert row.pages == row.vcpus * pages_each
        assert len(row.rates) == 1 and row.rates[0] > 0
        assert len(row.latencies_ns) == row.pages  # one latency per touched page
        if row.engine == "first-touch":
            assert row.verified is None
            continue
        # verify() ran after the warm-up and the repetition: every page, every slice
        assert row.verified is True, row.note
        assert row.faults == [row.pages], row.note  # each page faulted exactly once
        assert not row.note
    assert report.find(3, "c-loop").ratio_c_loop == pytest.approx(1.0)
    assert report.find(3, "first-touch").ratio_first_touch == pytest.approx(1.0)


@pytest.mark.parametrize("writes", [False, True])
def test_c_loop_one_handler_for_three_touchers(writes, uffd_factory, region_factory):
    region = region_factory("anon", 3 * 8)
    source = region_factory("anon", 3 * 8)
    source.fill_indexed(5)
    uffd = uffd_factory()
    uffd.register(region)
    latency = ffi.new("uint64_t[]", region.pages)
    faults = ffi.new("uint64_t *")
    elapsed = lib.uh_demand_c_loop(
        ffi.new("int[]", [uffd.fileno()]),
        1,
        ffi.cast("char *", region.addr),
        region.page_size,
        8,
        3,
        int(writes),
        lib.UH_DEMAND_COPY,
        ffi.cast("char *", source.addr),
        ffi.NULL,
        ffi.NULL,
        latency,
        faults,
    )
    assert elapsed > 0
    assert faults[0] == region.pages
    assert region.find_indexed_mismatch(5) is None
    assert all(latency[i] > 0 for i in range(region.pages))


def test_a_failing_c_handler_unregisters_instead_of_hanging(uffd_factory, region_factory):
    """COPY from address 0 fails with EFAULT: the handler unregisters its slice, which
    wakes the toucher, and the call reports the handler's errno."""
    region = region_factory("anon", 4)
    uffd = uffd_factory()
    uffd.register(region)
    latency = ffi.new("uint64_t[]", 4)
    faults = ffi.new("uint64_t *")
    elapsed = lib.uh_demand_c_loop(
        ffi.new("int[]", [uffd.fileno()]),
        1,
        ffi.cast("char *", region.addr),
        region.page_size,
        4,
        1,
        0,
        lib.UH_DEMAND_COPY,
        ffi.cast("char *", 0),
        ffi.NULL,
        ffi.NULL,
        latency,
        faults,
    )
    assert elapsed == -errno.EFAULT
    assert faults[0] == 0
    assert region.find_mismatch(b"\0") is None  # unregistered: plain zero pages


def test_touchers_each_touch_their_own_slice(region_factory):
    region = region_factory("anon", 4 * 5)
    latency = ffi.new("uint64_t[]", region.pages)
    cpus = sorted(os.sched_getaffinity(0))
    pinned = ffi.new("int[]", [cpus[i % len(cpus)] for i in range(4)])
    elapsed = lib.uh_demand_touch(
        ffi.cast("char *", region.addr), region.page_size, 5, 4, 1, pinned, latency
    )
    assert elapsed > 0
    assert all(latency[i] > 0 for i in range(region.pages))
    assert lib.uh_demand_touch(ffi.cast("char *", region.addr), 4096, 1, 0, 0, ffi.NULL, latency)
    bad_cpu = ffi.new("int[]", [1 << 20])
    assert (
        lib.uh_demand_touch(
            ffi.cast("char *", region.addr), region.page_size, 1, 1, 0, bad_cpu, latency
        )
        == -errno.EINVAL
    )


def test_verify_names_the_first_wrong_page():
    config = DemandConfig(vcpus=(2,), pages_per_vcpu=4)
    with demandpaging.workload(config, 2) as work:
        for k, uffd in enumerate(work.uffds):
            uffd.unregister(*work.slice_span(k))  # plain memory: zeros, not the content
        assert work.verify() == "page 0 (vCPU 0) differs at offset 0x0"
        work.region.write(work.source.read())
        work.region.write(b"\xff", 5 * work.region.page_size + 3)
        assert work.verify() == "page 5 (vCPU 1) differs at offset 0x5000"  # its first word


def test_placement_is_stated():
    cpus = sorted(os.sched_getaffinity(0))
    assert demandpaging.placement_for(3, 3, False).describe() == "unpinned"
    pinned = demandpaging.placement_for(3, 1, True)
    assert pinned.toucher_cpus == tuple(cpus[i % len(cpus)] for i in range(3))
    assert pinned.handler_cpus == (cpus[0],)
    assert pinned.describe().startswith("pinned t=")
    eight = demandpaging.Placement(True, (0, 1) * 4, (0, 1) * 4)
    assert eight.describe() == "pinned t=(0,1)x4 h=(0,1)x4"
    assert demandpaging.Placement(True, (0, 1, 0), ()).describe() == "pinned t=0,1,0"
    assert demandpaging.Placement(True, (0, 1, 1, 0, 1), (0,)).describe() == (
        "pinned t=0,1,1,0,1 h=0"
    )


def test_percentile_is_nearest_rank():
    values = list(range(1, 101))
    assert demandpaging.percentile(values, 0.5) == 50
    assert demandpaging.percentile(values, 0.99) == 99
    assert demandpaging.percentile([7], 0.99) == 7
    assert demandpaging.percentile([], 0.5) == 0


def test_cli_names_match_the_measuring_module():
    assert set(bench_demand.MODE_NAMES) == set(demandpaging.MODES)
    assert bench_demand.ENGINE_NAMES == demandpaging.ENGINES
    assert bench_demand.HANDLER_NAMES == demandpaging.HANDLERS
    assert bench_demand.KIND_NAMES == demandpaging.KINDS


def test_plain_bench_still_parses_as_the_faults_benchmark():
    args = build_parser().parse_args(["bench", "--quick", "--json"])
    assert args.handler is bench.run and args.json is True and args.benchmark is None
    args = build_parser().parse_args(["bench", "demand-paging", "--vcpus", "2,1,2"])
    assert args.handler is bench_demand.run and args.vcpus == (2, 1)


def _usage_error(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("usage: ")
    return err[-1]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--mode", "zeropage", "--memory", "shmem"], "--mode zeropage does not run on"),
        (["--mode", "move", "--memory", "hugetlb"], "--mode move does not run on"),
        (["--mode", "continue", "--memory", "anon"], "--mode continue does not run on"),
        (["--mode", "move", "--engine", "native,process"], "cannot use --engine process"),
        (["--vcpus", "0"], "--vcpus"),
        (["--vcpus", "two"], "--vcpus"),
        (["--vcpus", ","], "--vcpus"),
        (["--engine", "native,turbo"], "unknown engine(s) turbo"),
        (["--mode", "dma"], "--mode"),
        (["--memory", "anon-thp"], "--memory"),
        (["--pages-per-vcpu", "0"], "--pages-per-vcpu"),
        (["--handlers", "two"], "--handlers"),
    ],
)
def test_bad_input_is_a_usage_error_before_any_work(argv, message, capsys):
    assert message in _usage_error(["bench", "demand-paging", *argv], capsys)


def test_a_guest_kernel_is_refused(capsys):
    message = _usage_error(["bench", "--kernel", "debian:7.3", "demand-paging"], capsys)
    assert message.endswith("--kernel: demand-paging runs on the host kernel only")


def test_unwritable_json_is_refused_before_running(tmp_path, capsys):
    missing = tmp_path / "absent" / "rows.json"
    message = _usage_error(["bench", "demand-paging", "--json", str(missing)], capsys)
    assert message.endswith(f"--json: {missing.parent} does not exist")


def test_json_has_a_row_per_vcpus_and_figure(tmp_path, capsys):
    path = tmp_path / "rows.json"
    argv = ["bench", "demand-paging", "--vcpus", "1,2", "--pages-per-vcpu", "8", "--reps", "1"]
    assert main([*argv, "--pin", "--json", str(path)]) == 0
    captured = capsys.readouterr()
    assert "V=2 first-touch 1/1" in captured.err
    data = json.loads(path.read_text())
    assert data["benchmark"] == "demand-paging"
    assert data["config"]["mode"] == "copy" and data["config"]["memory"] == "anon"
    rows = data["rows"]
    assert [(row["vcpus"], row["engine"]) for row in rows] == [
        (v, e) for v in (1, 2) for e in ("c-loop", "native", "first-touch")
    ]
    for row in rows:
        assert row["pinned"] is True and row["placement"].startswith("pinned t=")
        assert row["pages_per_s"] > 0
        assert row["latency_min_us"] <= row["latency_median_us"] <= row["latency_p99_us"]
        assert row["ratio_c_loop"] is not None and row["ratio_first_touch"] is not None
        assert row["verified"] is (None if row["engine"] == "first-touch" else True)
    table = captured.out.splitlines()
    assert table[1].split()[:3] == ["V", "engine", "placement"]
    assert sum("pinned t=" in line for line in table) == len(rows)  # placement on every row


def test_kernel_lacking_a_feature_is_one_line(monkeypatch, capsys):
    monkeypatch.setattr(
        demandpaging,
        "unavailable_reason",
        lambda mode, memory: "kernel lacks UFFD_FEATURE_MOVE (added in 6.8)",
    )
    assert main(["bench", "demand-paging", "--mode", "move", "--vcpus", "1"]) == 1
    assert capsys.readouterr().err == (
        "uffdharness bench demand-paging: --mode move on anon: "
        "kernel lacks UFFD_FEATURE_MOVE (added in 6.8)\n"
    )
