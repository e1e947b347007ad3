"""A small, safe filter language for --where: columns, literals, comparisons, in, and/or/not, len(). Never eval.

Grammar::

    expr       := or
    or         := and ("or" and)*
    and        := not ("and" not)*
    not        := "not" not | comparison
    comparison := value (("==" | "!=" | "<" | "<=" | ">" | ">=" | "in" | "not in") value)?
    value      := STRING | NUMBER | true | false | null | COLUMN | len(value) | [value, ...] | "(" expr ")"

COLUMN is a name such as ``language`` or a dotted path into nested objects such as ``meta.source``; a row that lacks
it reads it as null.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from typing import Any

from dpo_cli.core.errors import DataError

Predicate = Callable[[dict], Any]


class FilterError(Exception):
    """Raised while evaluating on one row; the caller adds the file and line."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


_TOKEN = re.compile(r"""
    \s*(?:
      (?P<number>-?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)
    | (?P<string>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
    | (?P<op>==|!=|<=|>=|<|>|\(|\)|\[|\]|,)
    | (?P<name>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
    )""", re.VERBOSE)

_KEYWORDS = {"and", "or", "not", "in", "true", "false", "null", "True", "False", "None", "len"}
_COMPARE = {"==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt,
            ">=": operator.ge}
_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\", "'": "'", '"': '"'}


def _tokens(text: str) -> list[tuple[str, str, int]]:
    out, pos = [], 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            column = len(text[:pos]) + len(text[pos:]) - len(text[pos:].lstrip()) + 1
            raise DataError(f"--where: unexpected character {text[column - 1]!r} at column {column} of {text!r}")
        kind = match.lastgroup
        out.append((kind, match.group(kind), match.start(kind) + 1))
        pos = match.end()
    out.append(("end", "", len(text) + 1))
    return out


def _unquote(token: str) -> str:
    body = token[1:-1]
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), "\\" + m.group(1)), body)


MAX_DEPTH = 100  # nesting of parentheses, lists and nots: no filter a person writes goes deeper


class _Parser:
    def __init__(self, text: str):
        self.text, self.tokens, self.i = text, _tokens(text), 0
        self.columns: set[str] = set()
        self.depth = 0

    def deeper(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise DataError(f"--where: the expression nests parentheses, lists or 'not' more than {MAX_DEPTH} levels "
                            f"deep")

    def peek(self) -> tuple[str, str, int]:
        return self.tokens[self.i]

    def take(self) -> tuple[str, str, int]:
        token = self.tokens[self.i]
        self.i += 1
        return token

    def fail(self, what: str) -> DataError:
        kind, value, column = self.peek()
        found = "the end" if kind == "end" else repr(value)
        return DataError(f"--where: expected {what} at column {column}, found {found} in {self.text!r}")

    def expect(self, value: str) -> None:
        if self.peek()[1] != value or self.peek()[0] == "string":
            raise self.fail(f"'{value}'")
        self.take()

    def word(self, value: str) -> bool:
        kind, text, _ = self.peek()
        return kind == "name" and text == value

    def parse(self) -> Predicate:
        node = self.or_()
        if self.peek()[0] != "end":
            raise self.fail("'and', 'or' or the end")
        return node

    def or_(self) -> Predicate:
        parts = [self.and_()]
        while self.word("or"):
            self.take()
            parts.append(self.and_())
        if len(parts) == 1:
            return parts[0]
        return lambda row: any(p(row) for p in parts)

    def and_(self) -> Predicate:
        parts = [self.not_()]
        while self.word("and"):
            self.take()
            parts.append(self.not_())
        if len(parts) == 1:
            return parts[0]
        return lambda row: all(p(row) for p in parts)

    def not_(self) -> Predicate:
        if self.word("not"):
            self.take()
            self.deeper()
            inner = self.not_()
            self.depth -= 1
            return lambda row: not inner(row)
        return self.comparison()

    def comparison(self) -> Predicate:
        left = self.value()
        kind, op, _ = self.peek()
        if kind == "op" and op in _COMPARE:
            self.take()
            right = self.value()
            compare = _COMPARE[op]

            def evaluate(row: dict) -> bool:
                a, b = left(row), right(row)
                try:
                    return compare(a, b)
                except TypeError:
                    raise FilterError(f"cannot compare {_type(a)} with {_type(b)} using '{op}'") from None

            return evaluate
        negate = False
        if self.word("not") and self.tokens[self.i + 1][1] == "in":
            self.take()
            negate = True
        if self.word("in"):
            self.take()
            right = self.value()

            def contains(row: dict) -> bool:
                a, b = left(row), right(row)
                try:
                    found = a in b
                except TypeError:
                    raise FilterError(f"cannot test {_type(a)} 'in' {_type(b)}") from None
                return not found if negate else found

            return contains
        if negate:
            raise self.fail("'in'")
        return left

    def value(self) -> Predicate:
        kind, text, _ = self.peek()
        if kind == "number":
            self.take()
            number = float(text) if any(ch in text for ch in ".eE") else int(text)
            return lambda row: number
        if kind == "string":
            self.take()
            string = _unquote(text)
            return lambda row: string
        if kind == "op" and text == "(":
            self.take()
            self.deeper()
            inner = self.or_()
            self.expect(")")
            self.depth -= 1
            return inner
        if kind == "op" and text == "[":
            self.take()
            items = []
            self.deeper()
            while not (self.peek()[0] == "op" and self.peek()[1] == "]"):
                items.append(self.value())
                if self.peek()[1] == ",":
                    self.take()
                elif self.peek()[1] != "]":
                    raise self.fail("',' or ']'")
            self.take()
            self.depth -= 1
            return lambda row: [item(row) for item in items]
        if kind == "name":
            if text in ("true", "True"):
                self.take()
                return lambda row: True
            if text in ("false", "False"):
                self.take()
                return lambda row: False
            if text in ("null", "None"):
                self.take()
                return lambda row: None
            if text == "len":
                self.take()
                self.expect("(")
                inner = self.value()
                self.expect(")")

                def length(row: dict) -> int:
                    value = inner(row)
                    try:
                        return len(value)
                    except TypeError:
                        raise FilterError(f"len() of {_type(value)}") from None

                return length
            if text in _KEYWORDS:
                raise self.fail("a value")
            self.take()
            self.columns.add(text)
            return _column(text)
        raise self.fail("a value")


def _column(path: str) -> Predicate:
    # A row without the column reads it as null, as in SQL; a name that no row has is caught on the first row of
    # each file by the pipeline, with a did-you-mean.
    parts = path.split(".")
    if len(parts) == 1:
        return lambda row: row.get(path)

    def nested(row: dict) -> Any:
        value: Any = row
        for part in parts:
            if type(value) is not dict:
                return None
            value = value.get(part)
        return value

    return nested


def _type(value: Any) -> str:
    return {str: "text", int: "a number", float: "a number", bool: "a boolean", type(None): "null",
            list: "a list", dict: "an object"}.get(type(value), type(value).__name__)


def compile_where(text: str) -> Predicate:
    """Parse ``text`` once into a function of a row; raises DataError for a malformed expression."""
    if not text or not text.strip():
        raise DataError("--where: the expression is empty")
    return _Parser(text).parse()


def columns_of(text: str) -> set[str]:
    parser = _Parser(text)
    parser.parse()
    return parser.columns
