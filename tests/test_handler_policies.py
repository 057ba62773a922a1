"""Every engine x built-in policy x memory kind that applies, on the real kernel: content
checked page by page, counts exact."""

from __future__ import annotations

import errno

import pytest
from test_handler_support import (  # noqa: F401 - no_leaks is a fixture
    COPY_KINDS,
    ENGINES,
    FILE_KINDS,
    PY_ENGINES,
    SMALL_KINDS,
    assert_indexed,
    assert_pattern,
    assert_zero,
    kinds,
    minor_features,
    missing_features,
    need,
    no_leaks,
    pages_for,
    run_touch,
    wp_features,
)

from uffdharness import syscalls as sc
from uffdharness.abi import Feature, RegisterMode
from uffdharness.errors import HarnessError, UffdError
from uffdharness.handler import (
    Continue,
    Copy,
    Delay,
    FaultHandler,
    FileSource,
    Fill,
    FillIndexed,
    GoneOk,
    Move,
    Policy,
    Readahead,
    ReleaseReason,
    Unprotect,
    Zeropage,
)
from uffdharness.memory import PAGE_SIZE

pytestmark = [pytest.mark.usefixtures("no_leaks"), pytest.mark.timeout(30)]

SEED = 0x5EED
PATTERN = b"uffd-harness!"  # 13 bytes: pages start at different phases


def serve(uffd, policy, region, engine, *, write=False, pages=None, **options):
    """Run a handler over ``region`` while one thread touches it; return final stats."""
    handler = FaultHandler(uffd, policy, region, engine=engine, **options)
    with handler:
        run_touch(region, pages, write=write, on_hang=handler.stop)
    return handler.stats


def assert_clean(stats, pages: int, page_size: int) -> None:
    assert stats.pages_resolved == pages
    assert stats.bytes_resolved == pages * page_size
    assert stats.errors == {}
    assert stats.eexist_races == 0
    assert stats.policy_failures == 0
    assert stats.latency.count == stats.faults.total
    assert stats.released == ReleaseReason.STOP


# --- missing faults ------------------------------------------------------------------------


