"""Firmware posture: version ordering, minimums per device type, end-of-life entries."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetguard.trust import FirmwarePolicy, Posture, TrustInputInvalid, compare_versions, posture_of

VERSIONS = (
    st.lists(
        st.integers(0, 120).map(str) | st.sampled_from(["rc", "beta", "RC", "a", "p"]), min_size=1, max_size=5
    )
    .flatmap(
        lambda parts: st.tuples(
            st.just(parts),
            st.lists(
                st.sampled_from([".", "-", "_", "+", "~", ""]), min_size=len(parts), max_size=len(parts)
            ),
            st.sampled_from(["", "v", "V"]),
        )
    )
    .map(
        lambda t: (
            t[2]
            + "".join(part + separator for part, separator in zip(t[0], t[1], strict=True)).rstrip(".-_+~")
        )
    )
)


@pytest.mark.parametrize(
    ("left", "right", "expected"),
    [
        ("1.10", "1.9", 1),
        ("1.9", "1.10", -1),
        ("1.10.0", "1.9.3", 1),
        ("2.0.0", "2.0.0", 0),
        ("v1.2.3", "1.2.3", 0),
        ("V1.2.3", "v1.2.3", 0),
        ("1-2_3", "1.2.3", 0),
        ("01.002", "1.2", 0),
        ("1.2", "1.2.0", 0),  # trailing zeros do not count
        ("1.2.a", "1.2.9", -1),  # a word sorts before any number at its position
        ("1.2.beta", "1.2.alpha", 1),  # words compare by text
        ("1.2.RC", "1.2.rc", 0),  # case-insensitively
        ("2.0.0rc1", "2.0.0", -1),  # a pre-release is older than its release (fail closed)
        ("2.0.0rc1", "2.0.0rc2", -1),
        ("10", "9", 1),
        ("1.0.100", "1.0.99", 1),
    ],
)
def test_compare_versions(left: str, right: str, expected: int) -> None:
    assert compare_versions(left, right) == expected
    assert compare_versions(right, left) == -expected


@given(VERSIONS)
def test_compare_versions_is_reflexive(version: str) -> None:
    assert compare_versions(version, version) == 0
    assert compare_versions("v" + version.lstrip("vV"), version.lstrip("vV")) == 0


@given(VERSIONS, VERSIONS)
def test_compare_versions_is_antisymmetric(left: str, right: str) -> None:
    assert compare_versions(left, right) == -compare_versions(right, left)
    assert compare_versions(left, right) in {-1, 0, 1}


@given(VERSIONS, VERSIONS, VERSIONS)
def test_compare_versions_is_transitive(a: str, b: str, c: str) -> None:
    if compare_versions(a, b) <= 0 and compare_versions(b, c) <= 0:
        assert compare_versions(a, c) <= 0


LONG = "1" * 65

# --- the firmware policy -----------------------------------------------------------------------------

POLICY = FirmwarePolicy(
    minimum={"*": "2.0", "camera": "3.1.0"},
    end_of_life=frozenset({"1.4.2", "camera@2.9", "door@v5.0"}),
)


def test_a_type_specific_minimum_beats_the_any_type_minimum() -> None:
    assert POLICY.minimum_for("camera") == "3.1.0"
    assert POLICY.minimum_for("door") == "2.0"
    assert FirmwarePolicy(minimum={"camera": "1"}).minimum_for("door") is None
    assert FirmwarePolicy().minimum_for("camera") is None


@pytest.mark.parametrize(
    ("device_type", "version", "compliant"),
    [
        ("camera", "3.1.0", True),
        ("camera", "v3.1.0", True),
        ("camera", "3.10", True),
        ("camera", "3.0.9", False),
        ("camera", "2.5", False),  # meets `*` but not the camera's own minimum
        ("door", "2.5", True),
        ("door", "2.0", True),
        ("door", "1.99", False),
        ("door", "", False),
        ("door", "unknown", False),  # a word against a number: another scheme, not "newer"
        ("door", "garbage!!", False),  # not a version at all
        ("door", "v", False),
    ],
)
def test_compliance_against_the_minimum(device_type: str, version: str, compliant: bool) -> None:
    assert posture_of(POLICY, device_type, version).firmware_compliant is compliant


def test_without_a_minimum_every_version_is_compliant() -> None:
    assert posture_of(FirmwarePolicy(), "camera", "").firmware_compliant
    assert posture_of(FirmwarePolicy(minimum={"door": "2"}), "camera", "anything").firmware_compliant


def test_a_word_scheme_compares_within_itself() -> None:
    policy = FirmwarePolicy(minimum={"*": "A05"})

    assert posture_of(policy, "bios", "A07").firmware_compliant
    assert not posture_of(policy, "bios", "A03").firmware_compliant
    assert not posture_of(policy, "bios", "7.0").firmware_compliant


@pytest.mark.parametrize(
    ("device_type", "version", "end_of_life"),
    [
        ("camera", "1.4.2", True),  # an entry for any type
        ("door", "1.4.2", True),
        ("door", "v1.4.2", True),  # spelled differently, the same version
        ("door", "1.4.2.0", True),  # trailing zeros do not count: 1.4.2.0 is 1.4.2
        ("camera", "2.9", True),  # TYPE@VERSION
        ("camera", "V2.9", True),
        ("door", "2.9", False),  # another type's entry
        ("door", "5.0", True),
        ("camera", "5.0", False),
        ("camera", "3.1.0", False),
        ("camera", "", False),
    ],
)
def test_end_of_life_entries(device_type: str, version: str, end_of_life: bool) -> None:
    assert posture_of(POLICY, device_type, version).end_of_life is end_of_life


def test_posture_carries_the_version_and_the_given_facts() -> None:
    assert posture_of(POLICY, "camera", "2.9", known_vulnerable=True, attestation_fresh=True) == Posture(
        "2.9", firmware_compliant=False, end_of_life=True, known_vulnerable=True, attestation_fresh=True
    )
    assert posture_of(POLICY, "door", "2.1") == Posture("2.1", True, False, False, False)


@pytest.mark.parametrize(
    ("minimum", "end_of_life", "message"),
    [
        ({"camera": ""}, frozenset(), "minimum for 'camera': '' is not a version"),
        ({"*": "1.0 beta"}, frozenset(), r"minimum for '\*': '1.0 beta' is not a version"),
        ({"*": "-1"}, frozenset(), "minimum for '\\*': '-1' is not a version"),
        ({"*": "v"}, frozenset(), "minimum for '\\*': 'v' is not a version"),
        (
            {"*": LONG},
            frozenset(),
            rf"minimum for '\*': '{LONG}' is not a version \(1-64 of \[0-9A-Za-z.\+_~-\]\)$",
        ),
        ({}, frozenset({"camera@"}), "end-of-life entry 'camera@': '' is not a version"),
        ({}, frozenset({"1.0\n"}), "end-of-life entry '1.0\\\\n': '1.0\\\\n' is not a version"),
        ({}, frozenset({"camera@1.0@x y"}), "end-of-life entry 'camera@1.0@x y': 'x y' is not a version"),
    ],
)
def test_invalid_versions_are_refused(
    minimum: dict[str, str], end_of_life: frozenset[str], message: str
) -> None:
    with pytest.raises(TrustInputInvalid, match=f"^{message}"):
        FirmwarePolicy(minimum=minimum, end_of_life=end_of_life)
