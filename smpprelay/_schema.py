"""Checks that config classes run on themselves, and the walker that builds them from YAML.

The classes in smpprelay.config carry their rules as attrs validators built here, so an
object is valid however it is made. The walker only reads YAML types (and spells them as
YAML does) and adds the key path to what the validators raise; the problem text is theirs.
"""

import math
import types
from collections.abc import Callable, Iterable
from typing import Any, Literal, TypeVar, get_args, get_origin

import attrs
import yaml
from attrs import AttrsInstance


class Invalid(ValueError):
    """A refused setting: ``key`` names it within its class (``window``, ``mo_prefixes[1]``).

    The walker prefixes the key path of the class; built by hand, str() is ``key: problem``.
    """

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}" if key else problem)
        self.key = key
        self.problem = problem


def join(path: str, key: object) -> str:
    """``path.key``, or only ``key`` at the top."""
    return f"{path}.{key}" if path else str(key)


def show(value: object) -> str:
    """A value spelled as the user wrote it in YAML, not as Python sees it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# attrs field metadata of a setting whose value must never appear in an error (a password,
# a password hash): the error says what kind of value it was instead.
SECRET = {"secret": True}


def show_secret(value: object) -> str:
    """A secret value described without its text: its YAML type, and a string's length."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return f"a string of {len(value)} characters"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"a {type(value).__name__}"  # e.g. a date: YAML reads 2024-01-01 as one


class Refused(ValueError):
    """A check's ``problem`` with the ``value`` refused, kept apart so that a secret's
    value can be described instead of shown."""

    def __init__(self, problem: str, value: object) -> None:
        super().__init__(f"{problem}, got {show(value)}")
        self.problem = problem
        self.value = value


def _secret_problem(exc: ValueError, value: object) -> str:
    if isinstance(exc, Refused):
        return f"{exc.problem}, got {show_secret(value)}"
    problem = str(exc)
    # A check that is not ours might quote what it refused: then say nothing of it.
    if isinstance(value, str) and value and value in problem:
        return f"not valid ({show_secret(value)}; a secret is never shown)"
    return problem


# A check raises ValueError with the problem only; Checked names the field (and item).
Check = Callable[[Any], object]


@attrs.frozen
class Checked:
    """An attrs validator running ``checks`` on a value, or on each item of a tuple.

    None is not checked: it is the unset value of the ``X | None`` settings, and mypy keeps
    it out of the others.
    """

    checks: tuple[Check, ...]
    each: bool = False

    def __call__(self, instance: object, attribute: "attrs.Attribute[Any]", value: Any) -> None:
        if value is None:
            return
        items: Iterable[tuple[str, Any]] = (
            ((f"{attribute.name}[{i}]", item) for i, item in enumerate(value))
            if self.each
            else [(attribute.name, value)]
        )
        for key, item in items:
            for check in self.checks:
                try:
                    check(item)
                except ValueError as exc:
                    secret = attribute.metadata.get("secret", False)
                    problem = _secret_problem(exc, item) if secret else str(exc)
                    raise Invalid(key, problem) from None


def valid(*checks: Check) -> Checked:
    """The validator of a setting that must pass ``checks``."""
    return Checked(checks)


def each(*checks: Check) -> Checked:
    """The validator of a tuple setting whose every item must pass ``checks``."""
    return Checked(checks, each=True)


def number(*, gt: float | None = None, ge: float | None = None, le: float | None = None) -> Check:
    """A finite number above ``gt``, or within ``ge`` and ``le`` (either may be open)."""

    def check(value: float) -> None:
        if not math.isfinite(value):
            raise ValueError(f"expected a finite number, got {show(value)}")
        if gt is not None and not value > gt:
            raise ValueError(f"must be greater than {gt}, got {value}")
        low = ge is not None and value < ge
        high = le is not None and value > le
        if ge is not None and le is not None and (low or high):
            raise ValueError(f"must be between {ge} and {le}, got {value}")
        if low:
            raise ValueError(f"must be at least {ge}, got {value}")
        if high:
            raise ValueError(f"must be at most {le}, got {value}")

    return check


def text(*, min_len: int = 0, max_len: int | None = None, smpp: bool = False) -> Check:
    """A string of ``min_len`` to ``max_len`` characters.

    ``smpp``: an SMPP C-Octet String, which is ASCII and NUL-terminated, so its limits are
    in octets and it must be printable ASCII.
    """

    def check(value: str) -> None:
        if smpp and not (value.isascii() and value.isprintable()):
            raise Refused("must be printable ASCII (an SMPP C-Octet String)", value)
        if max_len is not None and len(value) > max_len:
            span = f"{min_len} to {max_len}" if min_len else f"at most {max_len}"
            raise ValueError(f"must be {span} characters long, got {len(value)}")
        if len(value) < min_len:
            raise ValueError("must not be empty")

    return check


