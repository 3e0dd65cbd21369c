"""Parsing and validating policy sets: exact errors, with the line and column an operator needs."""

from __future__ import annotations

import hashlib
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetguard.trust import DEFAULT_POLICIES, PolicyInvalid, PolicySet, PolicySetEmpty, parse_policy_set
from fleetguard.trust.policy import MAX_POLICIES, MAX_POLICY_BYTES

DEFAULT_IDS = (
    "active-devices-connect",
    "active-devices-own-topics",
    "active-devices-type-topics",
    "quarantined-devices-nothing",
    "untrusted-identity-nothing",
    "end-of-life-firmware-nothing",
)
ANY = "permit (principal, action, resource)"
GOOD = f'@id("good")\n{ANY}\nwhen {{ principal.state == "active" }};\n'


def _invalid(text: str, message: str) -> PolicyInvalid:
    with pytest.raises(PolicyInvalid, match=message) as caught:
        parse_policy_set(text)
    return caught.value


def _where(error: PolicyInvalid) -> tuple[int, int, str | None]:
    return error.line, error.column, error.policy_id


# --- what a valid set gives --------------------------------------------------------------------------


def test_the_default_policy_set_parses_with_its_ids_in_order() -> None:
    policies = parse_policy_set(DEFAULT_POLICIES)

    assert policies.ids == DEFAULT_IDS
    assert policies.text == DEFAULT_POLICIES
    assert policies.digest == hashlib.sha256(DEFAULT_POLICIES.encode()).hexdigest()
    assert len(policies.handle) == 6
    assert policies.statements[0] == (
        'permit (principal, action == Fleet::Action::"connect", resource)\n'
        'when { principal.state == "active" };'
    )
    assert [s.split(" ", 1)[0] for s in policies.statements] == ["permit"] * 3 + ["forbid"] * 3


def test_cedar_ids_map_to_the_at_ids() -> None:
    policies = parse_policy_set(DEFAULT_POLICIES)

    assert [policies.policy_id(f"policy{i}") for i in range(6)] == list(DEFAULT_IDS)
    assert policies.policy_id("policy6") == "policy6"
    assert policies.policy_id("other") == "other"


def test_equal_texts_give_equal_sets_and_a_changed_text_another_digest() -> None:
    assert parse_policy_set(GOOD) == parse_policy_set(GOOD)
    assert parse_policy_set(GOOD).digest != parse_policy_set(GOOD + "\n").digest


def test_semicolons_in_strings_and_comments_do_not_split_policies() -> None:
    text = (
        '@id("a;b") // one; policy ; here\n'
        f'{ANY} when {{ context.network == "x;y//z" }};\n'
        '@id("c") forbid (principal, action, resource) when { principal.risk > 99 };'
    )

    assert parse_policy_set(text).ids == ("a;b", "c")


def test_context_and_inventory_attributes_validate() -> None:
    text = (
        f'@id("c") {ANY} when {{ context.hour >= 8 && context.hour < 18 && context.network == "plant" }};\n'
        f'@id("i") {ANY} when {{ principal.labels.contains("lab") && principal in Fleet::Site::"s1" }};\n'
        f'@id("p") {ANY} when {{ principal.posture.firmware_compliant && principal.manufacturer == "Acme" }};'
    )

    assert parse_policy_set(text).ids == ("c", "i", "p")


# --- empty and oversize sets -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text", ["", "   \n\t\n", "// nothing\n  // here either ;\n"], ids=["empty", "blank", "comments"]
)
def test_a_set_without_a_policy_is_refused(text: str) -> None:
    with pytest.raises(
        PolicySetEmpty, match="the policy set has no policy; an empty set would deny everything"
    ):
        parse_policy_set(text)


def test_a_set_over_the_size_limit_is_refused_before_parsing() -> None:
    text = GOOD + "//" + "x" * (MAX_POLICY_BYTES - len(GOOD) - 1)

    error = _invalid(text, f"^line 1, column 1: the policy set is larger than {MAX_POLICY_BYTES} bytes")

    assert _where(error) == (1, 1, None)
    assert parse_policy_set(text[:-1]).ids == ("good",)  # exactly at the limit is fine


