"""Versions: one total order across the schemes embedded software uses."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetguard.firmware.versions import MAX_VERSION_LENGTH, Version, VersionInvalid, parse_version


@pytest.mark.parametrize(
    "ascending",
    [
        pytest.param(
            ["1.0.2", "1.0.2a", "1.0.2k", "1.0.2l", "1.0.2z", "1.0.2za", "1.0.2zd", "1.1.0"], id="openssl-1"
        ),
        pytest.param(
            ["1.1.0l", "1.1.1", "1.1.1n", "1.1.1w", "3.0.0", "3.0.2", "3.0.13", "3.1.0"], id="openssl-3"
        ),
        pytest.param(["2016.73", "2016.74", "2017.75", "2019.78", "2020.81", "2022.83"], id="dropbear"),
        pytest.param(
            ["4.3p2", "4.4p1", "7.4", "7.4p1", "7.4p2", "7.5p1", "8.5p1", "9.7p1", "9.8p1"], id="openssh"
        ),
        pytest.param(
            ["2.9-dev", "2.9-alpha1", "2.9-beta2", "2.9-pre", "2.9-rc1", "2.9-rc2", "2.9", "2.9.1"], id="pre"
        ),
        pytest.param(
            ["3.18.44", "4.4.26", "4.9.337", "4.14.90", "4.14.100", "5.10.0", "5.16.11"], id="kernel"
        ),
        pytest.param(["2018.11", "2019.07-rc4", "2019.07", "2019.10", "2020.01"], id="u-boot"),
        pytest.param(["1.8.31p2", "1.8.32", "1.9.5p1", "1.9.5p2", "1.9.15p5"], id="sudo"),
        pytest.param(["0.94.14rc21", "0.94.14"], id="boa"),
        pytest.param(["0.105", "0.120", "121"], id="polkit"),
    ],
)
def test_schemes_sort_in_release_order(ascending: list[str]) -> None:
    versions = [parse_version(text) for text in ascending]
    assert versions == sorted(versions)
    assert all(a < b for a, b in itertools.pairwise(versions))


@pytest.mark.parametrize(
    ("left", "right"),
    [("1.0", "1.0.0"), ("v1.2", "1.2"), ("2019.07", "2019.7"), ("1.0+build.5", "1.0"), ("1.0.2K", "1.0.2k")],
)
def test_spellings_of_one_version_are_equal(left: str, right: str) -> None:
    assert parse_version(left) == parse_version(right)
    assert hash(parse_version(left)) == hash(parse_version(right))


def test_text_is_kept_as_written() -> None:
    assert str(parse_version(" 7.4p1 ")) == "7.4p1"


@pytest.mark.parametrize("text", ["", "   ", "...", "-+-", "x" * (MAX_VERSION_LENGTH + 1)])
def test_non_versions_are_refused(text: str) -> None:
    with pytest.raises(VersionInvalid, match="version"):
        parse_version(text)


_token = st.one_of(
    st.integers(0, 3000).map(str),
    st.sampled_from(["a", "k", "p", "z", "za", "zd", "rc", "beta", "alpha", "dev", "pre", "git"]),
)
_versions = st.builds(
    lambda tokens, seps: "".join(t + s for t, s in zip(tokens, seps, strict=False)),
    st.lists(_token, min_size=1, max_size=6),
    st.lists(st.sampled_from([".", "-", "_", ""]), min_size=6, max_size=6),
).map(parse_version)


@given(_versions, _versions)
def test_exactly_one_of_less_equal_greater(a: Version, b: Version) -> None:
    assert [a < b, a == b, a > b].count(True) == 1


@given(_versions, _versions)
def test_antisymmetric(a: Version, b: Version) -> None:
    if a <= b <= a:
        assert a == b
        assert hash(a) == hash(b)


@given(_versions, _versions, _versions)
def test_transitive(a: Version, b: Version, c: Version) -> None:
    low, mid, high = sorted((a, b, c))
    assert low <= mid <= high
    assert low <= high


@given(_versions)
def test_reparsing_the_text_gives_the_same_version(v: Version) -> None:
    assert parse_version(str(v)) == v
