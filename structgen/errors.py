"""Every error structgen raises, under one base class.

    StructgenError
     ├── SchemaError                 the output type / JSON schema cannot be turned into a constraint
     │    ├── InvalidSchemaError       not a valid schema (wrong keyword type, dangling $ref, ...)
     │    ├── UnsupportedSchemaError   valid, but uses something structgen cannot enforce exactly
     │    └── UnsatisfiableSchemaError no JSON value can satisfy it (minimum > maximum, empty enum, ...)
     ├── ConstraintError             compiling the schema against a vocabulary failed
     │    ├── CompileTimeoutError      the compile ran past its time budget
     │    ├── CompileTooLargeError     the compile ran past its size or memory budget
     │    └── VocabularyError          the tokenizer's tokens cannot be mapped to bytes
     ├── ModelError                  a model or tokenizer could not be loaded
     │    └── ModelNotFoundError       nothing at that name / path; says how to get it
     ├── GenerationError             a request cannot be decoded as asked
     │    ├── EmptyPromptError
     │    ├── PromptTooLongError       prompt does not fit the model's context window
     │    ├── BudgetTooSmallError      max_tokens is below the fewest tokens any valid answer needs
     │    ├── TokenizerMismatchError   constraint compiled for another tokenizer than the model's
     │    └── ServerBusyError          structgen serve: the batch and its queue are full (a 429)
     ├── OutputError                 model text that does not parse or validate (unconstrained text,
     │    │                          a validator stricter than the schema, or a constraint bug: it
     │    │                          carries the raw text)
     │    └── RetriesExhaustedError    with max_retries, every attempt was refused (``attempts``)
     ├── ToolError                   function calling
     │    ├── ToolDefinitionError      a function / model / dict that cannot be described as a tool
     │    ├── ToolCallParseError       <tool_call> blocks that are malformed (one problem per block)
     │    ├── ToolArgumentsError       arguments that do not validate against the tool's parameters
     │    └── ToolInputError           a tools function given a value it cannot use (text that is
     │                                 not a str, max_iterations that is not a count, ...)
     └── BatchInputError             a batch job's schema reference, input or output file is unusable,
          │                          or one input row is (then ``line`` says which)
          └── BatchLockedError         another run holds the output's lock (``holder`` says who)

    UnsafeCacheWarning (a UserWarning, not an error): the cache folder is writable by other users,
    so structgen does not use it.

Schema errors carry a JSON pointer (``pointer``) into the schema the user gave, so the message
says *where* the problem is, not only what it is.
"""

from __future__ import annotations


class StructgenError(Exception):
    """Base class of every error structgen raises on purpose."""


# --- schema -----------------------------------------------------------------------------------


class SchemaError(StructgenError):
    """The output type or JSON schema cannot be compiled; ``pointer`` says where."""

    def __init__(self, reason: str, pointer: str = ""):
        self.reason = reason
        self.pointer = pointer
        where = pointer if pointer else "/ (root)"
        super().__init__(f"{reason} (at schema {where})")


class InvalidSchemaError(SchemaError):
    """Not a valid JSON schema, or not a type pydantic can describe."""


class UnsupportedSchemaError(SchemaError):
    """A valid schema using a feature structgen cannot enforce exactly, so it refuses it."""


class RegexTooLargeError(UnsupportedSchemaError):
    """The schema's regex would pass ``MAX_REGEX_CHARS`` (definitions are inlined at every use);
    ``compile_constraint`` then uses llguidance, or unrolls recursion less deeply.
    ``open_values``: whether the value that passed the limit writes a value the schema leaves
    open, whose regex shrinks with ``max_any_depth`` (False: no shallower nesting can fit)."""

    def __init__(self, reason: str, pointer: str = "", open_values: bool = True):
        super().__init__(reason, pointer)
        self.open_values = open_values


class UnsatisfiableSchemaError(SchemaError):
    """No JSON value satisfies the schema, so no answer could ever be produced."""


class RecursionLimitError(UnsatisfiableSchemaError, UnsupportedSchemaError):
    """Every value here nests a recursive ``$ref`` deeper than the regex compiler unrolls it.

    Where the value is optional (an optional property, array items, an anyOf branch) the regex
    just stops nesting there; this error surfaces only when nesting that deep is required, and
    ``compile_constraint`` then falls back to llguidance, which nests without bound."""


# --- constraint -------------------------------------------------------------------------------


class ConstraintError(StructgenError):
    """Compiling a schema or regex against a vocabulary failed."""


class CompileTimeoutError(ConstraintError):
    """The compile ran past its time budget (``timeout`` seconds)."""


class CompileTooLargeError(ConstraintError):
    """The compile ran past its size or memory budget."""


class VocabularyError(ConstraintError):
    """The tokenizer's vocabulary cannot be mapped to byte strings."""


class UnsafeCacheWarning(UserWarning):
    """The constraint cache folder is writable by other users, so structgen does not use it."""


# --- model ------------------------------------------------------------------------------------


class ModelError(StructgenError):
    """A model or tokenizer could not be loaded."""


class ModelNotFoundError(ModelError):
    """Nothing loadable at the given name or path."""


# --- generation -------------------------------------------------------------------------------


class GenerationError(StructgenError):
    """The request cannot be decoded as asked."""


class EmptyPromptError(GenerationError):
    """The prompt has no text in it."""


