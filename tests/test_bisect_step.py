"""`uffdharness bisect-step`: what each kind of kernel run means to `git bisect run` (0, 1,
125; --find-fix swaps 0 and 1), bad input refused with exit 2 before any build, and real
builds that fail (a tree make cannot build, a patch that does not apply) skipped with 125
while the tree stays as it was. Building and booting a real kernel is
test_kbuild_bisect_slow.py's."""

from __future__ import annotations

import json
import os

import pytest
from kbuild_trees import git, hunk, make_tree, write_patch

from uffdharness.cli import main
from uffdharness.matrix import hosttools
from uffdharness.matrix import runner as matrix_runner
from uffdharness.matrix.bisectstep import SKIP_STATUS, Behaviour, judge
from uffdharness.matrix.runner import KernelRun, failed_run, interrupted_run, unfinished_run
from uffdharness.runner import Result

MERGE_BUG = Result(
    "unregister-merge",
    "anon",
    "known-bug",
    "pages 5-19 stay split; fixed in 6.4 by 'mm/uffd: allow vma to merge as much as possible'",
    "vmas_after_unregister=3 (expected 2)",
    {"vmas_after_unregister": 3},
)
MERGED = Result("unregister-merge", "anon", "pass", "", "vmas_after_unregister=2 (expected 2)", {})
SKIPPED = Result("unregister-merge", "hugetlb", "skip", "cannot reserve 20 hugepages", "skipped")


def _guest_run(*results: Result) -> KernelRun:
    """A kernel's column as a guest that returned its report leaves it."""
    return KernelRun("src:/linux", "6.1.192", results=list(results), guest={"status": "ok"})


# --- what a run means --------------------------------------------------------------------


def test_a_pass_behaves_fixed_and_exits_0_or_1_with_find_fix():
    verdict = judge(_guest_run(MERGED))
    assert verdict.behaviour is Behaviour.FIXED
    assert (verdict.exit_status(), verdict.exit_status(find_fix=True)) == (0, 1)
    assert verdict.line() == (
        "bisect-step: unregister-merge[anon] pass: vmas_after_unregister=2 (expected 2) "
        "-> 0 (behaves fixed)"
    )


def test_a_known_bug_shows_the_bug_like_a_fail():
    # the runner says known-bug or fail by the kernel's version; both show the bug
    as_known = judge(_guest_run(MERGE_BUG))
    as_fail = judge(_guest_run(Result(**{**MERGE_BUG.__dict__, "verdict": "fail"})))
    for verdict in (as_known, as_fail):
        assert verdict.behaviour is Behaviour.SHOWS_BUG
        assert (verdict.exit_status(), verdict.exit_status(find_fix=True)) == (1, 0)
    assert as_known.line() == (
        "bisect-step: unregister-merge[anon] known-bug: vmas_after_unregister=3 (expected 2) "
        "-> 1 (shows the bug)"
    )
    assert as_known.line(find_fix=True).endswith("-> 0 (shows the bug)")


@pytest.mark.parametrize(
    ("verdict", "key", "reason"),
    [
        ("hang", "hang", "no verdict within 30.0 s (killed)"),
        ("error", "crashed", "scenario process killed by SIGSEGV"),
    ],
)
def test_a_hang_or_a_crashed_scenario_shows_the_bug_with_its_reason(verdict, key, reason):
    step = judge(_guest_run(MERGED, Result("register-merge", "anon", verdict, reason, key)))
    assert step.behaviour is Behaviour.SHOWS_BUG and step.exit_status() == 1
    assert step.detail == f"register-merge[anon] {verdict}: {reason}"


def test_every_pair_showing_the_bug_is_counted_the_first_described():
    shmem = Result(**{**MERGE_BUG.__dict__, "memory": "shmem"})
    step = judge(_guest_run(MERGE_BUG, shmem, MERGED))
    assert step.detail == (
        "unregister-merge[anon] known-bug: vmas_after_unregister=3 (expected 2); "
        "1 more: unregister-merge[shmem] known-bug"
    )