def test_the_size_limit_counts_utf8_bytes() -> None:
    text = GOOD + "//" + "é" * ((MAX_POLICY_BYTES - len(GOOD)) // 2)  # fewer characters than bytes

    _invalid(text, f"larger than {MAX_POLICY_BYTES} bytes")


def test_more_than_the_maximum_number_of_policies_is_refused_at_the_first_extra_one() -> None:
    text = "".join(f'@id("p{i}") {ANY};\n' for i in range(MAX_POLICIES + 1))

    error = _invalid(text, f"^line {MAX_POLICIES + 1}, column 1: more than {MAX_POLICIES} policies")

    assert _where(error) == (MAX_POLICIES + 1, 1, None)
    assert len(parse_policy_set(text.rsplit("@id", 1)[0]).ids) == MAX_POLICIES


def test_a_nul_character_is_refused_where_it_is() -> None:
    error = _invalid(GOOD + "// a\x00b\n", r"^line 4, column 5: the policy set contains a NUL character")

    assert _where(error) == (4, 5, None)


# --- parse errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message", "where"),
    [
        (f'@id("a")\n{ANY}\nwhen {{ principal.state == "active" ) }};\n', "unexpected token `\\)`", (3, 36)),
        (f'@id("a")\n{ANY}\nwhen {{ principal.state === "active" }};\n', "unexpected token `=`", (3, 26)),
        (f'@id("a")\n{ANY}\nwhen {{ principal.state == "active" }} }};\n', "unexpected token `}`", (3, 38)),
        ('@id("a")\npermit (principal, action resource);\n', "unexpected token `resource`", (2, 27)),
        (f'@id("a")\n{ANY} when principal.risk > 1;\n', "unexpected token `principal`", (2, 43)),
        (f'@id("a")\n{ANY} when {{ principal.risk # 1 }};\n', "invalid token", (2, 60)),
        (f'@id("a")\n{ANY}\nwhen {{ principal.state == "active }};\n', "invalid token", (3, 27)),
        ('@id("a")\n  foo (principal, action, resource);\n', "invalid policy effect: foo", (2, 3)),
        ('@id("a")\npermit (principal, action, resource, extra);\n', "extra element in the scope: extra",
         (2, 38)),
        ('@id("a")\npermit (prince, action, resource);\n', "invalid variable in the policy scope: prince",
         (2, 9)),
        ('@id("a") @id("b")\npermit (principal, action, resource);\n', "duplicate annotation: @id", (1, 10)),
        (f'@id("a")\n{ANY};;\n', "unexpected token `;`", (2, 38)),
    ],
    ids=[
        "stray-paren", "triple-equals", "stray-brace", "missing-comma", "when-without-braces",
        "bad-character", "unterminated-string", "bad-effect", "extra-scope-element", "bad-scope-variable",
        "two-ids", "empty-statement",
    ],
)  # fmt: skip
def test_a_parse_error_names_the_token(text: str, message: str, where: tuple[int, int]) -> None:
    error = _invalid(text, f"^line {where[0]}, column {where[1]}: parse error: .*{message}")

    assert _where(error) == (*where, None)


def test_a_missing_semicolon_points_at_the_end_of_input() -> None:
    error = _invalid(
        f'@id("a")\n{ANY}\nwhen {{ principal.state == "active" }}\n\n',
        r"^line 3, column 37: parse error: unexpected end of input",
    )

    assert _where(error) == (3, 37, None)


def test_a_missing_semicolon_before_the_next_policy_is_a_parse_error_there() -> None:
    text = f'@id("a")\n{ANY}\n@id("b")\n{ANY};\n'

    error = _invalid(text, r"^line 3, column 1: parse error: unexpected token `@`")

    assert _where(error) == (3, 1, None)


def test_the_first_failing_policy_is_reported() -> None:
    text = GOOD + f'@id("b") {ANY} when {{ ) }};\n' + f'@id("c") {ANY} when {{ ( }};\n'

    assert _where(_invalid(text, r"^line 4, column 54: parse error: unexpected token `\)`")) == (4, 54, None)


# --- ids ---------------------------------------------------------------------------------------------


