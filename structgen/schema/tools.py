"""Tools for Hermes function calling: a name, a description and a JSON schema of the arguments.

A tool comes from a Python function (type hints + Google-style docstring), a pydantic ``BaseModel``
class, or an OpenAI-style dict. Each becomes a ``Tool`` whose ``signature()`` goes into the Hermes
``<tools>`` prompt and whose ``parameters`` schema is what the constraint enforces on the arguments.

Choices made for functions:

- every parameter needs a type hint; ``*args``, ``**kwargs`` and positional-only parameters are
  refused, since a tool is called as ``function(**arguments)``;
- a missing docstring, or a parameter the docstring does not describe, is allowed (the
  description is then empty or absent): the schema alone is enough to call the tool;
- ``parameters`` is closed (``additionalProperties: false``), so an argument the function does not
  take is refused by validation and never produced by the constraint;
- arguments are validated by pydantic in its default (lax) mode, so ``"3"`` passes as an ``int``;
  numbers must be finite in every tool (JSON has no inf or nan; ``1e999`` would read as inf).
"""

from __future__ import annotations

import inspect
import json
import math
import re
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Annotated, Any

import jsonschema
import pydantic
from pydantic.json_schema import GenerateJsonSchema

from structgen.errors import SchemaError, ToolArgumentsError, ToolDefinitionError
from structgen.schema.validation import check_schema, first_problem, validator

#: The names OpenAI-style APIs accept for a function.
NAME_PATTERN = re.compile(r"[a-zA-Z0-9_.-]{1,64}")

# Keys of the inner dict of an OpenAI-style tool; "return" is what transformers' get_json_schema
# adds, "strict" what OpenAI accepts. Both are accepted and ignored.
_FUNCTION_KEYS = frozenset({"name", "description", "parameters", "return", "strict"})

# An indented "name (type):" line, as in a Google-style Args section.
_TYPED_ARGUMENT = re.compile(r"^([ \t]+\w+)[ \t]*\([^()\n]*\):", re.MULTILINE)

