"""The mutation suite's manifest, its comparison of verdicts and its command's refusals.

The kernels themselves are built and booted by `uffdharness mutations` (README, "Proof
that every check catches its bug"); these tests hold the suite to what the issue asks of
it and check the judging on recorded verdicts, without a build.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from uffdharness.cli import main
from uffdharness.matrix.kbuild import patches
from uffdharness.matrix.runner import GUEST_ROW_ID, GUEST_ROW_MEMORY, KernelRun
from uffdharness.mutations import compare, suite, table
from uffdharness.runner import Result
from uffdharness.scenarios import CATALOGUE

SUITE = suite.load()
TREE_GLOB = "sources/debian/linux-source-7.3_*/tree"


def test_the_suite_has_at_least_15_mutations_each_with_a_described_patch():
    assert len(SUITE.mutations) >= 15
    for mutation in SUITE.mutations:
        assert mutation.summary and (mutation.reverts or mutation.breaks), mutation.name
        parsed = patches.parse(mutation.patch)
        assert parsed.touched, mutation.name
        assert not parsed.carries_fixes, f"{mutation.name}: a mutation carries no fix"


def test_every_scenario_with_a_known_bug_catches_some_mutation():
    caught = {scenario for m in SUITE.mutations for scenario, _ in m.caught_by}
    with_known_bug = {item.id for item in CATALOGUE.values() if item.known_bug}
    assert with_known_bug - caught == set()


def test_the_mechanisms_the_issue_names_each_have_a_mutation():
    caught = {scenario for m in SUITE.mutations for scenario, _ in m.caught_by}
    mechanisms = {
        "wp-shmem-survives-zap", "hugetlb-shared-copy", "mmap-changing", "bad-inputs",
        "move", "exact-address", "thread-id", "event-remap", "event-remove", "event-unmap",
        "minor-continue", "poison", "rwp-sync", "rwp-async",
    }  # fmt: skip
    assert mechanisms - caught == set()


def test_a_mutation_that_reverts_a_fix_names_a_fix_the_catalogue_knows():
    fixes = {item.known_bug.fix for item in CATALOGUE.values() if item.known_bug}
    for mutation in SUITE.mutations:
        if mutation.reverts and "(6.4, with the merge series)" not in mutation.reverts:
            subject = mutation.reverts.rsplit(" (", 1)[0]
            assert subject in fixes, (mutation.name, subject)


def _tree() -> Path:
    from uffdharness.matrix.cachedir import cache_root

    found = sorted(cache_root().glob(TREE_GLOB))
    if not found:
        pytest.skip(
            f"no unpacked linux-source-7.3 under {cache_root()} (uffdharness mutations fetches it)"
        )
    return found[-1]


def test_every_patch_applies_to_the_7_3_source_without_fuzz():
    tree = _tree()
    for mutation in SUITE.mutations:
        proc = subprocess.run(
            [
                "patch",
                "-p1",
                "--dry-run",
                "--fuzz=0",
                "-s",
                "-d",
                str(tree),
                "-i",
                str(mutation.patch),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert proc.returncode == 0, (mutation.name, proc.stdout + proc.stderr)


def _manifest(
    tmp_path: Path, body: str, patch: str | None = "Mutation: x\nBreaks: y\n---\n"
) -> Path:
    (tmp_path / "s").mkdir()
    if patch is not None:
        (tmp_path / "s" / "m.patch").write_text(patch)
    path = tmp_path / "manifest.toml"
    path.write_text('base = "debian-src:7.3"\nseries = "s"\n' + body)
    return path


@pytest.mark.parametrize(
    ("body", "patch", "message"),
    [
        ('[[mutation]]\nname = "m"\ncaught_by = ["no-such"]\n', None, "no scenario 'no-such'"),
        (
            '[[mutation]]\nname = "m"\ncaught_by = ["move[shmem]"]\n',
            None,
            "does not run on 'shmem'",
        ),
        ('[[mutation]]\nname = "m"\ncaught_by = []\n', None, "non-empty list"),
        (
            '[[mutation]]\nname = "m"\ncaught_by = ["move"]\n' * 2,
            None,
            "listed twice",
        ),
        ('[[mutation]]\nname = "gone"\ncaught_by = ["move"]\n', None, "no patch"),
        (
            '[[mutation]]\nname = "m"\ncaught_by = ["move"]\n',
            "no header\n---\n",
            "no 'Mutation:' line",
        ),
        ("", None, "no [[mutation]] entries"),
        ("[[mutation]\n", None, "manifest.toml"),
    ],
)
def test_a_bad_manifest_is_one_line_and_exit_2(tmp_path, capsys, body, patch, message):
    path = _manifest(tmp_path, body, **({"patch": patch} if patch else {}))
    with pytest.raises(suite.SuiteError, match=message.replace("[", r"\[").replace("]", r"\]")):
        suite.load(path)
    assert main(["mutations", "--manifest", str(path), "--list"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_a_bad_base_spec_and_an_unmatched_pattern_are_refused_before_any_build(capsys):
    assert main(["mutations", "--base", "debian-src:seven"]) == 2
    assert "debian-src:seven" in capsys.readouterr().err
    assert main(["mutations", "-k", "no-such-mutation"]) == 2
    assert "matches no mutation" in capsys.readouterr().err


def test_list_names_each_mutation_and_its_catchers(capsys):
    assert main(["mutations", "--list", "-k", "merge-pgoff"]) == 0
    out = capsys.readouterr().out
    assert "merge-pgoff" in out and "unregister-merge[anon,memfd,memfd-private,shmem]" in out
    assert "wp-kept-on-mremap" not in out


# --- judging recorded verdicts -------------------------------------------------------------

MUTATION = suite.Mutation(
    "m", Path("m.patch"), "x", "", "y", frozenset({("move", "anon"), ("poison", "anon")})
)


def _run(**verdicts: str) -> KernelRun:
    rows = [
        Result(pair.split("__")[0].replace("_", "-"), pair.split("__")[1], v, f"why {pair}")
        for pair, v in verdicts.items()
    ]
    return KernelRun("debian-src:7.3,patch=m.patch", results=rows)


def test_expected_pairs_that_fail_or_hang_catch_and_the_rest_must_not_move():
    base = compare.verdicts(
        _run(move__anon="pass", poison__anon="pass", api_probe__anon="pass").results
    )
    outcome = compare.compare(
        MUTATION, base, _run(move__anon="fail", poison__anon="hang", api_probe__anon="pass")
    )
    assert outcome.ok and outcome.fully_caught
    assert [c.name for c in outcome.caught] == ["move[anon]", "poison[anon]"]

    escaped = compare.compare(
        MUTATION, base, _run(move__anon="fail", poison__anon="pass", api_probe__anon="pass")
    )
    assert not escaped.ok and [c.name for c in escaped.escaped] == ["poison[anon]"]
    assert "ESCAPED" in table.render([escaped]) and "0 of 1 mutations caught" in table.render(
        [escaped]
    )

    moved = compare.compare(
        MUTATION, base, _run(move__anon="fail", poison__anon="fail", api_probe__anon="fail")
    )
    assert moved.fully_caught and not moved.ok
    assert [(c.name, c.before, c.after) for c in moved.unrelated] == [
        ("api-probe[anon]", "pass", "fail")
    ]


def test_an_expected_pair_with_an_error_verdict_did_not_catch_anything():
    base = compare.verdicts(_run(move__anon="pass", poison__anon="pass").results)
    outcome = compare.compare(MUTATION, base, _run(move__anon="error", poison__anon="fail"))
    assert [c.name for c in outcome.escaped] == ["move[anon]"]


def test_a_kernel_that_gave_no_verdicts_is_an_error_not_a_catch():
    failed = KernelRun(
        "x",
        results=[
            Result(
                GUEST_ROW_ID,
                GUEST_ROW_MEMORY,
                "error",
                "cannot prepare the kernel: patch m.patch does not apply\nmore",
            )
        ],
    )
    outcome = compare.compare(MUTATION, {}, failed)
    assert outcome.error == "cannot prepare the kernel: patch m.patch does not apply"
    assert not outcome.ok and not outcome.fully_caught
    document = table.to_json("debian-src:7.3", "7.3.4", [outcome])
    assert document["summary"] == {"mutations": 1, "caught": 0, "clean": 0}
    assert document["mutations"][0]["status"] == "ERROR"


def test_an_expected_pair_the_run_did_not_include_escapes():
    base = compare.verdicts(_run(move__anon="pass").results)
    outcome = compare.compare(MUTATION, base, _run(move__anon="fail"))
    assert [(c.name, c.reason) for c in outcome.escaped] == [("poison[anon]", "not run")]
