"""`uffdharness matrix` against hostile input: every refusal is one precise line, and no
input, however broken, ends in a traceback.

- malformed kernel specs: exit 2 naming the spec, before anything is resolved or booted;
- a truncated or damaged kernel package or cache entry: downloaded again, or one line
  naming the package and what dpkg-deb said, with no half-built entry left behind;
- a full results share (a tiny tmpfs as TMPDIR): that kernel's error row names ENOSPC;
- a guest whose report is garbage, and merge inputs that are: an error row with the
  console tail, or merge's one-line refusal;
- two runs resolving one kernel into one cache at once: one download, one whole entry.

Debian packages come from a fake archive: a real .deb built here with dpkg-deb (a bzImage
from test_matrix_bzimage's helpers, an empty modules tree), served by replacing the three
PrivateApt calls that would reach a mirror. dpkg-deb and depmod run for real.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import gzip
import io
import json
import multiprocessing
import os
import shutil
import struct
import subprocess
import tempfile
import time
from pathlib import Path

import junitparser
import pytest
from test_cli_info import run_cli
from test_matrix_bzimage import make_bzimage, make_elf
from test_matrix_cli import _cached_spec

from uffdharness import cli
from uffdharness.matrix import guest, kernels, report
from uffdharness.matrix import runner as matrix_runner
from uffdharness.matrix.cachedir import write_atomic
from uffdharness.matrix.debindex import PackageRecord
from uffdharness.matrix.privateapt import PrivateApt, UpdateReport

RELEASE = "6.1.0-99-amd64"
VERSION = "6.1.999-1"
IMAGE = f"linux-image-{RELEASE}"
ENTRY = f"{RELEASE}_{VERSION}"

# --- malformed kernel specs --------------------------------------------------------------

MALFORMED_SPECS = [
    "",
    "   ",
    "fedora:41",
    "HOST",
    "host,modules=/lib/modules/x",  # an option, but no path before it
    "debian:",
    "debian:6",
    "debian:six.one",
    "debian:latest2",
    "debian:6.1;reboot",
    "debian:6.1.192-3 extra",
    "debian:6.1.192-",
    "debian:-1.2",
    "debian:linux-image-",
    "debian:\uff16.\uff11",  # fullwidth digits: Python's \d matches them, apt's names do not
    "debian:\uff16.1.192-3",
    "debian:6.1\nhost",
    "/boot/vmlinuz,modules=",
    "/boot/vmlinuz,initrd=/boot/initrd.img",
    "./bzImage,modules",
]


@pytest.mark.parametrize("spec", MALFORMED_SPECS)
def test_a_malformed_spec_is_one_line_exit_2_before_any_kernel_is_resolved(
    spec, tmp_path, monkeypatch, capsys
):
    cache = tmp_path / "cache"
    monkeypatch.setenv("UFFDHARNESS_KERNEL_CACHE", str(cache))
    # a good spec first: it must not be resolved (or downloaded) before the bad one is seen
    rc = cli.main(["matrix", "--kernel", "debian:6.1", "--kernel", spec, "-k", "api-probe"])
    captured = capsys.readouterr()
    assert rc == 2
    assert captured.out == ""
    (line,) = captured.err.splitlines()
    assert line.startswith("uffdharness matrix: ") and repr(spec) in line
    assert not cache.exists()


def test_a_pattern_that_selects_nothing_is_refused_before_any_guest_boots(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("UFFDHARNESS_KERNEL_CACHE", str(tmp_path / "cache"))
    rc = cli.main(["matrix", "--kernel", "debian:6.1", "-k", "no-such-scenario"])
    assert rc == 2
    assert capsys.readouterr().err == (
        "uffdharness matrix: no scenario matches -k 'no-such-scenario'\n"
    )
    assert not (tmp_path / "cache").exists()


# --- a fake Debian archive ---------------------------------------------------------------


def build_kernel_deb(where: Path) -> Path:
    """A real linux-image .deb: /boot/vmlinuz-RELEASE (a gzip bzImage with a PVH ELF
    inside) and an empty /lib/modules/RELEASE tree, for depmod."""
    root = where / "package"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        f"Package: {IMAGE}\nVersion: {VERSION}\nArchitecture: amd64\n"
        "Maintainer: uffdharness tests <tests@example.invalid>\nDescription: fake kernel\n"
    )
    (root / "boot").mkdir()
    elf = make_elf(extra=f"Linux version {RELEASE} (me@here) #1 SMP\0".encode())
    bzimage = make_bzimage(gzip.compress(elf) + struct.pack("<I", len(elf)), RELEASE)
    (root / "boot" / f"vmlinuz-{RELEASE}").write_bytes(bzimage)
    (root / "lib" / "modules" / RELEASE / "kernel").mkdir(parents=True)
    deb = where / f"{IMAGE}_{VERSION}_amd64.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(root), str(deb)],
        check=True,
        capture_output=True,
    )
    shutil.rmtree(root)
    return deb


def truncated(deb: Path, where: Path) -> Path:
    """The first half of ``deb``: what an interrupted download or a full disk leaves."""
    where.mkdir(parents=True, exist_ok=True)
    cut = where / deb.name
    cut.write_bytes(deb.read_bytes()[: deb.stat().st_size // 2])
    return cut


class FakeArchive:
    """Serves ``self.deb`` for IMAGE=VERSION as `apt-get download` would; counts downloads."""

    def __init__(self, deb: Path, counter: Path, delay_s: float = 0.0) -> None:
        self.deb = deb
        self.counter = counter
        self.delay_s = delay_s

    def install(self, monkeypatch) -> FakeArchive:
        archive = self

        def update(apt, max_age_s=0.0, timeout=0.0):
            return UpdateReport(ran=False, ok=True)

        def download(apt, pins, dest, timeout=0.0):
            assert pins == [(IMAGE, VERSION)]
            with open(archive.counter, "a") as counter:
                counter.write(f"{os.getpid()}\n")
            time.sleep(archive.delay_s)
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(archive.deb, dest / archive.deb.name)

        monkeypatch.setattr(PrivateApt, "update", update)
        monkeypatch.setattr(PrivateApt, "download", download)
        monkeypatch.setattr(kernels, "_kernel_records", lambda apt: [PackageRecord(IMAGE, VERSION)])
        return self

    @property
    def downloads(self) -> int:
        return len(self.counter.read_text().splitlines()) if self.counter.exists() else 0


@pytest.fixture(scope="module")
def good_deb(tmp_path_factory) -> Path:
    if shutil.which("dpkg-deb") is None or shutil.which("depmod") is None:
        pytest.skip("dpkg-deb and depmod are needed (apt-get install -y dpkg kmod)")
    return build_kernel_deb(tmp_path_factory.mktemp("archive"))


def _archive(tmp_path: Path, deb: Path, monkeypatch, delay_s: float = 0.0) -> FakeArchive:
    return FakeArchive(deb, tmp_path / "downloads.log", delay_s).install(monkeypatch)


def _assert_whole_entry(cache: Path, image: kernels.KernelImage) -> None:
    entry = cache / "debian" / ENTRY
    assert image.cache_dir == entry and image.release == RELEASE
    meta = json.loads((entry / "kernel.json").read_text())
    assert meta["version"] == VERSION and (entry / meta["kernel"]).is_file()
    assert (entry / meta["modules_dir"] / "modules.dep").is_file()
    assert not (entry / "downloads").exists()
    assert [p.name for p in entry.iterdir() if p.name.endswith(".tmp")] == []


# --- truncated and damaged packages, damaged cache entries ---------------------------------


def test_a_truncated_package_is_one_line_naming_it_and_leaves_no_half_entry(
    good_deb, tmp_path, monkeypatch
):
    cache = tmp_path / "cache"
    archive = _archive(tmp_path, truncated(good_deb, tmp_path / "bad"), monkeypatch)
    with pytest.raises(kernels.KernelFetchError) as failure:
        kernels.resolve("debian:6.1", cache=cache, log=lambda text: None)
    (line,) = str(failure.value).splitlines()
    assert line.startswith(f"dpkg-deb -x {good_deb.name} failed: dpkg-deb")
    assert "error" in line  # dpkg-deb's own words, e.g. "unexpected end of file"
    assert not (cache / "debian" / ENTRY).exists()  # the next run starts clean
    archive.deb = good_deb  # the mirror has it whole again: the next run gets it
    _assert_whole_entry(cache, kernels.resolve("debian:6.1", cache=cache, log=lambda t: None))
    assert archive.downloads == 2


def test_a_truncated_package_in_the_cli_is_an_error_row_not_a_traceback(
    good_deb, tmp_path, monkeypatch, capsys
):
    try:
        matrix_runner.guest_python()  # the command refuses (exit 2) a python guests cannot see
    except matrix_runner.MatrixError as exc:
        pytest.skip(str(exc))
    monkeypatch.setenv("UFFDHARNESS_KERNEL_CACHE", str(tmp_path / "cache"))
    _archive(tmp_path, truncated(good_deb, tmp_path / "bad"), monkeypatch)
    monkeypatch.setattr(matrix_runner, "precompile", lambda: None)
    out_json = tmp_path / "m.json"
    rc = cli.main(["matrix", "--kernel", "debian:6.1", "-k", "api-probe", "--json", str(out_json)])
    captured = capsys.readouterr()
    assert rc == 1 and "Traceback" not in captured.err
    (section,) = json.loads(out_json.read_text())["kernels"]
    (row,) = section["results"]
    assert row["verdict"] == "error" and "\n" not in row["reason"]
    assert row["reason"].startswith(f"cannot prepare the kernel: dpkg-deb -x {good_deb.name}")
    # dpkg-deb's complaint is in the row, not sprayed over the matrix's stderr
    assert "dpkg-deb: error" not in captured.err


def test_a_truncated_package_left_in_the_cache_is_downloaded_again(good_deb, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    truncated(good_deb, cache / "debian" / ENTRY / "downloads")  # a run cut short
    archive = _archive(tmp_path, good_deb, monkeypatch)
    _assert_whole_entry(cache, kernels.resolve("debian:6.1", cache=cache, log=lambda t: None))
    assert archive.downloads == 1


@pytest.mark.parametrize(
    "damage",
    ["truncated kernel.json", "kernel.json without version", "vmlinuz gone", "not an object"],
)
def test_a_damaged_cache_entry_is_prepared_again(damage, good_deb, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    archive = _archive(tmp_path, good_deb, monkeypatch)
    first = kernels.resolve("debian:6.1", cache=cache, log=lambda t: None)
    meta_file = cache / "debian" / ENTRY / "kernel.json"
    meta = json.loads(meta_file.read_text())
    if damage == "truncated kernel.json":
        meta_file.write_text(meta_file.read_text()[:40])
    elif damage == "kernel.json without version":
        meta_file.write_text(json.dumps({k: v for k, v in meta.items() if k != "version"}))
    elif damage == "vmlinuz gone":
        (cache / "debian" / ENTRY / meta["kernel"]).unlink()
    else:
        meta_file.write_text("[1, 2, 3]")
    # the exact version is looked up in the cache first, then through the archive
    again = kernels.resolve(f"debian:{VERSION}", cache=cache, log=lambda t: None)
    assert dataclasses.replace(again, spec=first.spec) == first
    _assert_whole_entry(cache, again)
    assert archive.downloads == 2


def test_a_damaged_entry_of_another_kernel_does_not_break_this_one(good_deb, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    _archive(tmp_path, good_deb, monkeypatch)
    kernels.resolve("debian:6.1", cache=cache, log=lambda t: None)
    other = cache / "debian" / "5.10.0-1-amd64_5.10.1-1"
    other.mkdir()
    (other / "kernel.json").write_text(json.dumps({"release": 5.10, "kernel": None}))
    image = kernels.resolve(f"debian:{VERSION}", cache=cache, log=lambda t: None)
    assert image.package_version == VERSION
    assert [k.package_version for k in kernels.cached_kernels(cache)] == [VERSION]


# --- two runs, one cache ------------------------------------------------------------------


def _resolve_in_child(cache: str) -> kernels.KernelImage:
    return kernels.resolve("debian:6.1", cache=Path(cache), log=lambda text: None)


@pytest.mark.timeout(120)
def test_two_runs_resolving_one_kernel_into_one_cache_download_it_once(
    good_deb, tmp_path, monkeypatch
):
    cache = tmp_path / "cache"
    # a slow mirror, so the second run asks while the first is still downloading
    archive = _archive(tmp_path, good_deb, monkeypatch, delay_s=1.0)
    fork = multiprocessing.get_context("fork")  # the children keep the fake archive
    with fork.Pool(2) as pool:
        images = pool.map(_resolve_in_child, [str(cache), str(cache)])
    assert images[0] == images[1]
    _assert_whole_entry(cache, images[0])
    assert archive.downloads == 1
    assert [p.name for p in (cache / "debian").iterdir()] == [ENTRY]


# --- a full results share ----------------------------------------------------------------


@contextlib.contextmanager
def tiny_tmpfs(where: Path, size: str):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)
        where.rmdir()


def test_a_cache_write_on_a_full_disk_leaves_the_old_file_and_no_temporary(tmp_path):
    with tiny_tmpfs(tmp_path / "cache", "8k") as cache:
        target = cache / "kernel.json"
        write_atomic(target, b"old")
        with pytest.raises(OSError) as failure:
            write_atomic(target, b"x" * 16384)
        assert failure.value.errno == errno.ENOSPC
        assert target.read_bytes() == b"old"
        assert [p.name for p in cache.iterdir()] == ["kernel.json"]
        target.unlink()


@pytest.mark.timeout(120)
def test_a_full_results_share_on_the_host_is_an_enospc_row(tmp_path):
    with tiny_tmpfs(tmp_path / "tmp", "4k") as small:
        # one page: enough for tempfile's probe, not for a 6 KB report
        out_json = tmp_path / "m.json"
        done = run_cli(
            "matrix", "--kernel", "host", "-k", "unregister-merge", "--json", str(out_json),
            env=dict(os.environ, TMPDIR=str(small)),
        )  # fmt: skip
        assert list(small.iterdir()) == []
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    (section,) = json.loads(out_json.read_text())["kernels"]
    (row,) = [r for r in section["results"] if r["id"] == "guest"]
    assert row["verdict"] == "error"
    assert row["reason"].startswith(f"the results share {small}/uffdharness-host-")
    assert "is full (ENOSPC)" in row["reason"]
    assert "(guest run) error: the results share" in done.stdout


@pytest.mark.timeout(120)
def test_a_full_results_share_in_a_guest_is_an_enospc_row(tmp_path):
    spec = _cached_spec("6.1")
    with tiny_tmpfs(tmp_path / "tmp", "4k") as small:
        out_json = tmp_path / "m.json"
        done = run_cli(
            "matrix", "--kernel", spec, "-k", "unregister-merge", "--memory", "anon",
            "--json", str(out_json), env=dict(os.environ, TMPDIR=str(small)), timeout=100,
        )  # fmt: skip
        assert list(small.iterdir()) == []
    assert done.returncode == 1 and "Traceback" not in done.stderr
    (section,) = json.loads(out_json.read_text())["kernels"]
    (row,) = section["results"]
    assert row["verdict"] == "error" and "is full (ENOSPC)" in row["reason"]
    assert "No space left on device" in row["facts"]["console_tail"]


def test_a_share_too_small_for_the_job_is_an_enospc_error_without_a_boot(tmp_path, monkeypatch):
    kernel = kernels.KernelImage(
        "debian:6.1", RELEASE, tmp_path / "bzImage", None, None, VERSION, tmp_path / "entry"
    )
    (tmp_path / "entry").mkdir()
    monkeypatch.setattr(guest.initramfs, "cached", lambda image: tmp_path / "initrd")
    monkeypatch.setattr(guest.hosttools, "require", lambda tools: None)
    with tiny_tmpfs(tmp_path / "tmp", "4k") as small:
        monkeypatch.setattr(tempfile, "tempdir", str(small))
        result = guest.run_in_guest(kernel, ["echo", "x" * 8192], 10)
        assert list(small.iterdir()) == []
    assert result.status == "error" and result.total_s == 0.0  # qemu never started
    assert result.detail.startswith(f"cannot set up the results share {small}/uffdharness-guest-")
    assert result.detail.endswith(": ENOSPC (No space left on device)")


# --- garbage instead of a report ----------------------------------------------------------

GARBAGE_REPORTS = [
    b"",
    b"\xff\xfe\x00garbage",
    b"Segmentation fault (core dumped)",
    b"[]",
    b'"a string"',
    b"[" * 100_000,
    b'{"results": 5}',
    b'{"results": [1]}',
    b'{"results": [{"id": "a"}]}',
    b'{"results": [{"id": "a", "memory": "anon", "verdict": "great"}]}',
    b'{"results": [{"id": "a", "memory": "anon", "verdict": "pass", "facts": []}]}',
    b'{"results": [{"id": "a", "memory": "anon", "verdict": "pass", "duration_s": "1"}]}',
    b'{"results": [{"id": "a", "memory": ["anon"], "verdict": "pass"}]}',
    b'{"results": [{"id": "guest", "memory": "-", "verdict": "pass"}]}',
    b'{"kernel": "6.1"}',
    b'{"kernel": {"version": ["six", 1, 0]}}',
    b'{"kernel": {"version": [6, 1]}}',
    b'{"kernel": {"version": [6, 1, true]}}',
    b'{"kernel": {"release": 6.1}}',
    b'{"summary": []}',
]


@pytest.mark.parametrize("garbage", GARBAGE_REPORTS, ids=range(len(GARBAGE_REPORTS)))
def test_a_report_that_is_garbage_is_an_error_row_with_the_console_tail(garbage, tmp_path):
    outcome = guest.GuestResult(
        "ok", 0, "", "", "[ 1.0] booting\nUFFDHARNESS-JOB-END rc=0", {"report.json": garbage}
    )
    run = matrix_runner.from_guest("debian:6.1", RELEASE, VERSION, outcome)
    (row,) = [r for r in run.results if r.id == "guest"]
    assert row.verdict == "error" and row.reason.startswith("report.json")
    assert "UFFDHARNESS-JOB-END rc=0" in row.facts["console_tail"]
    # everything downstream copes with the run too
    run.check_expectations()
    table = io.StringIO()
    report.print_table([run], table)
    assert "(guest run) error: report.json" in table.getvalue()
    report.write_json(str(tmp_path / "m.json"), [run])
    report.write_junit(str(tmp_path / "m.xml"), [run])
    assert matrix_runner.exit_status([run]) == 1


def test_a_guest_that_writes_garbage_for_its_report_is_an_error_row(tmp_path):
    (tmp_path / guest.RESULTS_SUBDIR).mkdir()
    body = (
        f"echo '{guest.initramfs.START_MARKER} 1 1'; echo 'Traceback: the guest is confused'; "
        f"head -c 300 /dev/urandom > {tmp_path}/out/report.json; echo 0 > {tmp_path}/exit_code"
    )
    outcome = guest._boot(["sh", "-c", body], tmp_path, 10, "tcg")
    run = matrix_runner.from_guest("debian:6.1", RELEASE, VERSION, outcome)
    (row,) = run.results
    assert (row.id, row.verdict) == ("guest", "error")
    assert row.reason.startswith("report.json is not JSON")
    assert "Traceback: the guest is confused" in row.facts["console_tail"]


MERGE_GARBAGE = {
    "binary.json": b"\x00\xff\xfe",
    "list.json": b"[]",
    "deep.json": b'{"kernels": ' + b"[" * 100_000,
    "kernels-not-list.json": b'{"kernels": {"spec": "host"}}',
    "kernel-not-object.json": b'{"kernels": [1]}',
    "spec-not-string.json": b'{"kernels": [{"spec": 5}]}',
    "result-without-verdict.json": b'{"kernels": [{"spec": "host", "results": [{"id": "a"}]}]}',
    "guest-not-object.json": b'{"kernels": [{"spec": "host", "guest": "ok"}]}',
    "version-not-numbers.json": b'{"kernels": [{"spec": "host", "kernel": {"version": "6"}}]}',
}


@pytest.mark.parametrize("name", sorted(MERGE_GARBAGE))
def test_merging_garbage_is_one_line_naming_the_file(name, tmp_path, capsys):
    path = tmp_path / name
    path.write_bytes(MERGE_GARBAGE[name])
    assert cli.main(["matrix", "merge", str(path)]) == 2
    captured = capsys.readouterr()
    (line,) = captured.err.splitlines()
    assert line.startswith(f"merge: {path}")
    assert captured.out == ""


def test_merge_still_reads_what_a_matrix_run_writes(tmp_path, capsys):
    written = tmp_path / "m.json"
    run = matrix_runner.failed_run("debian:6.1", "hang", "slow")
    report.write_json(str(written), [run])
    assert cli.main(["matrix", "merge", str(written), "--junit", str(tmp_path / "m.xml")]) == 1
    assert "(guest run)" in capsys.readouterr().out
    (suite,) = junitparser.JUnitXml.fromfile(str(tmp_path / "m.xml"))
    assert suite.name == "debian:6.1"