def test_skips_beside_a_pass_behave_fixed_but_all_skipped_cannot_test():
    fixed = judge(_guest_run(MERGED, SKIPPED))
    assert fixed.behaviour is Behaviour.FIXED and fixed.exit_status() == 0
    assert fixed.detail.endswith("(1 skipped)")
    untestable = judge(_guest_run(SKIPPED))
    assert untestable.behaviour is Behaviour.UNTESTABLE
    assert untestable.exit_status() == untestable.exit_status(find_fix=True) == SKIP_STATUS
    assert "every selected pair skipped" in untestable.detail
    assert "cannot reserve 20 hugepages" in untestable.detail


@pytest.mark.parametrize(
    "run",
    [
        failed_run("src:/linux", "error", "kernel panic - not syncing: VFS"),
        failed_run("src:/linux", "hang", "no report within 900 s"),
        unfinished_run("src:/linux", matrix_runner.PREPARE_FAILED, "build failed: x.c: error"),
        unfinished_run("src:/linux", matrix_runner.RUN_FAILED, "qemu: cannot allocate memory"),
        interrupted_run("src:/linux", 15, 3.0),
        _guest_run(),
    ],
    ids=["guest-error", "guest-hang", "build-failed", "qemu-failed", "interrupted", "no-pairs"],
)
def test_anything_but_a_scenario_verdict_is_never_0_or_1(run):
    step = judge(run)
    assert step.behaviour is Behaviour.UNTESTABLE
    assert step.exit_status() == step.exit_status(find_fix=True) == SKIP_STATUS
    assert step.line().endswith("-> 125 (cannot test)")


def test_a_guest_row_makes_the_step_untestable_even_beside_results():
    # a report came back, but the guest did not end cleanly: not a result to bisect on
    run = _guest_run(MERGED)
    run.results.append(matrix_runner.guest_row("error", "uffdharness run exited 3", {}))
    assert judge(run).behaviour is Behaviour.UNTESTABLE


def test_a_failed_builds_log_tail_is_left_to_the_log():
    reason = "build failed: fs/x.c:3: error: y (log: /c/build.log) # uffdharness build of z CC a"
    step = judge(unfinished_run("src:/linux", matrix_runner.PREPARE_FAILED, reason))
    assert step.detail == (
        "cannot test: cannot prepare the kernel: build failed: fs/x.c:3: error: y "
        "(log: /c/build.log)"
    )


# --- bad input: exit 2, before any build -------------------------------------------------


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """The kernel cache of this test: empty, so any build work would show in it."""
    root = tmp_path / "cache"
    monkeypatch.setenv("UFFDHARNESS_KERNEL_CACHE", str(root))
    return root


@pytest.fixture
def tree(tmp_path):
    """A git checkout that looks like a kernel tree but that make cannot build."""
    checkout = make_tree(tmp_path / "linux")
    git(checkout, "init", "-q")
    git(checkout, "add", "-A")
    git(checkout, "commit", "-q", "-m", "one")
    return checkout


def test_k_is_required(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["bisect-step"])
    assert exited.value.code == 2
    assert "the following arguments are required: -k" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["-k", "no-such-scenario"], "no scenario matches -k 'no-such-scenario'"),
        (["-k", "unregister-merge", "--memory", "file"], "invalid choice: 'file'"),
        (["-k", "unregister-merge", "--kernel-tree", "/nonexistent"], "is not a directory"),
        (["-k", "unregister-merge", "--kernel-tree", "/etc"], "/etc is not a kernel tree"),
        (["-k", "unregister-merge", "--patch", "/nonexistent.patch"], "/nonexistent.patch"),
        (["-k", "unregister-merge", "--config", "/nonexistent.config"], "/nonexistent.config"),
        (["-k", "unregister-merge", "--timeout", "0"], "--timeout"),
        (["-k", "unregister-merge", "--json", "/nonexistent/x.json"], "does not exist"),
    ],
)
def test_bad_input_is_one_line_and_exit_2_before_any_build(extra, message, tree, cache, capsys):
    argv = ["bisect-step", "--kernel-tree", str(tree), *extra]
    try:
        status = main(argv)
    except SystemExit as exited:  # argparse's own checks
        status = exited.code
    assert status == 2
    captured = capsys.readouterr()
    assert message in captured.err.strip().splitlines()[-1]
    assert captured.out == ""
    assert not cache.exists()  # nothing was built, fetched or locked


