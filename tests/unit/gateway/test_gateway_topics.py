"""Topic filters (MQTT 3.1.1 / 5.0 section 4.7) and Mosquitto's whole-level %u/%c patterns."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetguard.gateway.errors import TopicFilterInvalid
from fleetguard.gateway.topics import (
    MAX_FILTER_BYTES,
    expand_pattern,
    has_substitution,
    validate_topic_filter,
)

# A level of ordinary characters: no separator, wildcard, NUL, control character or surrogate.
_PLAIN = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/+#%"),
    max_size=12,
)
_LEVEL = st.one_of(_PLAIN, st.just("+"))


@st.composite
def valid_filters(draw: st.DrawFn) -> str:
    levels = draw(st.lists(_LEVEL, min_size=1, max_size=8))
    if draw(st.booleans()):
        levels.append("#")
    topic_filter = "/".join(levels)
    return topic_filter or "#"


@given(valid_filters())
def test_every_well_formed_filter_is_accepted(topic_filter: str) -> None:
    assert validate_topic_filter(topic_filter) == topic_filter


@given(st.lists(_LEVEL, min_size=1, max_size=8), st.integers(min_value=0, max_value=8))
def test_a_multi_level_wildcard_before_the_end_is_refused_at_its_position(levels: list[str], at: int) -> None:
    index = min(at, len(levels))
    bad = "/".join([*levels[:index], "#", *levels[index:], "tail"])
    with pytest.raises(TopicFilterInvalid, match="must be the last level") as caught:
        validate_topic_filter(bad)
    assert caught.value.position == len("/".join(levels[:index])) + (1 if index else 0)
    assert bad[caught.value.position] == "#"


@given(_PLAIN.filter(bool), st.sampled_from(["+", "#"]), st.booleans())
def test_a_wildcard_sharing_its_level_is_refused_there(text: str, wildcard: str, before: bool) -> None:
    level = wildcard + text if before else text + wildcard
    bad = f"a/{level}"
    with pytest.raises(TopicFilterInvalid, match="must fill its level") as caught:
        validate_topic_filter(bad)
    assert caught.value.position == bad.index(wildcard)
    assert caught.value.topic_filter == bad


@given(_PLAIN, _PLAIN, st.sampled_from(["\x00", "\n", "\r", "\x1b", "\x7f", "\x85", "\x9f"]))
def test_nul_and_control_characters_are_refused_at_their_position(head: str, tail: str, control: str) -> None:
    bad = f"{head}{control}{tail}"
    with pytest.raises(TopicFilterInvalid) as caught:
        validate_topic_filter(bad)
    assert caught.value.position == len(head)


def test_empty_filter_is_refused() -> None:
    with pytest.raises(TopicFilterInvalid, match="at least one character"):
        validate_topic_filter("")


def test_the_utf8_length_limit_counts_bytes_not_characters() -> None:
    validate_topic_filter("a" * MAX_FILTER_BYTES)
    with pytest.raises(TopicFilterInvalid, match="65535"):
        validate_topic_filter("é" * (MAX_FILTER_BYTES // 2 + 1))


def test_a_lone_surrogate_is_refused() -> None:
    with pytest.raises(TopicFilterInvalid, match="surrogate") as caught:
        validate_topic_filter("a/\ud800")
    assert caught.value.position == 2


@pytest.mark.parametrize("good", ["#", "+", "/", "a//b", "+/+/#", "devices/%u/#", "%c", "x/%u/%c/+"])
def test_patterns_may_use_whole_level_substitutions(good: str) -> None:
    assert validate_topic_filter(good, patterns=True) == good


@pytest.mark.parametrize(("bad", "position"), [("dev%u/#", 3), ("a/%cx", 2), ("a/b%u", 3)])
def test_a_substitution_must_fill_its_level(bad: str, position: int) -> None:
    with pytest.raises(TopicFilterInvalid, match="must fill its level") as caught:
        validate_topic_filter(bad, patterns=True)
    assert caught.value.position == position


def test_substitutions_are_refused_outside_patterns() -> None:
    with pytest.raises(TopicFilterInvalid, match="only allowed in a pattern") as caught:
        validate_topic_filter("devices/%u/#")
    assert caught.value.position == 8


def test_the_error_names_filter_and_position() -> None:
    with pytest.raises(TopicFilterInvalid, match=r"topic filter 'a/b#' is invalid at position 3"):
        validate_topic_filter("a/b#")


@given(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,20}", fullmatch=True))
def test_expanding_a_pattern_fills_the_username_level(device_id: str) -> None:
    assert expand_pattern("devices/%u/#", username=device_id) == f"devices/{device_id}/#"
    assert not has_substitution(expand_pattern("%u/x/%u", username=device_id))


def test_a_client_id_pattern_cannot_be_expanded_ahead_of_a_connection() -> None:
    with pytest.raises(TopicFilterInvalid, match="%c cannot be expanded") as caught:
        expand_pattern("clients/%c/#", username="dev-1")
    assert caught.value.position == 8


@pytest.mark.parametrize("username", ["", "a/b", "+", "#"])
def test_a_username_that_does_not_fill_one_level_is_refused(username: str) -> None:
    with pytest.raises(TopicFilterInvalid, match="does not fill one level"):
        expand_pattern("devices/%u/#", username=username)
