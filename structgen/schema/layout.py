"""How JSON text is laid out: the whitespace modes, and the regex atoms of its punctuation.

The walker in ``to_regex`` and the tool-call constraint both write brackets, commas, colons and
strings through these, so every mode spells the space between tokens the same way everywhere.
"""

from __future__ import annotations

from structgen.errors import InvalidSchemaError
from structgen.schema.regex_text import optional as _optional

#: Whitespace allowed between JSON tokens in ``flexible`` mode.
WHITESPACE = r"[ \t\n\r]*"

#: The whitespace modes, in one place (docs/json-mode.md#whitespace): ``compact`` as
#: ``json.dumps(v, separators=(",", ":"))``, ``spaced`` as ``json.dumps(v)``, ``indented`` as
#: ``json.dumps(v, indent=2)``; each writes one layout per value, so none can loop on whitespace.
#: ``flexible`` admits any JSON whitespace, to check text written elsewhere.
WHITESPACE_MODES = ("compact", "spaced", "indented", "flexible")
#: The mode every ``whitespace=`` argument defaults to.
DEFAULT_WHITESPACE = "indented"
#: One indentation step of ``indented`` mode (``json.dumps(indent=2)``).
INDENT = "  "

#: One character of a JSON string: a raw code point, a short escape, or a ``\uXXXX`` escape that
#: is not a surrogate (so that one match is one code point, which makes lengths countable).
STRING_CHAR = (
    r'(?:[^"\\\x00-\x1f]|\\["\\/bfnrt]'
    r"|\\u(?:[0-9a-ce-fA-CE-F][0-9a-fA-F]{3}|[dD][0-7][0-9a-fA-F]{2}))"
)
STRING = f'"{STRING_CHAR}*"'


def check_whitespace(whitespace: object) -> str:
    """``whitespace`` if it names a mode, else an ``InvalidSchemaError`` listing the modes."""
    if not isinstance(whitespace, str) or whitespace not in WHITESPACE_MODES:
        allowed = ", ".join(map(repr, WHITESPACE_MODES))
        raise InvalidSchemaError(f"whitespace must be one of {allowed}, not {whitespace!r}")
    return whitespace


class Layout:
    """How one whitespace mode spells the space between JSON tokens, as regex fragments.

    ``level`` is the nesting level of the container being written (0: the whole text), which
    only ``indented`` needs: its lines are indented by ``INDENT`` per level.
    """

    def __init__(self, whitespace: str):
        self.mode = check_whitespace(whitespace)
        self.indented = whitespace == "indented"
        #: Around the whole text and around every token: ``flexible`` only.
        self.ws = WHITESPACE if whitespace == "flexible" else ""
        separators = {"compact": (",", ":"), "spaced": (", ", ": "), "indented": (",", ": "),
                      "flexible": (f"{self.ws},{self.ws}", f"{self.ws}:{self.ws}")}
        self._comma, self.colon = separators[whitespace]  # indented adds its line after the comma

    def _line(self, level: int) -> str:
        return r"\n" + INDENT * level

    def comma(self, level: int) -> str:
        """Between two items or members of a container at ``level``."""
        return self._comma + self._line(level + 1) if self.indented else self._comma

    def enclose(self, open_: str, body: str | None, optional: bool, close: str, level: int) -> str:
        """A container at ``level``: ``body`` (None: nothing) between its brackets, ``optional``
        if the empty container is allowed too. Empty containers are ``[]``/``{}`` (as json.dumps
        writes them) in every mode but ``flexible``."""
        if body is None:
            return f"{open_}{self.ws}{close}"
        if self.indented:
            inside = self._line(level + 1) + body + self._line(level)
            return open_ + (_optional(inside) if optional else inside) + close
        if optional:
            return f"{open_}{self.ws}(?:{body}{self.ws})?{close}"
        return f"{open_}{self.ws}{body}{self.ws}{close}"