@pytest.mark.parametrize("policy_name", ["copy", "fill", "indexed"])
@pytest.mark.parametrize("kind", COPY_KINDS)
@pytest.mark.parametrize("engine", ENGINES)
def test_missing_copy_like(engine, kind, policy_name, uffd_factory, region_factory):
    pages = pages_for(kind)
    uffd = uffd_factory(need(missing_features(kind)))
    region = region_factory(kind, pages)
    if policy_name == "copy":
        source = region_factory("anon", region.length // PAGE_SIZE)
        source.fill_indexed(SEED, first_page=0)
        # Fill the source with the destination's page geometry, so page i of the
        # destination must equal fill_indexed(SEED) page i.
        scratch = region_factory(kind, pages) if kind == "hugetlb" else None
        if scratch is not None:
            scratch.fill_indexed(SEED)
            source.write(scratch.read())
        else:
            source.fill_indexed(SEED)
        policy = Copy(source)
    elif policy_name == "fill":
        policy = Fill(PATTERN)
    else:
        policy = FillIndexed(SEED)
    uffd.register(region)

    stats = serve(uffd, policy, region, engine)

    if policy_name == "fill":
        assert_pattern(region, PATTERN)
    else:
        assert_indexed(region, SEED)
    assert stats.faults.missing_read == pages
    assert stats.faults.total == pages
    assert_clean(stats, pages, region.page_size)


@pytest.mark.parametrize("engine", ENGINES)
def test_missing_write_faults_counted_as_writes(engine, uffd_factory, region_factory):
    region = region_factory("anon", 8)
    uffd = uffd_factory(Feature(0))
    uffd.register(region)
    stats = serve(uffd, FillIndexed(SEED), region, engine, write=True)
    assert_indexed(region, SEED)  # touch(write=True) rewrites each byte in place
    assert (stats.faults.missing_write, stats.faults.missing_read) == (8, 0)
    assert_clean(stats, 8, PAGE_SIZE)


@pytest.mark.parametrize("engine", ENGINES)
def test_protect_installs_write_protected_pages(engine, uffd_factory, region_factory):
    """Copy/FillIndexed(protect=True) resolve with UFFDIO_COPY_MODE_WP: the reads leave
    every page protected, and each write after them is a WP fault that Unprotect serves."""
    from uffdharness.pagemap import wp_pages

    region = region_factory("anon", 8)
    uffd = uffd_factory(Feature.PAGEFAULT_FLAG_WP)
    uffd.register(region, mode=RegisterMode.MISSING | RegisterMode.WP)
    handler = FaultHandler(
        uffd, FillIndexed(SEED, protect=True) | Unprotect(), region, engine=engine
    )
    with handler:
        run_touch(region, None, on_hang=handler.stop)
        protected = wp_pages(region)
        run_touch(region, None, write=True, on_hang=handler.stop)
        after = wp_pages(region)
    assert protected == list(range(8))
    assert after == []
    assert (handler.stats.faults.missing, handler.stats.faults.wp) == (8, 8)
    assert_indexed(region, SEED)


def test_protect_survives_combining():
    assert (Copy(b"x" * PAGE_SIZE, protect=True) | Unprotect()).protect
    assert not (Copy(b"x" * PAGE_SIZE) | Unprotect()).protect
    assert "protect" in repr(FillIndexed(1, protect=True))
    tolerant = GoneOk(Copy(b"x" * PAGE_SIZE) | Unprotect())
    assert tolerant.gone_ok and "gone_ok" in repr(tolerant) and tolerant.wp is not None


@pytest.mark.parametrize("source_kind", ["bytes", "bytearray", "file", "short"])
@pytest.mark.parametrize("engine", ENGINES)
def test_copy_sources(engine, source_kind, uffd_factory, region_factory, tmp_path):
    region = region_factory("anon", 8)
    reference = region_factory("anon", 8)
    reference.fill_indexed(SEED)
    content = reference.read()
    if source_kind == "bytes":
        source = content
    elif source_kind == "bytearray":
        source = bytearray(content)
    elif source_kind == "file":
        path = tmp_path / "source.bin"
        path.write_bytes(content)
        source = FileSource(path)
    else:
        source = content[: 5 * PAGE_SIZE + 100]  # the rest must arrive as zeros
    uffd = uffd_factory(Feature(0))
    uffd.register(region)

    stats = serve(uffd, Copy(source), region, engine)

    if source_kind == "short":
        assert_indexed(region, SEED, range(5))
        tail = region.read(5 * PAGE_SIZE, PAGE_SIZE)
        assert tail[:100] == content[5 * PAGE_SIZE : 5 * PAGE_SIZE + 100]
        assert tail[100:] == bytes(PAGE_SIZE - 100)
        assert_zero(region, range(6, 8))
    else:
        assert_indexed(region, SEED)
    assert stats.faults.missing_read == 8
    assert_clean(stats, 8, PAGE_SIZE)


@pytest.mark.parametrize("kind", SMALL_KINDS)
@pytest.mark.parametrize("engine", ENGINES)
def test_zeropage(engine, kind, uffd_factory, region_factory):
    region = region_factory(kind, 8)
    uffd = uffd_factory(need(missing_features(kind)))
    uffd.register(region)
    stats = serve(uffd, Zeropage(), region, engine)
    assert_zero(region)
    assert stats.faults.missing_read == 8
    assert_clean(stats, 8, PAGE_SIZE)


@pytest.mark.requires_hugepages(2)
@pytest.mark.parametrize("engine", ENGINES)
def test_zeropage_on_hugetlb_fails_and_releases(engine, uffd_factory, region_factory):
    """UFFDIO_ZEROPAGE is not offered on hugetlb (EINVAL): the engine records the failure,
    releases the range so the toucher's retry is an ordinary hugetlb fault, and stop()
    raises the kernel's error."""
    region = region_factory("hugetlb", 2)
    uffd = uffd_factory(need(Feature.MISSING_HUGETLBFS))
    uffd.register(region)
    handler = FaultHandler(uffd, Zeropage(), region, engine=engine).start()
    run_touch(region, 0, on_hang=handler.stop)
    with pytest.raises(UffdError) as raised:
        handler.stop()
    assert raised.value.errno == errno.EINVAL
    assert raised.value.op == "UFFDIO_ZEROPAGE"
    stats = handler.stats
    assert stats.released == ReleaseReason.FAILURE
    assert stats.policy_failures == 1
    assert stats.errors == {"EINVAL": 1}
    assert stats.pages_resolved == 0
    assert_zero(region, [0])


@pytest.mark.parametrize("engine", ["native", "thread"])
def test_move(engine, uffd_factory, region_factory):
    uffd = uffd_factory(need(Feature.MOVE))
    region = region_factory("anon", 8)
    source = region_factory("anon", 8)
    source.fill_indexed(SEED)
    uffd.register(region)
    stats = serve(uffd, Move(source), region, engine)
    assert_indexed(region, SEED)
    assert_zero(source)  # the pages moved: the source reads as fresh zero pages
    assert stats.faults.missing_read == 8
    assert_clean(stats, 8, PAGE_SIZE)


def test_move_refused_on_process_engine(uffd_factory, region_factory):
    """The kernel refuses cross-mm UFFDIO_MOVE (EINVAL), and the helper is another mm."""
    uffd = uffd_factory(need(Feature.MOVE))
    region = region_factory("anon", 1)
    source = region_factory("anon", 1)
    with pytest.raises(HarnessError, match="MOVE only works within the faulting process"):
        FaultHandler(uffd, Move(source), region, engine="process")


# --- write-protect and minor faults --------------------------------------------------------


@pytest.mark.parametrize("record", [False, True])
@pytest.mark.parametrize("kind", COPY_KINDS)
@pytest.mark.parametrize("engine", ENGINES)
def test_unprotect(engine, kind, record, uffd_factory, region_factory):
    pages = pages_for(kind)
    uffd = uffd_factory(need(wp_features(kind)))
    region = region_factory(kind, pages)
    region.fill_indexed(SEED)  # populated: only write-protect faults can happen
    uffd.register(region, mode=RegisterMode.WP)
    uffd.writeprotect(region)

    stats = serve(uffd, Unprotect(record=record), region, engine, write=True)

    assert_indexed(region, SEED)
    assert (stats.faults.wp_write, stats.faults.total) == (pages, pages)
    assert_clean(stats, pages, region.page_size)
    expected = tuple(region.page_addr(i) for i in range(pages)) if record else ()
    assert stats.wp_addresses == expected


@pytest.mark.parametrize("kind", FILE_KINDS)
@pytest.mark.parametrize("engine", ENGINES)
def test_continue(engine, kind, uffd_factory, region_factory):
    pages = pages_for(kind)
    uffd = uffd_factory(need(minor_features(kind)))
    region = region_factory(kind, pages)
    region.fill_indexed(SEED)
    # Drop the page tables, keep the page cache: every access is now a minor fault.
    region.madvise(sc.MADV_DONTNEED)
    uffd.register(region, mode=RegisterMode.MINOR)

    stats = serve(uffd, Continue(), region, engine)

    assert_indexed(region, SEED)
    assert (stats.faults.minor_read, stats.faults.total) == (pages, pages)
    assert_clean(stats, pages, region.page_size)


@pytest.mark.parametrize("engine", ENGINES)
def test_combined_copy_then_unprotect(engine, uffd_factory, region_factory):
    """One policy for two register modes: missing faults copy, WP faults unprotect."""
    uffd = uffd_factory(need(Feature.PAGEFAULT_FLAG_WP))
    region = region_factory("anon", 8)
    uffd.register(region, mode=RegisterMode.MISSING | RegisterMode.WP)
    handler = FaultHandler(uffd, FillIndexed(SEED) | Unprotect(), region, engine=engine)
    with handler:
        run_touch(region, on_hang=handler.stop)
        uffd.writeprotect(region)
        run_touch(region, write=True, on_hang=handler.stop)
    stats = handler.stats
    assert_indexed(region, SEED)
    assert (stats.faults.missing_read, stats.faults.wp_write, stats.faults.total) == (8, 8, 16)
    assert stats.pages_resolved == 16 and stats.errors == {}


def test_combining_two_actions_for_one_kind_is_refused():
    with pytest.raises(ValueError, match="missing"):
        _ = Zeropage() | FillIndexed(1)


# --- readahead and delay -----------------------------------------------------------------


@pytest.mark.parametrize("kind", kinds("anon", "shmem", "hugetlb"))
@pytest.mark.parametrize("engine", ENGINES)
def test_readahead_sequential(engine, kind, uffd_factory, region_factory):
    pages = pages_for(kind)
    window = 4 if pages > 4 else 2
    uffd = uffd_factory(need(missing_features(kind)))
    region = region_factory(kind, pages)
    uffd.register(region)
    stats = serve(uffd, Readahead(FillIndexed(SEED), window), region, engine)
    assert_indexed(region, SEED)
    assert stats.faults.missing_read == pages // window
    assert stats.readahead_skipped == 0
    assert stats.latency.count == pages // window
    assert stats.pages_resolved == pages and stats.errors == {}


@pytest.mark.parametrize("engine", ENGINES)
def test_readahead_skips_present_pages(engine, uffd_factory, region_factory):
    """Pages the handler resolved are skipped without an ioctl; a page populated behind its
    back (before registering) stops the COPY with EEXIST part way, and is skipped too."""
    uffd = uffd_factory(Feature(0))
    region = region_factory("anon", 8)
    region.write(b"own page", 6 * PAGE_SIZE)  # present before registering
    uffd.register(region)
    handler = FaultHandler(uffd, Readahead(FillIndexed(SEED), 4), region, engine=engine)
    with handler:
        run_touch(region, [1], on_hang=handler.stop)  # resolves 1..4
        run_touch(region, [0], on_hang=handler.stop)  # resolves 0, skips 1..3 (known)
        run_touch(region, [5], on_hang=handler.stop)  # 5, EEXIST on 6, then 7
    stats = handler.stats
    assert_indexed(region, SEED, [0, 1, 2, 3, 4, 5, 7])
    assert region.read(6 * PAGE_SIZE, 8) == b"own page"
    assert stats.faults.missing_read == 3
    assert stats.pages_resolved == 7
    assert stats.readahead_skipped == 3 + 1
    assert stats.partial_ops == 1  # the COPY of 5..7 stopped after page 5 (EAGAIN, 1 page)
    assert stats.errors == {} and stats.eexist_races == 0


@pytest.mark.parametrize("engine", ENGINES)
def test_delay(engine, uffd_factory, region_factory):
    uffd = uffd_factory(Feature(0))
    region = region_factory("anon", 3)
    uffd.register(region)
    stats = serve(uffd, Delay(FillIndexed(SEED), 20_000), region, engine)
    assert_indexed(region, SEED)
    assert stats.latency.count == 3
    assert stats.latency.min_us >= 20_000
    assert_clean(stats, 3, PAGE_SIZE)


# --- Python policies ---------------------------------------------------------------------


class PageNumberPolicy(Policy):
    """Custom logic: each page is filled with its page number, copied from Python bytes."""

    def on_fault(self, ctx):
        number = ctx.offset // ctx.page_size
        ctx.copy(bytes([number]) * ctx.page_size)


@pytest.mark.parametrize("kind", SMALL_KINDS)
@pytest.mark.parametrize("engine", PY_ENGINES)
def test_python_policy(engine, kind, uffd_factory, region_factory):
    uffd = uffd_factory(need(missing_features(kind)))
    region = region_factory(kind, 8)
    uffd.register(region)
    stats = serve(uffd, PageNumberPolicy(), region, engine)
    for index in range(8):
        assert region.read(index * PAGE_SIZE, PAGE_SIZE) == bytes([index]) * PAGE_SIZE, index
    assert stats.faults.missing_read == 8
    assert_clean(stats, 8, PAGE_SIZE)


@pytest.mark.parametrize("engine", PY_ENGINES)
def test_callable_policy_delegating_to_builtin(engine, uffd_factory, region_factory):
    """A plain function is a policy; it may hand the fault to a built-in one."""
    uffd = uffd_factory(Feature(0))
    region = region_factory("anon", 8)
    uffd.register(region)
    builtin = FillIndexed(SEED)
    seen = []

    def policy(ctx):
        seen.append(ctx.kind)
        ctx.apply(builtin)

    stats = serve(uffd, policy, region, engine)
    assert_indexed(region, SEED)
    assert_clean(stats, 8, PAGE_SIZE)
    if engine == "thread":
        assert seen == ["missing"] * 8  # the process engine's helper has its own copy


def test_native_refuses_python_policy(uffd_factory, region_factory):
    uffd = uffd_factory(Feature(0))
    region = region_factory("anon", 1)
    with pytest.raises(HarnessError, match="native engine runs only built-in"):
        FaultHandler(uffd, PageNumberPolicy(), region, engine="native")
    handler = FaultHandler(uffd, regions=(), engine="native")
    with pytest.raises(HarnessError, match="native engine runs only built-in"):
        handler.serve(region, lambda ctx: None)
    handler.stop()


# --- blocking read() (uffd-stress's read mode) -----------------------------------------


@pytest.fixture(params=["rwf_nowait", "poll_then_timed_read"])
def core_reads(request):
    """Both ways the core reads a uffd whose file is blocking: RWF_NOWAIT, and poll plus a
    read bounded by a timer signal (kernels whose uffd refuses RWF_NOWAIT)."""
    from uffdharness._native import lib

    before = lib.uh_core_poll_reads(int(request.param == "poll_then_timed_read"))
    yield request.param
    lib.uh_core_poll_reads(before)


def test_blocking_read_resolves_faults_read_while_an_ioctl_failed(
    core_reads, uffd_factory, region_factory
):
    """A native handler sleeping in a blocking read() reads every queued message when an
    ioctl fails (here COPY's ENOENT: page 0 was unregistered while its fault was delayed)
    and must still resolve the faults among them: page 1's toucher sleeps until it does.
    Reading those messages must not sleep either (the file is blocking in this mode)."""
    import threading
    import time

    uffd = uffd_factory(Feature(0))
    region = region_factory("anon", 2)
    uffd.register(region)
    handler = FaultHandler(
        uffd, GoneOk(Delay(FillIndexed(SEED), 300_000)), region, engine="native", blocking_read=True
    )
    with handler:
        first = threading.Thread(target=region.touch, args=([0],))
        first.start()
        time.sleep(0.05)  # page 0's fault is read and its delay running
        second = threading.Thread(target=region.touch, args=([1],))
        second.start()
        time.sleep(0.05)  # page 1's fault queued behind it
        uffd.unregister(region.addr, PAGE_SIZE)  # wakes page 0's toucher (a zero page)
        first.join(5)
        second.join(5)
        hung = second.is_alive()
    second.join(5)  # stopping released it if the handler never did
    first.join(5)
    assert not hung, "page 1's fault, read while COPY failed on page 0, was never resolved"
    assert_indexed(region, SEED, [1])
    assert_zero(region, [0])
    stats = handler.stats
    assert stats.errors == {"ENOENT": 1}
    assert stats.faults.missing_read == 2 and stats.pages_resolved == 1
