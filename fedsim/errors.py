"""Short, clear messages for bad input: at most 3 lines, no traceback, the field named.

jsonargparse reports a bad value inside an ``Optional[...]`` or a ``class_path`` component as a
"Does not validate against any of the Union subtypes" tree (7-14 lines, with the real sentence
buried inside and a dump of the namespace). ``concise`` digs the sentence out and names the
top-level key it belongs to. ``check_config_files`` reads every ``--config`` file before the
parser does, so a YAML syntax error names its file and line, and an empty file says so.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

from jsonargparse import ArgumentError

# top-level keys of the schema, by the class names that appear in a Union error's "Subtypes"
_KEY_BY_TYPE = {"Attack": "attack", "Callback": "callbacks", "Aggregator": "aggregator", "Dataset": "data",
                "Partitioner": "partition", "Module": "model", "LoggerConfig": "logger"}
_NOISE = ("Expected a <class 'NoneType'>", "Does not validate against any of the Union subtypes",
          "Given value", "Subtypes:", "Errors:", "Expected a None")
MAX_LINES = 3


class ConfigError(ValueError, ArgumentError):
    """A configuration the parser refused, with its message already reduced by ``concise``: a
    ValueError like every other bad input, and still the ``ArgumentError`` jsonargparse raises."""

    def __init__(self, message: str) -> None:
        ArgumentError.__init__(self, None, message)
        ValueError.__init__(self, message)

    def __str__(self) -> str:
        return self.message


def concise(message: str) -> str:
    """The useful part of a parser error, at most ``MAX_LINES`` lines."""
    text = str(message).strip()
    schema = _from_schema(text)
    if schema is not None:
        text = schema
    elif "Does not validate against any of the Union subtypes" in text:
        text = _from_union(text)
    text = re.sub(r"^Unexpected config: *$", "an empty --config file", text, flags=re.M)
    lines = [ln.rstrip() for ln in text.splitlines() if ln.strip()]
    if len(lines) > MAX_LINES:
        lines = lines[: MAX_LINES - 1] + [lines[MAX_LINES - 1][:200] + " ..."]
    return "\n".join(line[:400] for line in lines)


# a schema type's refusal (fedsim.schema): "Not of type float in [0, 1]: must be in [0, 1], got 2.0"
_RANGE = re.compile(r"^Not of type .+?: (must be .+)$")
# a Literal's: "Expected a typing.Literal['sgd', 'adam']. Got value: rmsprop" (inside an Optional the
# value moves to the union's "Given value:" line)
_CHOICE = re.compile(r"^Expected a typing\.Literal\[(.*)\](?:\. Got value: (.*))?$")
_KEY = re.compile(r'^Parser key "([^"]+)"')
_CLASS = re.compile(r"^(?:- )?Problem with given class_path '([^']+)'")


def _from_schema(text: str) -> Optional[str]:
    """``<field> must be <range or choices>, got <value>`` from jsonargparse's report of a value
    that a schema type (a ``fedsim.schema`` range or a ``Literal``) refused, or None if the
    report is about something else. The field is the top-level key (``fed.fraction``), and
    for a value inside a component the innermost class and its argument
    (``attack: BadNets.poison_fraction``)."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        item = line.strip()
        item = item[2:] if item.startswith("- ") else item
        rng, choice = _RANGE.match(item), _CHOICE.match(item)
        if rng or choice:
            break
    else:
        return None
    keys, classes, indent = [], [], _indent(lines[i])
    for line in reversed(lines[:i]):  # the leaf's ancestors: each less indented than the last
        if _indent(line) >= indent:
            continue
        indent = _indent(line)
        item = line.strip()
        if _KEY.match(item):
            keys.append(_KEY.match(item).group(1))
        elif _CLASS.match(item):
            classes.append(_CLASS.match(item).group(1))
    if not keys:
        return None
    field = keys[-1] if not classes else f"{keys[-1]}: {classes[0].rsplit('.', 1)[-1]}.{keys[0]}"
    if rng:
        return f"{field} {rng.group(1)}"
    value = choice.group(2)
    if value is None:
        given = next((ln.strip() for ln in lines[i + 1:] if ln.strip().startswith("Given value:")), None)
        value = given.split(":", 1)[1].strip() if given else None
    got = "" if value is None else f", got {_quoted(value)}"
    return f"{field} must be one of [{choice.group(1)}]{_alternatives(lines, i)}{got}"


def _alternatives(lines: list[str], i: int) -> str:
    """" or a tuple" for the other members of a Union whose first member is the refused Literal
    (``position: Union[Literal[...], tuple[int, int]]``); None is left out."""
    indent, names = _indent(lines[i]), []
    for line in lines[i + 1:]:
        if _indent(line) < indent or not line.strip().startswith("- "):
            break
        if _indent(line) == indent:
            kind = re.match(r"- Expected a (?:<class '([^']+)'>|(.+))$", line.strip())
            name = kind and (kind.group(1) or kind.group(2))
            if name and name != "NoneType":
                names.append(f"a {name}")
    return "".join(f" or {n}" for n in names)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _quoted(value: str) -> str:
    try:
        float(value)
        return value
    except ValueError:
        return repr(value)


def _from_union(text: str) -> str:
    key = None
    first = re.search(r"Subtypes: \[(.*?)\]", text)
    if first:
        for name, k in _KEY_BY_TYPE.items():
            if re.search(rf"\b{name}\b", first.group(1)):
                key = k
                break
    reasons = []
    for line in text.splitlines():
        item = line.strip()
        if item.startswith("- "):
            item = item[2:].strip()
        if not item or any(item.startswith(n) for n in _NOISE):
            continue
        if line.strip().startswith("- "):
            reasons.append(item)
    reason = reasons[0] if reasons else text.splitlines()[0]
    return f"{key}: {reason}" if key and not reason.startswith(key) else reason


def check_config_files(argv: list[str]) -> Optional[str]:
    """Reads every ``--config`` file of ``argv``; returns an error message naming the file, or None."""
    import yaml

    paths = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--config"]
    paths += [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    for path in paths:
        p = Path(path)
        if not p.is_file():
            return f"--config {path}: no such file"
        try:
            doc = yaml.safe_load(p.read_text())
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            return f"--config {path}: YAML syntax error{where}: {getattr(err, 'problem', None) or err}"
        if doc is None:
            return f"--config {path} is empty: give it at least one key (e.g. seed: 0) or drop it"
        if not isinstance(doc, dict):
            return f"--config {path} must be a mapping of keys to values, got a {type(doc).__name__}"
    return None