def test_a_tree_path_with_a_comma_cannot_be_a_spec(tmp_path, cache, capsys):
    checkout = make_tree(tmp_path / "linux,v6")
    assert main(["bisect-step", "-k", "unregister-merge", "--kernel-tree", str(checkout)]) == 2
    assert capsys.readouterr().err == (
        f"uffdharness bisect-step: {checkout}: a path with a comma\n"
    )


def test_the_help_says_how_to_bisect_for_a_fix(capsys):
    with pytest.raises(SystemExit):
        main(["bisect-step", "--help"])
    text = capsys.readouterr().out
    assert "git bisect start --term-old=broken --term-new=fixed FIXED BROKEN" in text
    assert "--find-fix" in text and "125" in text


# --- real builds that fail: 125 ----------------------------------------------------------


@pytest.fixture
def can_build():
    problems = hosttools.check(hosttools.BOOT_TOOLS + hosttools.BUILD_TOOLS)
    if problems:
        pytest.skip(str(hosttools.MissingHostTools(problems)))
    try:
        matrix_runner.guest_python()
    except matrix_runner.MatrixError as exc:
        pytest.skip(str(exc))


def _tree_state(tree):
    return (
        git(tree, "status", "--porcelain", "--ignored"),
        sorted(
            (str(path.relative_to(tree)), path.lstat().st_mtime_ns, path.lstat().st_ino)
            for path in tree.rglob("*")
            if ".git" not in path.parts
        ),
    )


@pytest.mark.parametrize("find_fix", [False, True], ids=["bug-hunt", "find-fix"])
def test_a_tree_that_does_not_build_is_skipped(find_fix, tree, cache, can_build, tmp_path, capsys):
    before = _tree_state(tree)
    report = tmp_path / "step.json"
    argv = ["bisect-step", "-k", "unregister-merge", "--memory", "anon", "--kernel-tree", str(tree)]
    status = main([*argv, "--json", str(report), *(["--find-fix"] if find_fix else [])])
    captured = capsys.readouterr()
    assert status == SKIP_STATUS, captured
    line = captured.out.strip()
    assert line.startswith("bisect-step: cannot test: cannot prepare the kernel: ")
    assert "build failed: make: *** No rule to make target 'tinyconfig'" in line
    assert line.endswith("build.log) -> 125 (cannot test)")
    assert captured.out.count("\n") == 1  # one verdict line
    assert _tree_state(tree) == before
    step = json.loads(report.read_text())["matrix"]["bisect_step"]
    assert step["exit_status"] == SKIP_STATUS and step["behaviour"] == "cannot test"
    assert step["find_fix"] is find_fix and step["built_now"] is False


def test_a_patch_that_does_not_apply_is_skipped(tree, cache, can_build, tmp_path, capsys):
    before = _tree_state(tree)
    patch = write_patch(tmp_path / "fix.patch", hunk(10, "no such line", "line ten"))
    argv = ["bisect-step", "-k", "unregister-merge", "--kernel-tree", str(tree), "--patch"]
    assert main([*argv, str(patch)]) == SKIP_STATUS
    line = capsys.readouterr().out
    assert "patch fix.patch does not apply: fs/uffd.c hunk #1" in line
    assert line.endswith("-> 125 (cannot test)\n")
    assert _tree_state(tree) == before
    assert os.listdir(cache / "kbuild")  # it got as far as the build directory
