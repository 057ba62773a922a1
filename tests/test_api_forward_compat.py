"""A kernel newer than the vendored UAPI is normal: bits this harness cannot name are
facts, never failures; only a bit the kernel's version must have, missing, fails."""

from __future__ import annotations

from uffdharness.abi import (
    ALL_FEATURES,
    FEATURE_SINCE,
    Feature,
    Ioctl,
    PageCategory,
    flag_names,
    unknown_bits,
)
from uffdharness.kernelversion import parse
from uffdharness.scenarios.api import expected_api_ioctls, expected_features, judge_api
from uffdharness.scenarios.checks import Checks

FUTURE_FEATURES = (1 << 19) | (1 << 40)
FUTURE_IOCTL = 1 << 0x0B
API_7_3 = Ioctl.API | Ioctl.REGISTER | Ioctl.UNREGISTER | Ioctl.SET_MODE


def judged(release: str, offered: int, ioctls: int):
    check = Checks()
    judge_api(check, parse(release), Feature(offered), Ioctl(ioctls))
    return check.observation(key="api")


def test_unknown_feature_and_ioctl_bits_are_facts_by_hex_not_failures():
    observation = judged("7.9.0", int(ALL_FEATURES) | FUTURE_FEATURES, API_7_3 | FUTURE_IOCTL)
    assert observation.ok, observation.reason
    assert observation.facts["unknown_features"] == ["0x80000", "0x10000000000"]
    assert observation.facts["unknown_api_ioctls"] == ["0x800"]
    assert observation.facts["offered"][-2:] == ["0x80000", "0x10000000000"]
    assert "RWP" in observation.facts["offered"]


def test_the_7_3_api_passes_and_names_its_new_bits():
    """7.3's UFFDIO_API as Debian's 7.3.4 reports it: before the RWP UAPI was vendored it
    showed up as '0x400' among the API ioctls and '0x60000' among the features."""
    observation = judged("7.3.4", int(ALL_FEATURES), API_7_3)
    assert observation.ok, observation.reason
    assert observation.facts["api_ioctls"] == ["REGISTER", "UNREGISTER", "SET_MODE", "API"]
    assert observation.facts["unknown_features"] == []


def test_a_bit_the_version_must_have_missing_fails():
    no_rwp = int(ALL_FEATURES) & ~int(Feature.RWP | Feature.RWP_ASYNC)
    observation = judged("7.3.4", no_rwp, API_7_3)
    assert not observation.ok
    assert observation.facts["missing_for_version"] == ["RWP", "RWP_ASYNC"]
    observation = judged("7.3.4", int(ALL_FEATURES), API_7_3 & ~Ioctl.SET_MODE)
    assert not observation.ok
    assert observation.facts["api_ioctls_missing_for_version"] == ["SET_MODE"]


def test_older_kernels_are_not_held_to_newer_bits():
    assert Feature.RWP not in expected_features(parse("7.2.9"))
    assert Ioctl.SET_MODE not in expected_api_ioctls(parse("6.12.118"))
    six_twelve = Feature(sum(f for f, since in FEATURE_SINCE.items() if since <= (6, 12)))
    observation = judged("6.12.118", int(six_twelve), Ioctl.API | Ioctl.REGISTER | Ioctl.UNREGISTER)
    assert observation.ok, observation.reason
    # a backport of a newer known bit is a fact, not a failure
    observation = judged("6.12.118", int(six_twelve | Feature.RWP), API_7_3)
    assert observation.ok, observation.reason
    assert observation.facts["offered_before_mainline_version"] == ["RWP"]


def test_flag_names_lists_each_unknown_bit():
    assert flag_names(PageCategory((1 << 9) | (1 << 12))) == ["ACCESSED", "0x1000"]
    assert unknown_bits(Feature(FUTURE_FEATURES | 1)) == [1 << 19, 1 << 40]