class PromptTooLongError(GenerationError):
    """The rendered prompt does not fit into the model's context window."""

    def __init__(self, prompt_tokens: int, context_length: int, attempts: list | None = None):
        self.prompt_tokens = prompt_tokens
        self.context_length = context_length
        self.attempts = list(attempts or [])  # for a retry: the refused attempts before it
        if self.attempts:
            super().__init__(
                f"retry {len(self.attempts)} does not fit: the conversation with the refused "
                f"answers and their validation errors is {prompt_tokens} tokens, which leaves too "
                f"little of the model's {context_length}-token context window for an answer; "
                "lower max_retries or max_tokens (structgen never truncates silently)")
            return
        super().__init__(
            f"the prompt is {prompt_tokens} tokens but the model's context window is "
            f"{context_length} tokens; shorten the prompt (structgen never truncates it silently)"
        )


class BudgetTooSmallError(GenerationError):
    """``max_tokens`` is smaller than the shortest valid answer."""

    def __init__(self, max_tokens: int, min_tokens: int):
        self.max_tokens = max_tokens
        self.min_tokens = min_tokens
        super().__init__(
            f"max_tokens={max_tokens} is too small: the shortest answer that validates needs "
            f"{min_tokens} tokens with this tokenizer; raise max_tokens to at least {min_tokens}"
        )


class TokenizerMismatchError(GenerationError):
    """The constraint was compiled for a different tokenizer than the model uses."""


class ServerBusyError(GenerationError):
    """``structgen serve`` has ``max_batch`` rows decoding and ``max_queue`` waiting: try later."""


# --- output -----------------------------------------------------------------------------------


class OutputError(StructgenError):
    """Model text that does not parse or validate; ``text`` is the raw output, ``problems`` one
    short line per validation error where pydantic gave them (what a retry shows the model)."""

    def __init__(self, reason: str, text: str, problems: list[str] | None = None):
        self.reason = reason
        self.text = text
        self.problems = list(problems or [])
        shown = text if len(text) <= 200 else text[:200] + "..."
        super().__init__(f"{reason}; model output was: {shown!r}")


class RetriesExhaustedError(OutputError):
    """Every attempt (the answer and ``max_retries`` retries) was refused by a validator.

    ``attempts`` holds each attempt (``structgen.Attempt``: its text, its error, its tokens) in
    order; ``text`` is the last one's, and ``__cause__`` the last one's error."""

    def __init__(self, attempts: list):
        self.attempts = list(attempts)
        last = self.attempts[-1]
        if isinstance(last.error, OutputError):
            why = "; ".join(last.error.problems) or last.error.reason
        else:
            why = str(last.error)
        super().__init__(f"{len(self.attempts)} attempts, none validates "
                         f"(max_retries={len(self.attempts) - 1}); the last was refused: {why}",
                         last.text)

    @property
    def errors(self) -> list:
        """Each attempt's error, in order."""
        return [attempt.error for attempt in self.attempts]


# --- tools ------------------------------------------------------------------------------------


class ToolError(StructgenError):
    """Function calling went wrong: a tool definition, a call's text, or its arguments."""


class ToolDefinitionError(ToolError):
    """A tool cannot be described; ``tool`` and ``parameter`` say which and where."""

    def __init__(self, reason: str, tool: str = "", parameter: str = ""):
        self.reason = reason
        self.tool = tool
        self.parameter = parameter
        where = f"tool {tool!r}" + (f", parameter {parameter!r}" if parameter else "") if tool else ""
        super().__init__(f"{reason} ({where})" if where else reason)


class ToolCallParseError(ToolError):
    """Malformed ``<tool_call>`` blocks; ``problems`` is a list of (block index, reason, raw text)."""

    def __init__(self, problems: list[tuple[int, str, str]]):
        self.problems = problems
        lines = [f"block {index}: {reason}: {raw[:120]!r}" for index, reason, raw in problems]
        super().__init__(f"{len(problems)} malformed <tool_call> block(s):\n  " + "\n  ".join(lines))


class ToolArgumentsError(ToolError):
    """Arguments that do not validate for the named tool."""

    def __init__(self, tool: str, reason: str, arguments):
        self.tool = tool
        self.reason = reason
        self.arguments = arguments
        super().__init__(f"arguments for tool {tool!r} do not validate: {reason}")


class ToolInputError(ToolError):
    """A function-calling function was given a value it cannot use; the message names it."""


# --- batch jobs -------------------------------------------------------------------------------


class BatchInputError(StructgenError):
    """A batch job's input is unusable: the whole job (schema, files) or one row (``line``)."""

    def __init__(self, reason: str, line: int | None = None):
        self.reason = reason
        self.line = line
        super().__init__(reason if line is None else f"line {line}: {reason}")


class BatchLockedError(BatchInputError):
    """Another run holds the batch output's lock; ``holder`` is what it wrote about itself
    (pid, host, start time), empty when it had not written that yet."""

    def __init__(self, path: str, holder: dict):
        self.path = path
        self.holder = holder
        if holder:
            who = (f"pid {holder.get('pid')} on host {holder.get('host')!r}, "
                   f"started {holder.get('started')}")
        else:
            who = "a process that has not said who it is yet"
        super().__init__(f"output file {path!r} is locked by another structgen batch run ({who}); "
                         "wait for it to finish or pick another --output")
