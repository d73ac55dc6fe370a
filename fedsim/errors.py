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

# top-level keys of the schema, by the class names that appear in a Union error's "Subtypes"
_KEY_BY_TYPE = {"Attack": "attack", "Callback": "callbacks", "Aggregator": "aggregator", "Dataset": "data",
                "Partitioner": "partition", "Module": "model", "LoggerConfig": "logger"}
_NOISE = ("Expected a <class 'NoneType'>", "Does not validate against any of the Union subtypes",
          "Given value", "Subtypes:", "Errors:", "Expected a None")
MAX_LINES = 3


def concise(message: str) -> str:
    """The useful part of a parser error, at most ``MAX_LINES`` lines."""
    text = str(message).strip()
    if "Does not validate against any of the Union subtypes" in text:
        text = _from_union(text)
    text = re.sub(r"^Unexpected config: *$", "an empty --config file", text, flags=re.M)
    lines = [ln.rstrip() for ln in text.splitlines() if ln.strip()]
    if len(lines) > MAX_LINES:
        lines = lines[: MAX_LINES - 1] + [lines[MAX_LINES - 1][:200] + " ..."]
    return "\n".join(line[:400] for line in lines)


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
