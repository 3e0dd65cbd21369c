"""Statements compiled once and run on the database driver, for the paths where SQLAlchemy costs most.

Theory of operation. Running a built Core statement through SQLAlchemy costs about 60 to 100 µs of
Python (cache lookup, parameter processing, execution events, result set-up), and a session-based
transaction about 100 µs more; SQLite runs a statement that fleetguard's hot paths use in 5 to 40 µs.
On such a path (``simplereenroll``: one read, then one write transaction of six statements) that
overhead was most of the server's time. :class:`Prepared` compiles a Core statement once per dialect,
keeping what SQLAlchemy would do at run time: the SQL text in the driver's parameter style, the
parameters' order and the bind and result processors of their types (a :class:`UtcDateTime` is still
refused naive and read back aware). :class:`DriverTransaction` runs such statements on the DBAPI
cursor of one pooled connection. The SQL is the same text SQLAlchemy would send, so the statements
behave the same on SQLite and PostgreSQL (``FOR UPDATE`` / ``FOR SHARE`` included), and psycopg
prepares them server-side after a few executions on a connection.

Transactions come from :meth:`fleetguard.store.database.Database.driver_transaction` and
:meth:`~fleetguard.store.database.Database.driver_reading`, which keep the rules of their session
counterparts (the writer queue and ``BEGIN IMMEDIATE`` on SQLite, commit or roll back as a whole, driver
errors translated to :mod:`fleetguard.store.errors`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from sqlalchemy import Select
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ClauseElement

__all__ = ["DriverRow", "DriverTransaction", "Prepared"]

_Processor = Callable[[Any], Any] | None


class DriverRow:
    """One result row: columns by name (``row.serial``), by position (``row[0]``), or unpacked."""

    __slots__ = ("_index", "_values")

    def __init__(self, index: Mapping[str, int], values: tuple[Any, ...]) -> None:
        self._index = index
        self._values = values

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[self._index[name]]
        except KeyError:
            raise AttributeError(name) from None

    def __getitem__(self, position: int) -> Any:
        return self._values[position]

    def __len__(self) -> int:
        return len(self._values)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)


class _Compiled:
    """A statement as one dialect's driver runs it."""

    __slots__ = ("_binds", "_defaults", "_index", "_positional", "_results", "sql")

    def __init__(self, statement: ClauseElement, dialect: Dialect) -> None:
        compiled = statement.compile(dialect=dialect)
        if (
            not isinstance(compiled, SQLCompiler)
            or compiled.escaped_bind_names
            or compiled.post_compile_params
        ):
            # Escaped names and expanding parameters (IN lists) are rewritten by SQLAlchemy per run.
            raise TypeError("only SQL statements with plain parameter names and no IN lists can be prepared")
        self.sql = compiled.string
        self._positional = bool(compiled.positional)
        names = list(compiled.positiontup or ()) if self._positional else list(compiled.bind_names.values())
        binds = {name: bind for bind, name in compiled.bind_names.items()}
        # Literal values of the statement itself (``WHERE id = 1``) are bound like any other.
        self._defaults = {name: bind.effective_value for name, bind in binds.items() if not bind.required}
        self._binds: tuple[tuple[str, _Processor], ...] = tuple(
            (name, binds[name].type.dialect_impl(dialect).bind_processor(dialect)) for name in names
        )
        columns = statement.selected_columns if isinstance(statement, Select) else ()
        self._index = {str(column.key): position for position, column in enumerate(columns)}
        self._results: tuple[_Processor, ...] = tuple(
            column.type.dialect_impl(dialect).result_processor(dialect, None) for column in columns
        )

    def parameters(self, values: Mapping[str, object]) -> tuple[Any, ...] | dict[str, Any]:
        """Return ``values`` (and the statement's literals) processed, in the driver's style."""
        processed = []
        for name, processor in self._binds:
            value = values[name] if name in values else self._defaults[name]
            processed.append(value if processor is None else processor(value))
        if self._positional:
            return tuple(processed)
        return {name: value for (name, _), value in zip(self._binds, processed, strict=True)}

    def row(self, values: Sequence[Any]) -> DriverRow:
        """Return a driver's result row with each column's result processor applied."""
        converted = tuple(
            value if processor is None else processor(value)
            for value, processor in zip(values, self._results, strict=True)
        )
        return DriverRow(self._index, converted)


class Prepared:
    """A Core statement (``select``, ``insert``, ``update``) compiled once per dialect when first run.

    Its parameters are the names of its ``bindparam``s (an ``insert(table)`` without values binds
    every column by its name). Raises ``TypeError`` on first use if the statement cannot be run this
    way, and ``KeyError`` when a parameter without a value is not given.
    """

    __slots__ = ("_compiled", "_lock", "statement")

    def __init__(self, statement: ClauseElement) -> None:
        self.statement = statement
        self._compiled: dict[tuple[type[Dialect], str], _Compiled] = {}
        self._lock = threading.Lock()

    def compiled_for(self, dialect: Dialect) -> _Compiled:
        """Return the statement compiled for ``dialect`` (compiled at the first call)."""
        key = (type(dialect), dialect.paramstyle)
        compiled = self._compiled.get(key)
        if compiled is None:
            with self._lock:
                compiled = self._compiled.setdefault(key, _Compiled(self.statement, dialect))
        return compiled


class DriverTransaction:
    """Runs :class:`Prepared` statements on one DBAPI connection inside one transaction.

    Obtained from ``Database.driver_transaction()`` or ``Database.driver_reading()``; valid only
    inside that ``with`` block. Driver errors raised here are translated when the block exits.
    """

    __slots__ = ("_cursor", "_dialect")

    def __init__(self, cursor: Any, dialect: Dialect) -> None:
        self._cursor = cursor
        self._dialect = dialect

    def execute(self, prepared: Prepared, parameters: Mapping[str, object] | None = None) -> None:
        """Run ``prepared`` once with ``parameters``."""
        compiled = prepared.compiled_for(self._dialect)
        self._cursor.execute(compiled.sql, compiled.parameters(parameters or {}))

    def execute_many(self, prepared: Prepared, rows: Sequence[Mapping[str, object]]) -> None:
        """Run ``prepared`` (an insert) once for each of ``rows``."""
        if not rows:
            return
        compiled = prepared.compiled_for(self._dialect)
        if len(rows) == 1:
            self._cursor.execute(compiled.sql, compiled.parameters(rows[0]))
            return
        self._cursor.executemany(compiled.sql, [compiled.parameters(row) for row in rows])

    def rows(self, prepared: Prepared, parameters: Mapping[str, object] | None = None) -> list[DriverRow]:
        """Run the query ``prepared``; return every row."""
        compiled = prepared.compiled_for(self._dialect)
        self._cursor.execute(compiled.sql, compiled.parameters(parameters or {}))
        return [compiled.row(values) for values in self._cursor.fetchall()]

    def first(self, prepared: Prepared, parameters: Mapping[str, object] | None = None) -> DriverRow | None:
        """Run the query ``prepared``; return its first row, or None when there is none."""
        compiled = prepared.compiled_for(self._dialect)
        self._cursor.execute(compiled.sql, compiled.parameters(parameters or {}))
        values = self._cursor.fetchone()
        return None if values is None else compiled.row(values)