def test_a_policy_without_an_id_is_refused_at_its_effect() -> None:
    error = _invalid(GOOD + f"\n  {ANY};\n", r'^line 5, column 3: policy 2 has no @id\("..."\) annotation')

    assert _where(error) == (5, 3, None)


def test_an_id_in_a_comment_does_not_count() -> None:
    text = GOOD + '// @id("commented")\nforbid (principal, action, resource);\n'

    error = _invalid(text, r'^line 5, column 1: policy 2 has no @id\("..."\) annotation')

    assert _where(error) == (5, 1, None)


def test_an_id_in_a_string_does_not_count() -> None:
    text = f'{ANY} when {{ context.network == "@id(\\"x\\")" }};'

    assert _where(_invalid(text, r"^line 1, column 1: policy 1 has no @id")) == (1, 1, None)


def test_an_id_needs_a_value() -> None:
    _invalid(f"@id\n{ANY};", r'^line 2, column 1: policy 1 has no @id\("..."\) annotation')


def test_a_duplicate_id_is_refused_at_its_second_use() -> None:
    text = GOOD + f'\n@note("x") @id("good")\n{ANY};\n'

    error = _invalid(text, r"^line 5, column 12: policy id 'good' is used twice")

    assert _where(error) == (5, 12, None)


@pytest.mark.parametrize(
    ("policy_id", "column"),
    [("", 1), ("x" * 129, 1), ("tab\\there", 1), ("a\\u{41}", 1)],
    ids=["empty", "too-long", "escaped-tab", "unicode-escape"],
)
def test_an_id_must_be_short_printable_and_unescaped(policy_id: str, column: int) -> None:
    text = GOOD + f'@id("{policy_id}") {ANY};'

    error = _invalid(
        text, r"^line 4, column 1: a policy id must be 1-128 printable characters, without escapes"
    )

    assert _where(error) == (4, column, None)


def test_an_escaped_id_cannot_repeat_another_id() -> None:
    # Cedar decodes `\u{41}` to `A`: both policies would carry @id "aA".
    _invalid(f'@id("aA") {ANY};\n@id("a\\u{{41}}") {ANY};', "without escapes")


def test_an_id_of_128_printable_characters_is_accepted() -> None:
    assert parse_policy_set(f'@id("{"é" * 128}") {ANY};').ids == ("é" * 128,)


# --- validation against the schema -------------------------------------------------------------------


def test_an_unknown_attribute_is_placed_at_its_use() -> None:
    text = GOOD + f'\n@id("typo")\n{ANY}\nwhen {{ principal.state == "x" || principal.stat == "x" }};\n'

    error = _invalid(
        text,
        r"^line 7, column 44 \(policy 'typo'\): attribute `stat` on entity type `Fleet::Device` not found",
    )

    assert _where(error) == (7, 44, "typo")
    assert error.detail == "attribute `stat` on entity type `Fleet::Device` not found"


def test_an_unknown_context_attribute_is_placed_at_its_use() -> None:
    text = (
        '@id("ctx")\npermit (principal, action == Fleet::Action::"publish", resource)\n'
        'when { context.net == "x" };'
    )

    error = _invalid(
        text,
        r'^line 3, column 16 \(policy \'ctx\'\): attribute `net` in context for Fleet::Action::"publish"',
    )

    assert _where(error) == (3, 16, "ctx")


def test_an_attribute_of_the_wrong_resource_type_is_refused() -> None:
    text = f'@id("f")\n{ANY}\nwhen {{ resource.filter == "x" }};'

    error = _invalid(
        text, r"^line 3, column 17 \(policy 'f'\): attribute `filter` on entity type `Fleet::Broker`"
    )

    assert _where(error) == (3, 17, "f")


def test_an_unknown_action_is_placed_at_its_id_not_at_an_id_or_comment_of_the_same_text() -> None:
    text = (
        GOOD + '@id("fly") // Action::"fly"\npermit (principal, action == Fleet::Action::"fly", resource);\n'
    )

    error = _invalid(
        text, r'^line 5, column 45 \(policy \'fly\'\): unrecognized action `Fleet::Action::"fly"`'
    )

    assert _where(error) == (5, 45, "fly")