# transformers' get_json_schema syntax: "... (choices: ["tea", "coffee"])" ends a description.
_CHOICES = re.compile(r"\(choices:\s*(.*?)\)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Tool:
    """One function the model may call.

    ``function`` is the Python callable to run (sync or async), or None for tools that only
    describe data (BaseModel and dict tools). ``_validate`` turns an arguments dict into the value
    ``validate_arguments`` returns, raising pydantic's or jsonschema's ValidationError; when left
    out, the arguments are checked with jsonschema against ``parameters`` and returned as they are.
    """

    name: str
    description: str
    parameters: dict
    function: Callable | None = None
    _validate: Callable[[dict], Any] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_tool(self)
        if self._validate is None:
            object.__setattr__(self, "_validate", _jsonschema_validator(self.parameters))

    def signature(self) -> dict:
        """The OpenAI-style entry of the Hermes ``<tools>`` list."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }

    def validate_arguments(self, arguments: dict) -> Any:
        """Typed keyword arguments (function tools), a model instance (BaseModel tools) or the dict
        itself (dict tools); anything invalid raises ``ToolArgumentsError``."""
        if not isinstance(arguments, dict):
            reason = f"arguments must be a JSON object, not {type(arguments).__name__}"
            raise ToolArgumentsError(self.name, reason, arguments)
        where = _non_finite(arguments)
        if where is not None:  # 1e999 in JSON text reads as inf, which JSON cannot hold
            raise ToolArgumentsError(self.name, f"a number is not finite (at {where})", arguments)
        try:
            return self._validate(arguments)
        except pydantic.ValidationError as error:
            reason = "; ".join(_pydantic_problem(problem) for problem in error.errors())
        except jsonschema.ValidationError as error:
            reason = f"{error.message} (at {error.json_path})"
        except Exception as error:  # a validator of the user's that fails another way refuses too
            reason = f"the validator raised {describe_exception(error)}"
        raise ToolArgumentsError(self.name, reason, arguments)


def as_tools(tools: Iterable | Any) -> list[Tool]:
    """Each of ``tools`` as a ``Tool``; a single tool is taken as a list of one.

    The names must be unique (the model calls tools by name) and there must be at least one.
    """
    if isinstance(tools, (Tool, dict, str)) or callable(tools):
        tools = [tools]
    try:
        items = list(tools)
    except TypeError:
        raise ToolDefinitionError(f"tools must be a list of tools, not {tools!r}") from None
    converted = [as_tool(item) for item in items]
    if not converted:
        raise ToolDefinitionError("no tools given: pass at least one")
    seen = set()
    for tool in converted:
        if tool.name in seen:
            raise ToolDefinitionError("two tools have the same name", tool=tool.name)
        seen.add(tool.name)
    return converted


def as_tool(obj: Any) -> Tool:
    """A ``Tool`` from a function, a BaseModel class, an OpenAI-style dict, or a ``Tool``."""
    if isinstance(obj, Tool):
        return obj
    if isinstance(obj, dict):
        return _tool_from_dict(obj)
    if isinstance(obj, type) and issubclass(obj, pydantic.BaseModel):
        return _tool_from_model(obj)
    if callable(obj):
        return _tool_from_function(obj)
    raise ToolDefinitionError(
        f"cannot describe {obj!r} as a tool: pass a function, a pydantic BaseModel class, or an "
        'OpenAI-style dict {"type": "function", "function": {"name": ..., "parameters": ...}}'
    )


# --- the three sources ------------------------------------------------------------------------


def _tool_from_dict(spec: dict) -> Tool:
    if "function" in spec:
        if set(spec) != {"type", "function"} or spec["type"] != "function":
            raise ToolDefinitionError(
                'an OpenAI-style tool dict has exactly the keys "type" (= "function") and '
                f'"function", not {sorted(map(str, spec))}'
            )
        spec = spec["function"]
        if not isinstance(spec, dict):
            raise ToolDefinitionError(f'"function" must be a dict, not {spec!r}')
    name = spec.get("name")
    unknown = set(spec) - _FUNCTION_KEYS
    if unknown:
        raise ToolDefinitionError(
            f"unknown key(s) {sorted(map(str, unknown))} in the tool dict; "
            f"expected {sorted(_FUNCTION_KEYS)}",
            tool=name if isinstance(name, str) else "",
        )
    return Tool(
        name=name,
        description=spec.get("description", ""),
        parameters=spec.get("parameters", {"type": "object", "properties": {}}),
    )


def _tool_from_model(model: type[pydantic.BaseModel]) -> Tool:
    try:
        parameters = model.model_json_schema()
    except pydantic.PydanticUserError as error:
        raise ToolDefinitionError(_first_line(error), tool=model.__name__) from None
    return Tool(
        name=model.__name__,
        description=inspect.cleandoc(model.__doc__ or ""),
        parameters=parameters,
        _validate=model.model_validate,
    )


def _tool_from_function(function: Callable) -> Tool:
    """Parameters as a pydantic model built from the signature, described by the docstring.

    Each model field is named ``p0``, ``p1``, ... and aliased to the parameter's name, so that
    parameters called ``json``, ``schema`` or ``_private`` do not clash with pydantic's own names.
    """
    name = _function_name(function)
    try:
        signature = inspect.signature(function)
        hints = typing.get_type_hints(function, include_extras=True)
    except Exception as error:  # evaluating string annotations runs the user's code
        reason = f"cannot read the signature: {describe_exception(error)}"
        raise ToolDefinitionError(reason, tool=name) from None
    description, documented = _docstring(function)
    fields = {
        f"p{position}": _field(name, parameter, hints, documented.get(parameter.name))
        for position, parameter in enumerate(signature.parameters.values())
    }
    model = pydantic.create_model(
        f"{name}_arguments", __config__=pydantic.ConfigDict(extra="forbid", allow_inf_nan=False),
        **fields
    )
    schema = model.model_json_schema(schema_generator=_WithoutFieldTitles)
    parameters = {
        "type": "object",
        "properties": schema["properties"],
        "required": schema.get("required", []),
        "additionalProperties": False,
    }
    if "$defs" in schema:
        parameters["$defs"] = schema["$defs"]
    return Tool(name, description, parameters, function, _keyword_arguments(model))


def _function_name(function: Callable) -> str:
    name = getattr(function, "__name__", None)
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise ToolDefinitionError(
            f"{function!r} has no name usable as a tool name (letters, digits, '_', '.', '-'; "
            "at most 64): use a def function, or wrap it in a Tool"
        )
    return name


def _docstring(function: Callable) -> tuple[str, dict[str, str]]:
    """The summary and the parameter descriptions of a Google-style docstring.

    transformers' parser reads ``name: text`` only; the Google ``name (type): text`` form (the
    Hermes model card's own example) is first rewritten to it.
    """
    from transformers.utils.chat_template_utils import parse_google_format_docstring

    doc = inspect.getdoc(function)
    if not doc:
        return "", {}
    summary, documented, _ = parse_google_format_docstring(_TYPED_ARGUMENT.sub(r"\1:", doc))
    return summary or "", documented


def _field(tool: str, parameter: inspect.Parameter, hints: dict, doc: str | None) -> tuple:
    """The (type, FieldInfo) pair of one parameter for ``pydantic.create_model``."""
    if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
        raise ToolDefinitionError(
            "*args and **kwargs cannot be tool parameters: name each one", tool, parameter.name
        )
    if parameter.kind is parameter.POSITIONAL_ONLY:
        raise ToolDefinitionError(
            "positional-only parameters cannot be passed by name", tool, parameter.name
        )
    if parameter.name not in hints:
        raise ToolDefinitionError("the parameter has no type hint", tool, parameter.name)
    hint = hints[parameter.name]
    try:
        pydantic.TypeAdapter(hint).json_schema()
    except pydantic.PydanticUserError as error:
        reason = f"pydantic cannot describe {hint!r} as a JSON schema: {_first_line(error)}"
        raise ToolDefinitionError(reason, tool, parameter.name) from None
    description, choices = _split_choices(tool, parameter.name, doc)
    extra = {}
    if choices is not None:
        hint = Annotated[hint, pydantic.BeforeValidator(_one_of(choices))]
        extra["json_schema_extra"] = {"enum": choices}
    default = ... if parameter.default is parameter.empty else parameter.default
    return hint, pydantic.Field(default, alias=parameter.name, description=description, **extra)


def _split_choices(tool: str, parameter: str, doc: str | None) -> tuple[str | None, list | None]:
    """A parameter description without its ``(choices: [...])`` tail, and the choices."""
    found = _CHOICES.search(doc) if doc else None
    if found is None:
        return doc, None
    try:
        choices = json.loads(found.group(1))
    except json.JSONDecodeError:
        choices = None
    if not isinstance(choices, list) or not choices:
        reason = f"(choices: ...) must hold a non-empty JSON list, not {found.group(1)!r}"
        raise ToolDefinitionError(reason, tool, parameter)
    choices = [c.strip() if isinstance(c, str) else c for c in choices]
    return doc[: found.start()].strip() or None, choices


def _one_of(choices: list) -> Callable[[Any], Any]:
    """Check the raw JSON value against ``choices``, as the schema's ``enum`` does."""

    def check(value):
        if value not in choices:
            raise ValueError(f"must be one of {choices}")
        return value

    return check


def _keyword_arguments(model: type[pydantic.BaseModel]) -> Callable[[dict], dict]:
    """Validate with ``model`` and return ``{parameter name: typed value}``, defaults included."""
    aliases = {key: info.alias for key, info in model.model_fields.items()}

    def validate(arguments: dict) -> dict:
        instance = model.model_validate(arguments)
        return {alias: getattr(instance, key) for key, alias in aliases.items()}

    return validate


class _WithoutFieldTitles(GenerateJsonSchema):
    """pydantic titles every property after its name; in a tool prompt that is only noise."""

    def field_title_should_be_set(self, schema) -> bool:
        return False


# --- checks shared by every tool --------------------------------------------------------------


def _check_tool(tool: Tool) -> None:
    if not isinstance(tool.name, str) or not NAME_PATTERN.fullmatch(tool.name):
        raise ToolDefinitionError(
            f"a tool name is 1 to 64 letters, digits, '_', '.' or '-', not {tool.name!r}"
        )
    if not isinstance(tool.description, str):
        raise ToolDefinitionError("the description must be a string", tool=tool.name)
    if not isinstance(tool.parameters, dict) or tool.parameters.get("type") != "object":
        raise ToolDefinitionError(
            'parameters must be a JSON schema with "type": "object" (the arguments object), '
            f"not {tool.parameters!r}",
            tool=tool.name,
        )
    try:
        check_schema(tool.parameters)
    except SchemaError as error:
        reason = f"parameters is not usable: {error.reason} (at parameters{error.pointer})"
        raise ToolDefinitionError(reason, tool=tool.name) from None
    if tool.function is not None and not callable(tool.function):
        raise ToolDefinitionError("function must be callable or None", tool=tool.name)


def _jsonschema_validator(parameters: dict) -> Callable[[dict], dict]:
    checker = validator(parameters)

    def validate(arguments: dict) -> dict:
        problem = first_problem(checker, arguments)
        if problem is not None:
            raise problem
        return arguments

    return validate


def _non_finite(arguments: dict) -> str | None:
    """The JSON path of the first float in ``arguments`` that is inf or nan, or None (each
    container is looked at once: arguments built by hand may hold themselves)."""
    stack: list[tuple[str, Any]] = [("$", arguments)]
    seen: set[int] = set()
    while stack:
        path, value = stack.pop()
        if isinstance(value, float) and not math.isfinite(value):
            return path
        if isinstance(value, (dict, list, tuple)):
            if id(value) in seen:
                continue
            seen.add(id(value))
        if isinstance(value, dict):
            stack.extend((f"{path}.{key}", item) for key, item in reversed(value.items()))
        elif isinstance(value, (list, tuple)):
            stack.extend((f"{path}[{index}]", item) for index, item in reversed(list(enumerate(value))))
    return None


def describe_exception(error: BaseException) -> str:
    """``Type: message`` of an exception, also when its ``__str__`` fails (it is user code)."""
    try:
        message = str(error)
    except Exception as failure:
        message = f"<no message: its __str__ raised {type(failure).__name__}>"
    return f"{type(error).__name__}: {message}"


def _pydantic_problem(problem: dict) -> str:
    where = ".".join(map(str, problem["loc"])) or "(arguments)"
    return f"{where}: {problem['msg']}"


def _first_line(error: Exception) -> str:
    return str(error).split("\n", 1)[0]