def one_of(choices: object) -> Check:
    """One of the strings of a ``Literal[...]`` alias, so the type and the check agree."""
    allowed = get_args(choices)

    def check(value: object) -> None:
        if not isinstance(value, str) or value not in allowed:
            raise ValueError(f"expected one of {', '.join(allowed)}, got {show(value)}")

    return check


class SchemaError(Exception):
    """A problem at a key path of the YAML; the walker does not know the file, its caller does."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(path, problem)
        self.path = path
        self.problem = problem


_A = TypeVar("_A", bound=AttrsInstance)


def _value(tp: Any, data: object, path: str, secret: bool = False) -> object:
    origin = get_origin(tp)
    if origin is types.UnionType:  # only "X | None" is used
        if data is None:
            return None
        (inner,) = [arg for arg in get_args(tp) if arg is not type(None)]
        return _value(inner, data, path, secret)
    if attrs.has(tp):
        # An empty section ("limits:" with nothing under it) means all defaults.
        return build(tp, {} if data is None else data, path)
    if origin is tuple:
        if not isinstance(data, list):
            raise SchemaError(path, f"expected a list, got {show(data)}")
        items = []
        for i, raw in enumerate(data):
            if raw is None:  # a bare "-": not an all-defaults mapping
                raise SchemaError(f"{path}[{i}]", "empty list item")
            items.append(_value(get_args(tp)[0], raw, f"{path}[{i}]"))
        return tuple(items)
    if origin is Literal:  # the field's one_of check says what is allowed
        return data
    if tp is bool:
        if not isinstance(data, bool):
            raise SchemaError(path, f"expected true or false, got {show(data)}")
        return data
    if tp is str:
        if not isinstance(data, str):
            # YAML turns unquoted 1234, 0079, yes or 2024-01-01 into non-strings.
            hint = "" if data is None or isinstance(data, list | dict) else " (put it in quotes)"
            shown = show_secret(data) if secret else show(data)
            raise SchemaError(path, f"expected a string, got {shown}{hint}")
        return data
    if tp is int:
        # bool is an int subclass, and YAML reads "yes" as True.
        if isinstance(data, bool) or not isinstance(data, int):
            raise SchemaError(path, f"expected an integer, got {show(data)}")
        return data
    if tp is float:
        if isinstance(data, bool) or not isinstance(data, int | float):
            raise SchemaError(path, f"expected a number, got {show(data)}")
        return float(data)
    raise TypeError(f"config walker cannot read a {tp!r} field at {path}")


def build(cls: type[_A], data: object, path: str) -> _A:
    """``cls`` from YAML ``data`` found at ``path``; raise SchemaError naming the first problem."""
    if not isinstance(data, dict):
        raise SchemaError(path, f"expected a mapping, got {show(data)}")
    fields = attrs.fields(cls)
    names = {field.name for field in fields}
    for key in data:
        if key not in names:
            raise SchemaError(join(path, key), "unknown key")
    kwargs: dict[str, object] = {}
    try:
        for field in fields:
            if field.name in data:
                secret = field.metadata.get("secret", False)
                value = _value(field.type, data[field.name], join(path, field.name), secret)
                # Checked here as well as in cls(), so that the first key in the file with a
                # problem is the one reported, be it a type or a value problem.
                if callable(field.converter):
                    value = field.converter(value)
                if field.validator is not None:
                    field.validator(None, field, value)
                kwargs[field.name] = value
            elif field.default is attrs.NOTHING:
                raise SchemaError(join(path, field.name), "missing")
        return cls(**kwargs)
    except Invalid as exc:
        raise SchemaError(join(path, exc.key), exc.problem) from None


def yaml_problem(exc: Exception) -> str:
    """A PyYAML error as one line with its position."""
    problem = (isinstance(exc, yaml.MarkedYAMLError) and exc.problem) or str(exc)
    text = " ".join(str(problem).split())  # PyYAML messages span lines; ours must not
    mark = exc.problem_mark if isinstance(exc, yaml.MarkedYAMLError) else None
    if mark is not None:
        return f"invalid YAML at line {mark.line + 1}, column {mark.column + 1}: {text}"
    return f"invalid YAML: {text}"
