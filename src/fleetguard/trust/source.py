"""Where in a policy text something is: statements, annotations, and the position of an error.

cedarpy reports a parse error as a message ("unexpected token `}`") and a validation error by a
generated policy id ("policy3"), neither with a position. An operator needs line and column, so:

* the text is split into statements at top-level ``;`` (outside strings and ``//`` comments, which end
  at ``\n`` or ``\r`` as in Cedar's lexer), each with its offset, and each statement is parsed on its
  own: the first that fails is the culprit;
* inside it, the offending token is found by bisection on the statement's prefixes: a prefix that
  stops before the token fails differently (end of input) than one that includes it, so the
  shortest prefix that fails with the full message ends at the token (a message that names an
  element, ``invalid policy effect: foo``, is placed at that element);
* a validation error that names an attribute (``attribute `stat` ... not found``) is placed at that
  attribute's first use in its statement; anything else at the statement's first code (its first
  annotation or its effect, past the whitespace and comments that follow the previous ``;``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "Statement",
    "annotation_id",
    "line_column",
    "locate_failure",
    "locate_name",
    "locate_start",
    "split_statements",
]

_LINE_END = "\n\r"  # Cedar's lexer: a comment is `//[^\n\r]*`
_TOKEN = re.compile(r"unexpected token `([^`]+)`")
_NAMED = re.compile(r": (@?[A-Za-z_][A-Za-z0-9_]*)$")  # "invalid policy effect: foo"
_ID = re.compile(r'@id\s*\(\s*"((?:[^"\\]|\\.)*)"\s*\)')


@dataclass(frozen=True, slots=True)
class Statement:
    """One policy's text (up to and including its ``;``) and its offset in the whole source."""

    text: str
    start: int

    @property
    def blank(self) -> bool:
        """Return whether the statement holds only whitespace and comments."""
        return not _code(self.text).strip()


def split_statements(source: str) -> list[Statement]:
    """Split ``source`` at top-level semicolons; a trailing fragment without ``;`` is a statement too."""
    statements: list[Statement] = []
    start = index = 0
    in_string = in_comment = False
    while index < len(source):
        character = source[index]
        if in_comment:
            in_comment = character not in _LINE_END
        elif in_string:
            if character == "\\":
                index += 1
            elif character == '"':
                in_string = False
        elif character == '"':
            in_string = True
        elif source.startswith("//", index):
            in_comment = True
        elif character == ";":
            statements.append(Statement(source[start : index + 1], start))
            start = index + 1
        index += 1
    if source[start:].strip():
        statements.append(Statement(source[start:], start))
    return [s for s in statements if not s.blank]


def annotation_id(statement: Statement) -> tuple[str, int] | None:
    """Return the statement's ``@id("...")`` value and its offset in the source, or ``None``."""
    code = _code(statement.text)  # an @id inside a comment does not count
    for match in _ID.finditer(statement.text):
        if code[match.start()] == "@":
            return match.group(1), statement.start + match.start()
    return None


def line_column(source: str, offset: int) -> tuple[int, int]:
    """Return the 1-based line and column of ``offset`` in ``source``."""
    offset = max(0, min(offset, len(source)))
    line = source.count("\n", 0, offset) + 1
    column = offset - (source.rfind("\n", 0, offset) + 1) + 1
    return line, column


def locate_failure(statement: Statement, failure: Callable[[str], str | None]) -> int:
    """Return the source offset of the token that makes ``failure(text)`` report its message.

    ``failure`` returns the parser's message for a text, or ``None`` if it parses.
    """
    message = failure(statement.text)
    if message is None:
        return statement.start
    low, high = 1, len(statement.text)
    while low < high:  # the shortest prefix failing with the same message
        middle = (low + high) // 2
        if failure(statement.text[:middle]) == message:
            high = middle
        else:
            low = middle + 1
    if "end of input" in message:  # the statement stops too early: point at its end
        return statement.start + len(statement.text.rstrip())
    code = _code(statement.text)
    token = _TOKEN.search(message)
    if token is not None:  # Cedar may notice the bad token one token late: find it in the prefix
        found = code.rfind(token.group(1), 0, low)  # not in a comment; a string token only in the text
        found = found if found >= 0 else statement.text.rfind(token.group(1), 0, low)
        if found >= 0:
            return statement.start + found
    named = _NAMED.search(message)
    if named is not None:  # Cedar reads the whole policy head first: find the named element in it
        uses = list(re.finditer(rf"(?<![\w@]){re.escape(named.group(1))}(?!\w)", code[:low]))
        if uses:
            return statement.start + uses[-1].start()
    return statement.start + _skip_space(statement.text, max(0, low - 1))


def locate_name(statement: Statement, name: str) -> int:
    """Return the source offset of the first ``.name`` (or ``name``) in the statement, else its start."""
    code = _code(statement.text)
    for pattern in (rf"\.\s*{re.escape(name)}\b", rf"\b{re.escape(name)}\b"):
        match = re.search(pattern, code)
        if match is not None:
            return statement.start + match.start() + (1 if pattern.startswith(r"\.") else 0)
    for quoted in re.finditer(rf'::\s*("{re.escape(name)}")', statement.text):  # an entity id: Action::"fly"
        if code[quoted.start()] == ":":  # in code, not in a comment
            return statement.start + quoted.start(1)
    return locate_start(statement)


def locate_start(statement: Statement) -> int:
    """Return the source offset of the statement's first code (past whitespace and comments)."""
    return statement.start + _skip_space(_code(statement.text), 0)


def _skip_space(text: str, index: int) -> int:
    while index < len(text) and text[index].isspace():
        index += 1
    return index


def _code(text: str) -> str:
    """Return ``text`` with comments and string contents blanked (same length, same offsets)."""
    out = list(text)
    index = 0
    in_string = in_comment = False
    while index < len(text):
        character = text[index]
        if in_comment:
            if character in _LINE_END:
                in_comment = False
            else:
                out[index] = " "
        elif in_string:
            if character == "\\" and index + 1 < len(text):
                out[index] = out[index + 1] = " "
                index += 1
            elif character == '"':
                in_string = False
            else:
                out[index] = " "
        elif character == '"':
            in_string = True
        elif text.startswith("//", index):
            in_comment = True
            out[index] = " "
        index += 1
    return "".join(out)
