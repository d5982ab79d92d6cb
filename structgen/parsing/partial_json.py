"""Incremental JSON parsing: the partial value of a document while the model is still writing it.

Streaming shows the caller what the model has written so far, so the parser shows only what is
certain. A number or literal appears once complete (``12`` may yet become ``123``, ``t`` may yet be
invalid); a string appears as soon as it opens and grows, since every character written is final.

It is fed once per token, so its cost is linear in the text: each character is handled once and the
prefix is never parsed again. Nesting lives on an explicit stack, not the call stack, so a deeply
nested document cannot hit the recursion limit.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["IncrementalJSONParser", "PartialJSONError"]


class PartialJSONError(ValueError):
    """Text that is not JSON. ``offset`` counts characters in everything fed so far."""

    def __init__(self, offset: int, expected: str, found: str | None):
        self.offset = offset
        self.expected = expected
        got = "end of input" if found is None else repr(found)
        super().__init__(f"invalid JSON at offset {offset}: expected {expected}, got {got}")


# Parser states: what the next character may be. Those before _STRING skip whitespace first.
(_VALUE, _FIRST_ITEM, _FIRST_KEY, _KEY, _COLON, _AFTER_VALUE, _END,
 _STRING, _ESCAPE, _UNICODE, _NUMBER, _LITERAL) = range(12)  # fmt: skip

_EXPECTED = {
    _VALUE: "a JSON value",
    _FIRST_ITEM: "a JSON value or ']'",
    _FIRST_KEY: "'\"' (a member name) or '}'",
    _KEY: "'\"' (a member name)",
    _COLON: "':'",
    _END: "end of input",
    _STRING: "'\"' or a character (control characters must be escaped)",
    _ESCAPE: "one of '\"\\/bfnrtu' after '\\'",
    _UNICODE: "a hex digit",
    _NUMBER: "a digit",
}

_WHITESPACE = re.compile(r"[ \t\n\r]*")
_PLAIN = re.compile(r'[^"\\\x00-\x1f]+')  # string characters that stand for themselves
_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_HEX = {c: int(c, 16) for c in "0123456789abcdefABCDEF"}
_LITERALS = {"t": ("true", True), "f": ("false", False), "n": ("null", None)}

# The number grammar as a DFA, state -> {character: next state}; _NUMBER_ENDS may end a number.
_START, _SIGN, _ZERO, _INT, _DOT, _FRAC, _E, _E_SIGN, _EXP = range(9)
_DIGITS = "0123456789"
_NUMBER_MOVES = [
    {"-": _SIGN, "0": _ZERO, **dict.fromkeys(_DIGITS[1:], _INT)},
    {"0": _ZERO, **dict.fromkeys(_DIGITS[1:], _INT)},
    {".": _DOT, "e": _E, "E": _E},
    {**dict.fromkeys(_DIGITS, _INT), ".": _DOT, "e": _E, "E": _E},
    dict.fromkeys(_DIGITS, _FRAC),
    {**dict.fromkeys(_DIGITS, _FRAC), "e": _E, "E": _E},
    {**dict.fromkeys(_DIGITS, _EXP), "+": _E_SIGN, "-": _E_SIGN},
    dict.fromkeys(_DIGITS, _EXP),
    dict.fromkeys(_DIGITS, _EXP),
]
_NUMBER_ENDS = frozenset({_ZERO, _INT, _FRAC, _EXP})
_INTEGER_ENDS = frozenset({_ZERO, _INT})


class _Frame:
    """An open object or array: where its members go, and its own key in its parent (for paths)."""

    __slots__ = ("container", "key", "member")

    def __init__(self, container: dict | list, key: Any):
        self.container = container
        self.key = key
        self.member = None  # the key of the object member being read


class IncrementalJSONParser:
    """One JSON value, fed in chunks that may split anything (a number, an escape, a key, ``true``).

    ``value`` is the partial value so far: never invalid for what it contains, only incomplete.
    Objects and arrays appear when they open; a member appears once its key is complete and its
    value has started; numbers and ``true``/``false``/``null`` appear only when complete; strings
    appear when they open and grow, their paths listed in ``open_strings`` until they close.
    """

    def __init__(self) -> None:
        self._chunks = [""]
        self._offset = 0  # characters fed before the current chunk
        self._state = _VALUE
        self._stack: list[_Frame] = []
        self._value: Any = None
        self._error: PartialJSONError | None = None
        self._changed = False
        # The string being read: its decoded pieces (a number's characters while one is read), whether
        # it is a key, its key in the parent, whether ``value`` lags behind the pieces (joined only
        # when read, so a long string costs no join per chunk), a held-back high surrogate, a \uXXXX.
        self._parts: list[str] = []
        self._is_key = False
        self._slot: Any = None
        self._dirty = False
        self._high = 0
        self._code = self._code_digits = 0
        self._number_state = _START
        self._literal = ""
        self._literal_at = 0
        self._handlers = [
            self._value_start, self._first_item, self._first_key, self._key, self._colon,
            self._after_value, self._end, self._string, self._escape, self._unicode,
            self._number, self._literal_char,
        ]  # fmt: skip

    # --- public ---------------------------------------------------------------------------------

    def feed(self, chunk: str) -> bool:
        """Consume ``chunk``. True when the partial value or ``open_strings`` changed (a scalar,
        member or item completed, a string grew or closed, a container opened) or the document
        completed, so the caller knows when a new snapshot is worth showing."""
        if self._error:
            raise self._error
        self._chunks.append(chunk)
        self._changed = False
        handlers, i, n = self._handlers, 0, len(chunk)
        while i < n:
            if self._state < _STRING:
                i = _WHITESPACE.match(chunk, i).end()
                if i == n:
                    break
            i = handlers[self._state](chunk, i)
        self._offset += n
        return self._changed

    def finish(self) -> Any:
        """Declare the end of input and return the value: it completes a root number (nothing else
        can end it) and raises ``PartialJSONError`` if the document is incomplete."""
        if self._error:
            raise self._error
        if self._state == _NUMBER and not self._stack:
            self._end_number("", 0)
        if self._state != _END:
            self._fail("", 0)
        return self.value

    @property
    def value(self) -> Any:
        """The partial value (live: it changes with ``feed``; ``snapshot`` gives a copy). None until
        the root value shows something, e.g. while a root number is being written."""
        if self._dirty:
            text = "".join(self._parts)
            self._parts = [text]
            self._store(text)
        return self._value

    @property
    def done(self) -> bool:
        """A complete JSON value has been read (only whitespace may follow)."""
        return self._state == _END

    @property
    def open_strings(self) -> set[tuple]:
        """Paths (tuples of keys and indices) of strings still being written; () for a root string.
        A partial string is a prefix of the final one, which matters to anyone validating it."""
        if self._state not in (_STRING, _ESCAPE, _UNICODE) or self._is_key:
            return set()
        if not self._stack:
            return {()}
        return {tuple(frame.key for frame in self._stack[1:]) + (self._slot,)}

    @property
    def text(self) -> str:
        """Everything fed so far."""
        if len(self._chunks) > 1:
            self._chunks = ["".join(self._chunks)]
        return self._chunks[0]

    def snapshot(self) -> tuple[Any, frozenset]:
        """A deep copy of ``value`` and the open string paths, safe to keep while parsing goes on."""
        return _copy(self.value), frozenset(self.open_strings)

    # --- values ---------------------------------------------------------------------------------

    def _attach(self, value: Any) -> Any:
        """Put a value into its parent (or make it the root); return its key there."""
        if not self._stack:
            self._value = value
            return None
        frame = self._stack[-1]
        container = frame.container
        if type(container) is list:
            container.append(value)
            return len(container) - 1
        container[frame.member] = value
        return frame.member

    def _complete(self, value: Any) -> None:
        self._attach(value)
        self._changed = True
        self._value_ended()

    def _value_ended(self) -> None:
        if self._stack:
            self._state = _AFTER_VALUE
        else:
            self._state = _END
            self._changed = True

    def _open(self, container: dict | list, state: int) -> None:
        self._stack.append(_Frame(container, self._attach(container)))
        self._state = state
        self._changed = True

    def _close(self) -> None:
        self._stack.pop()
        self._value_ended()

    def _store(self, text: str) -> None:
        """Write the open string's text into its slot, so ``value`` shows it."""
        if self._stack:
            self._stack[-1].container[self._slot] = text
        else:
            self._value = text
        self._dirty = False

    def _fail(self, chunk: str, i: int) -> None:
        self._error = PartialJSONError(
            self._offset + i, self._expected(), chunk[i] if i < len(chunk) else None
        )
        raise self._error

    def _expected(self) -> str:
        if self._state == _AFTER_VALUE:
            return self._separators()
        if self._state == _LITERAL:
            return f"{self._literal[self._literal_at]!r} (of {self._literal})"
        if self._state == _NUMBER and self._number_state in _NUMBER_ENDS:  # input ended inside a container
            return "a digit, " + self._separators()
        return _EXPECTED[self._state]

    def _separators(self) -> str:
        return "',' or ']'" if type(self._stack[-1].container) is list else "',' or '}'"

    # --- state handlers: each takes the chunk and a position, returns the position after it -----

    def _value_start(self, chunk: str, i: int) -> int:
        c = chunk[i]
        if c == '"':
            self._begin_string(is_key=False)
        elif c == "{":
            self._open({}, _FIRST_KEY)
        elif c == "[":
            self._open([], _FIRST_ITEM)
        elif c in _NUMBER_MOVES[_START]:
            self._number_state, self._parts, self._state = _START, [], _NUMBER
            return i  # the number handler reads it
        elif c in _LITERALS:
            self._literal, self._literal_at, self._state = _LITERALS[c][0], 0, _LITERAL
            return i
        else:
            self._fail(chunk, i)
        return i + 1

    def _first_item(self, chunk: str, i: int) -> int:
        if chunk[i] == "]":
            self._close()
            return i + 1
        return self._value_start(chunk, i)

    def _first_key(self, chunk: str, i: int) -> int:
        if chunk[i] == "}":
            self._close()
            return i + 1
        return self._key(chunk, i)

    def _key(self, chunk: str, i: int) -> int:
        if chunk[i] != '"':
            self._fail(chunk, i)
        self._begin_string(is_key=True)
        return i + 1

    def _colon(self, chunk: str, i: int) -> int:
        if chunk[i] != ":":
            self._fail(chunk, i)
        self._state = _VALUE
        return i + 1

    def _after_value(self, chunk: str, i: int) -> int:
        c = chunk[i]
        is_list = type(self._stack[-1].container) is list
        if c == ",":
            self._state = _VALUE if is_list else _KEY
        elif c == ("]" if is_list else "}"):
            self._close()
        else:
            self._fail(chunk, i)
        return i + 1

    def _end(self, chunk: str, i: int) -> int:
        self._fail(chunk, i)

    # --- strings --------------------------------------------------------------------------------

    def _begin_string(self, is_key: bool) -> None:
        self._parts, self._is_key, self._high, self._state = [], is_key, 0, _STRING
        if not is_key:
            self._slot = self._attach("")
            self._changed = True

    def _emit(self, text: str) -> None:
        """Add decoded text to the open string, after a held-back high surrogate that no low one
        followed (json.loads keeps such a lone surrogate, so the parser does too)."""
        if self._high:
            text, self._high = chr(self._high) + text, 0
        if text:
            self._parts.append(text)
            if not self._is_key:
                self._dirty = self._changed = True

    def _string(self, chunk: str, i: int) -> int:
        plain = _PLAIN.match(chunk, i)
        if plain:
            self._emit(plain.group())
            return plain.end()
        c = chunk[i]
        if c == "\\":
            self._state = _ESCAPE
        elif c == '"':
            self._emit("")  # a held-back high surrogate, if any
            self._end_string()
        else:
            self._fail(chunk, i)  # a raw control character
        return i + 1

    def _end_string(self) -> None:
        text = "".join(self._parts)
        if self._is_key:
            self._stack[-1].member = text
            self._state = _COLON
        else:
            self._store(text)
            self._changed = True
            self._value_ended()

    def _escape(self, chunk: str, i: int) -> int:
        c = chunk[i]
        if c == "u":
            self._code = self._code_digits = 0
            self._state = _UNICODE
        elif c in _ESCAPES:
            self._emit(_ESCAPES[c])
            self._state = _STRING
        else:
            self._fail(chunk, i)
        return i + 1

    def _unicode(self, chunk: str, i: int) -> int:
        """One hex digit of \\uXXXX; the escape shows only once all four have arrived."""
        digit = _HEX.get(chunk[i])
        if digit is None:
            self._fail(chunk, i)
        self._code = self._code * 16 + digit
        self._code_digits += 1
        if self._code_digits == 4:
            self._state = _STRING
            self._code_unit(self._code)
        return i + 1

    def _code_unit(self, code: int) -> None:
        """A \\uXXXX escape: a high surrogate waits for the low one that may follow, to make one
        character of the pair, as json.loads does."""
        if self._high and 0xDC00 <= code <= 0xDFFF:
            pair = 0x10000 + ((self._high - 0xD800) << 10) + (code - 0xDC00)
            self._high = 0
            self._emit(chr(pair))
        elif 0xD800 <= code <= 0xDBFF:
            self._emit("")  # the previous high surrogate, if any, stays alone
            self._high = code
        else:
            self._emit(chr(code))

    # --- numbers and literals -------------------------------------------------------------------

    def _number(self, chunk: str, i: int) -> int:
        moves, state, start, n = _NUMBER_MOVES, self._number_state, i, len(chunk)
        while i < n:
            following = moves[state].get(chunk[i])
            if following is None:
                break
            state, i = following, i + 1
        self._parts.append(chunk[start:i])
        self._number_state = state
        if i < n:
            self._end_number(chunk, i)  # the character is read again by the next state
        return i

    def _end_number(self, chunk: str, i: int) -> None:
        if self._number_state not in _NUMBER_ENDS:
            self._fail(chunk, i)
        text = "".join(self._parts)
        self._complete(int(text) if self._number_state in _INTEGER_ENDS else float(text))

    def _literal_char(self, chunk: str, i: int) -> int:
        if chunk[i] != self._literal[self._literal_at]:
            self._fail(chunk, i)
        self._literal_at += 1
        if self._literal_at == len(self._literal):
            self._complete(_LITERALS[self._literal[0]][1])
        return i + 1


def _copy(value: Any) -> Any:
    """Deep copy of JSON data, without recursion (copy.deepcopy would fail on deep nesting)."""
    if type(value) not in (dict, list):
        return value
    root = type(value)()
    work = [(value, root)]
    while work:
        source, target = work.pop()
        items = source.items() if type(source) is dict else enumerate(source)
        for key, item in items:
            if type(item) in (dict, list):
                copied = type(item)()
                work.append((item, copied))
            else:
                copied = item
            if type(target) is list:
                target.append(copied)
            else:
                target[key] = copied
    return root