def test_an_unknown_entity_type_is_placed_at_its_name() -> None:
    text = '@id("robot")\npermit (principal is Fleet::Robot, action, resource);\n'

    error = _invalid(text, r"^line 2, column 29 \(policy 'robot'\): unrecognized entity type `Fleet::Robot`")

    assert _where(error) == (2, 29, "robot")


def test_a_type_error_is_placed_at_its_policy_not_at_the_previous_one() -> None:
    text = GOOD + f'\n// adds strings\n@id("typed")\n{ANY} when {{ 1 + "a" }};\n'

    error = _invalid(
        text, r"^line 6, column 1 \(policy 'typed'\): unexpected type: expected Bool but saw Long \(fix"
    )

    assert _where(error) == (6, 1, "typed")


def test_of_several_invalid_policies_the_first_is_reported_on_every_run() -> None:
    # Cedar lists validation errors in no fixed order; the report must not change from run to run.
    text = (
        f'@id("one") {ANY} when {{ 1 + "a" }};\n'
        f'@id("two") {ANY} when {{ principal.nope }};\n'
        f'@id("three") {ANY} when {{ context.hour < "x" }};\n'
    )

    for _ in range(20):
        error = _invalid(
            text, r"^line 1, column 1 \(policy 'one'\): unexpected type: expected Bool but saw Long \(fix"
        )
        assert _where(error) == (1, 1, "one")


def test_a_condition_that_is_not_boolean_is_refused() -> None:
    _invalid(
        f'@id("h") {ANY} when {{ context.hour }};',
        r"^line 1, column 1 \(policy 'h'\): unexpected type: expected Bool",
    )


def test_a_template_is_refused() -> None:
    # A template (a `?principal` slot) authorizes nothing and Cedar does not count it among the policies.
    _invalid(
        '@id("t")\npermit (principal == ?principal, action, resource);',
        "Cedar reads 0 policies where fleetguard reads 1",
    )


def test_a_comment_that_cedar_ends_at_a_carriage_return_hides_nothing() -> None:
    # Cedar ends `//` at \r: the text after it is code, for fleetguard too.
    text = GOOD + '// note\r@id("hidden") forbid (principal, action, resource);\n'

    assert parse_policy_set(text).ids == ("good", "hidden")
    _invalid(GOOD + "// note\r garbage\n", r"^line 4, column 17: parse error: unexpected end of input")


# --- no other exception, whatever the text -----------------------------------------------------------

TOKENS = [
    "@id", '@id("x")', '@id("y")', "@note", "(", ")", "{", "}", "[", "]", ",", ";", '"', "\\", "//", "\n",
    "\r", " ", "permit", "forbid", "principal", "action", "resource", "when", "unless", "if", "then",
    "else", "has", "like", "is", "in", "&&", "||", "!", "==", "!=", "<", ">=", "+", "*", "-", ".", "::",
    "Fleet::Device", "Fleet::Action::\"connect\"", "Fleet::Broker", "?principal", "context.hour",
    "principal.state", "principal.risk", "principal.stat", '"active"', "9223372036854775807", "0",
    "\x00", "é", "ip(\"10.0.0.1\")", "decimal(\"1.0\")",
]  # fmt: skip
CEDARISH = st.lists(st.sampled_from(TOKENS) | st.text(max_size=2), max_size=30).map("".join)
SKELETON = st.builds(
    lambda body, tail: f'@id("z") {ANY} when {{ {body} }}{tail}', CEDARISH, st.sampled_from([";", "", ";;"])
)


@given(st.one_of(CEDARISH, SKELETON, st.text(max_size=80)))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_arbitrary_text_parses_or_raises_only_the_documented_errors(text: str) -> None:
    result = _parse_or_error(text)  # anything else propagates and fails the test

    if isinstance(result, PolicyInvalid):
        assert 1 <= result.line <= text.count("\n") + 1
        assert result.column >= 1
        assert re.match(rf"^line {result.line}, column {result.column}( \(policy .*\))?: ", str(result))
    elif isinstance(result, PolicySet):
        assert len(result.ids) == len(set(result.ids)) == len(result.handle) >= 1


def _parse_or_error(text: str) -> PolicySet | PolicyInvalid | PolicySetEmpty:
    try:
        return parse_policy_set(text)
    except (PolicyInvalid, PolicySetEmpty) as error:
        return error
