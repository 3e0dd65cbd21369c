"""Statements, annotations and error positions in policy text, without Cedar."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetguard.trust.source import (
    Statement,
    annotation_id,
    line_column,
    locate_failure,
    locate_name,
    locate_start,
    split_statements,
)

# Cedar-ish pieces: the characters the splitter cares about (quotes, escapes, `;`, `//`, line ends)
# in the company of real tokens, so that generated texts have strings and comments that open and close.
TOKENS = [
    ";", '"', "\\", "\\\"", "//", "/", "\n", "\r", " ", "@id", "(", ")", "{", "}", "[", "]", ",", "==",
    "permit", "forbid", "principal", "action", "resource", "when", "unless", "context", ".", "::",
    '"a;b"', '"//"', "// c ;\n", 'Fleet::Action::"connect"', "\t", "x",
]  # fmt: skip
CEDARISH = st.lists(st.sampled_from(TOKENS) | st.text(max_size=3), max_size=40).map("".join)


def test_split_at_top_level_semicolons_with_offsets() -> None:
    source = (
        '@id("a") permit (principal, action, resource);\n@id("b")\nforbid (principal, action, resource);\n'
    )

    statements = split_statements(source)

    assert statements == [
        Statement('@id("a") permit (principal, action, resource);', 0),
        Statement('\n@id("b")\nforbid (principal, action, resource);', 46),
    ]


def test_semicolons_in_strings_and_comments_do_not_split() -> None:
    source = 'a == "x;y" && b == "//;" // c; d\n;e "\\";" ; f'

    assert split_statements(source) == [
        Statement('a == "x;y" && b == "//;" // c; d\n;', 0),
        Statement('e "\\";" ;', 34),
        Statement(" f", 43),
    ]


def test_a_comment_ends_at_a_carriage_return_as_in_cedar() -> None:
    # Cedar's lexer reads `//[^\n\r]*`: after the \r comes code, and its `;` splits.
    assert split_statements("a // x\rb; c") == [Statement("a // x\rb;", 0), Statement(" c", 9)]


@pytest.mark.parametrize("source", ["", "   \n\t", "// only a comment ;", "// a\n  // b;\n"])
def test_blank_sources_have_no_statements(source: str) -> None:
    assert split_statements(source) == []


def test_blank_statements_are_dropped_and_a_trailing_fragment_kept() -> None:
    assert split_statements("a;\n// only ;\n;b") == [
        Statement("a;", 0),
        Statement("\n// only ;\n;", 2),
        Statement("b", 14),
    ]


def test_statement_blank_ignores_comments_and_whitespace_only() -> None:
    assert Statement("  // x;\n\t", 0).blank
    assert not Statement('// x\n"";', 0).blank
    assert not Statement(";", 0).blank


@given(CEDARISH)
@settings(max_examples=400)
def test_statements_are_the_non_blank_pieces_of_the_source_in_order(source: str) -> None:
    statements = split_statements(source)

    position, gaps = 0, []
    for statement in statements:  # in order, each where it says, with only blank text between them
        assert statement.start >= position
        assert source[statement.start : statement.start + len(statement.text)] == statement.text
        gaps.append(Statement(source[position : statement.start], position))
        position = statement.start + len(statement.text)
    gaps.append(Statement(source[position:], position))
    assert all(gap.blank for gap in gaps)
    interleaved = [gaps[0].text, *(s.text + g.text for s, g in zip(statements, gaps[1:], strict=True))]
    assert "".join(interleaved) == source  # the statements are the source less its blank gaps
    for statement in statements[:-1]:
        assert statement.text.endswith(";")
    for statement in statements:
        assert not statement.blank
        assert split_statements(statement.text) == [Statement(statement.text, 0)]  # no top-level `;` inside


@given(CEDARISH, CEDARISH)
@settings(max_examples=200)
def test_splitting_after_a_complete_statement_is_local(first: str, second: str) -> None:
    head = first.replace('"', "").replace("/", "").replace("\\", "") + ";"  # no open string or comment

    assert split_statements(head + second) == [
        *split_statements(head),
        *(Statement(s.text, s.start + len(head)) for s in split_statements(second)),
    ]


# --- annotations -------------------------------------------------------------------------------------


def test_annotation_id_and_its_offset() -> None:
    statement = Statement(
        '\n  @note("x")\n  @id ( "cam-\\"1\\"" )\npermit (principal, action, resource);', 10
    )

    assert annotation_id(statement) == ('cam-\\"1\\"', 10 + statement.text.index("@id"))


@pytest.mark.parametrize(
    "text",
    [
        '// @id("commented")\npermit (principal, action, resource);',
        'permit (principal, action, resource) when { context.network == "@id(\\"x\\")" };',
        'permit (principal, action, resource) when { context.network == "x @id(" };',
        "permit (principal, action, resource);",
        '@idx("a") permit (principal, action, resource);',
    ],
    ids=["in-comment", "in-string", "in-string-unbalanced", "none", "other-annotation"],
)
def test_an_id_outside_code_does_not_count(text: str) -> None:
    assert annotation_id(Statement(text, 0)) is None


def test_an_id_after_a_commented_one_counts() -> None:
    statement = Statement('// @id("old")\n@id("new") permit (principal, action, resource);', 0)

    assert annotation_id(statement) == ("new", 14)


# --- positions ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offset", "expected"),
    [
        (0, (1, 1)),
        (2, (1, 3)),
        (3, (2, 1)),
        (4, (2, 2)),
        (7, (3, 1)),
        (8, (3, 2)),
        (99, (3, 2)),
        (-5, (1, 1)),
    ],
)
def test_line_column_is_one_based_and_clamped(offset: int, expected: tuple[int, int]) -> None:
    assert line_column("ab\ncde\nf", offset) == expected


def test_locate_name_finds_the_attribute_after_a_dot_not_a_longer_name() -> None:
    statement = Statement(
        'x;\n@id("stat") permit (principal, action, resource)\n'
        'when { principal.state == "stat" && principal.stat };',
        2,
    )
    offset = locate_name(statement, "stat")

    assert statement.text[offset - 2 :].startswith("stat }")


def test_locate_name_finds_a_quoted_entity_id() -> None:
    statement = Statement('permit (principal, action == Fleet::Action::"fly", resource);', 0)

    assert locate_name(statement, "fly") == statement.text.index('"fly"')


def test_locate_name_falls_back_to_the_first_code() -> None:
    statement = Statement("\n  // a comment\n  permit (principal, action, resource);", 40)

    assert locate_name(statement, "nowhere") == 40 + statement.text.index("permit")
    assert locate_start(statement) == 40 + statement.text.index("permit")


def test_locate_failure_of_a_statement_that_parses_is_its_start() -> None:
    assert locate_failure(Statement("fine;", 7), lambda _text: None) == 7


def test_locate_failure_bisects_to_the_offending_token() -> None:
    text = "abc xyz;"

    def failure(prefix: str) -> str | None:
        return "unexpected token `xyz`" if "xyz" in prefix else "unexpected end of input"

    assert locate_failure(Statement(text, 100), failure) == 104


def test_locate_failure_at_end_of_input_points_past_the_code() -> None:
    def failure(_prefix: str) -> str | None:
        return "unexpected end of input"

    assert locate_failure(Statement("abc  \n", 3), failure) == 6


def test_locate_failure_ignores_a_token_inside_a_comment() -> None:
    text = "a ) // )\n;"

    def failure(prefix: str) -> str | None:
        return "unexpected token `)`" if prefix.endswith(";") else "unexpected end of input"

    assert locate_failure(Statement(text, 0), failure) == 2
