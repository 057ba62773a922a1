"""The one way scenarios judge: Checks collects precise problems; KnownBug signatures."""

from __future__ import annotations

from uffdharness.errors import UffdError
from uffdharness.scenarios.checks import Checks, errno_of
from uffdharness.scenarios.model import AtLeast, KnownBug, NonEmpty, fact_at


def test_expect_records_facts_and_names_each_difference():
    check = Checks({"pages": 4})
    assert check.expect("vmas_after_unregister", 3, 2) is False
    assert check.expect("errno", "EAGAIN", "EAGAIN") is True
    check.expect_that("first_fault", None, False, "a WP|WRITE fault at page 1")
    observation = check.observation(key="vmas=3")
    assert observation.facts == {
        "pages": 4,
        "vmas_after_unregister": 3,
        "errno": "EAGAIN",
        "first_fault": None,
    }
    assert not observation.ok
    assert observation.reason == (
        "vmas_after_unregister: 3, expected 2; "
        "first_fault: None, expected a WP|WRITE fault at page 1"
    )


def test_all_expectations_met_is_ok_with_no_reason():
    check = Checks()
    check.expect("layout", [(0, 5, ["um"])], [(0, 5, ["um"])])
    check.fact("note", "anything")
    observation = check.observation("fine")
    assert (observation.ok, observation.reason, observation.facts["note"]) == (True, "", "anything")


def test_problem_adds_a_relation():
    check = Checks()
    check.problem("child wp pages [1], parent [0, 1]")
    assert check.observation("k").reason == "child wp pages [1], parent [0, 1]"


def test_errno_of():
    def refuse():
        raise UffdError(11, "UFFDIO_COPY")

    assert errno_of(refuse) == "EAGAIN"
    assert errno_of(lambda x: x, 1) == "ok"


BUG = KnownBug(fixed_in="6.4", fix="f", signature="s", memory=("anon", "shmem"))


def test_signature_alternatives_paths_and_matchers():
    bug = BUG.showing({"a.b": NonEmpty()}, vmas=AtLeast(2))
    assert bug.shown_by({"a": {"b": [1]}}, "anon")
    assert bug.shown_by({"vmas": 3}, "shmem")
    assert not bug.shown_by({"vmas": 1, "a": {"b": []}}, "anon")
    assert not bug.shown_by({"vmas": 3}, "hugetlb")  # a kind the bug cannot affect
    assert fact_at({"a": {"b": 2}}, "a.c") is None


def test_a_bug_without_a_signature_is_never_shown():
    assert not BUG.shown_by({"vmas": 3}, "anon")
