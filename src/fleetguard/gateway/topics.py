"""MQTT topic filters: validation, and Mosquitto's ``%u``/``%c`` pattern levels.

A topic filter is what a grant names and what the broker's ACLs match. The rules are those of MQTT
3.1.1 section 4.7 and MQTT 5.0 section 4.7, which agree:

* a filter is at least one character long (4.7.3) and its UTF-8 encoding at most 65,535 bytes (1.5.3);
* it never contains U+0000 (1.5.3);
* ``#`` stands alone in the last level (4.7.1.2), ``+`` alone in its level (4.7.1.3).

fleetguard is stricter in one respect: it also refuses the control characters U+0001..U+001F and
U+007F..U+009F, which MQTT 5.0 1.5.4 says a sender SHOULD NOT use. Filters end up as lines of
Mosquitto's ACL file and as JSON strings in dynamic-security commands; refusing line breaks and other
controls rules out injecting a second ACL line through a filter.

Patterns. Mosquitto's ACL file substitutes ``%u`` (the username, which for a certificate client is the
certificate's CN, the device id) and ``%c`` (the client id) in ``pattern`` lines. Mosquitto 2.0 only
substitutes them when they fill a whole level, so a level that contains ``%u`` or ``%c`` and anything
else is refused here rather than silently never matching. The dynamic-security plugin of Mosquitto
2.0.11 does not substitute at all (verified: a role ACL ``shared/%u/x`` allows publishing on the
literal topic ``shared/%u/x`` and not on ``shared/dev-4/x``), so a pattern is expanded for one device
with :func:`expand_pattern` before it goes into a role.
"""

from __future__ import annotations

from fleetguard.gateway.errors import TopicFilterInvalid

__all__ = [
    "MAX_FILTER_BYTES",
    "SUBSTITUTIONS",
    "expand_pattern",
    "has_substitution",
    "validate_topic_filter",
]

MAX_FILTER_BYTES = 65_535
"""MQTT 3.1.1 / 5.0 section 1.5.3: a UTF-8 encoded string is at most 65,535 bytes."""

SUBSTITUTIONS = frozenset({"%u", "%c"})
"""The whole-level substitutions Mosquitto applies in ACL ``pattern`` lines (mosquitto.conf(5))."""

_SEPARATOR = "/"


def _is_control(char: str) -> bool:
    code = ord(char)
    return code <= 0x1F or 0x7F <= code <= 0x9F


def validate_topic_filter(topic_filter: str, *, patterns: bool = False) -> str:
    """Return ``topic_filter`` if it is a valid MQTT topic filter; raise :class:`TopicFilterInvalid`.

    With ``patterns``, a level may be exactly ``%u`` or ``%c``. The error names the filter and the
    0-based character position of the first fault (``None`` for a fault of the whole filter).
    """
    if not topic_filter:
        raise TopicFilterInvalid(topic_filter, None, "a topic filter is at least one character (MQTT 4.7.3)")
    _require_encodable(topic_filter)
    start = 0
    levels = topic_filter.split(_SEPARATOR)
    for index, level in enumerate(levels):
        _require_level(topic_filter, level, start, last=index == len(levels) - 1, patterns=patterns)
        start += len(level) + 1
    return topic_filter


def _require_encodable(topic_filter: str) -> None:
    for position, char in enumerate(topic_filter):
        if char == "\x00":
            raise TopicFilterInvalid(topic_filter, position, "U+0000 is not allowed (MQTT 1.5.3)")
        if _is_control(char):
            raise TopicFilterInvalid(topic_filter, position, "control characters are not allowed")
        if 0xD800 <= ord(char) <= 0xDFFF:
            raise TopicFilterInvalid(topic_filter, position, "a lone surrogate is not UTF-8 (MQTT 1.5.3)")
    size = len(topic_filter.encode("utf-8"))
    if size > MAX_FILTER_BYTES:
        raise TopicFilterInvalid(
            topic_filter, None, f"{size} bytes of UTF-8; at most {MAX_FILTER_BYTES} (MQTT 1.5.3)"
        )


def _require_level(topic_filter: str, level: str, start: int, *, last: bool, patterns: bool) -> None:
    multi = level.find("#")
    if multi >= 0 and (level != "#" or not last):
        reason = "'#' must be the last level" if level == "#" else "'#' must fill its level"
        raise TopicFilterInvalid(topic_filter, start + multi, f"{reason} (MQTT 4.7.1.2)")
    single = level.find("+")
    if single >= 0 and level != "+":
        raise TopicFilterInvalid(topic_filter, start + single, "'+' must fill its level (MQTT 4.7.1.3)")
    for token in SUBSTITUTIONS:
        found = level.find(token)
        if found < 0:
            continue
        if not patterns:
            raise TopicFilterInvalid(topic_filter, start + found, f"{token} is only allowed in a pattern")
        if level != token:
            raise TopicFilterInvalid(
                topic_filter,
                start + found,
                f"{token} must fill its level (Mosquitto substitutes whole levels)",
            )


def has_substitution(topic_filter: str) -> bool:
    """Return whether a level of ``topic_filter`` is ``%u`` or ``%c``."""
    return any(level in SUBSTITUTIONS for level in topic_filter.split(_SEPARATOR))


def expand_pattern(pattern: str, *, username: str) -> str:
    """Return ``pattern`` with every ``%u`` level replaced by ``username``; validate the result.

    Raises :class:`TopicFilterInvalid` for an invalid pattern, for a ``%c`` level (a client id is not
    known ahead of the connection), and when ``username`` would not fill exactly one level.
    """
    validate_topic_filter(pattern, patterns=True)
    levels = pattern.split(_SEPARATOR)
    if "%c" in levels:
        raise TopicFilterInvalid(
            pattern, pattern.index("%c"), "%c cannot be expanded ahead of a connection; use %u"
        )
    if any(char in username for char in "/+#") or not username:
        raise TopicFilterInvalid(pattern, None, f"username {username[:80]!r} does not fill one level")
    expanded = _SEPARATOR.join(username if level == "%u" else level for level in levels)
    return validate_topic_filter(expanded)
