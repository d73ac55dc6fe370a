"""Number types with ranges for the configuration schema, so that the parser checks them and
``--help`` shows them.

    lr: PositiveFloat = 0.01               # --help: (type: float > 0, default: 0.01)
    poison_fraction: UnitInterval = 0.5    # --help: (type: float in [0, 1], default: 0.5)

Each type is registered with jsonargparse (``jsonargparse.typing.register_type``) under a name
that states its range. Unlike ``jsonargparse.typing.restricted_number_type`` (whose values are
instances of a subclass of int / float), a parsed value here is a plain ``int`` / ``float``:
the same objects as before the types existed, so numbers, config dumps and checkpoints (loaded
with ``weights_only=True``, which refuses unknown classes) stay unchanged.

A value out of range fails at parse time with ``Not of type <name>: must be <range>, got <value>``,
which ``fedsim.errors.concise`` turns into ``<field> must be <range>, got <value>``. Outside the
parser these are ordinary annotations: the components' own checks (``__init__`` /
``__post_init__``) stay, for programmatic use.

String choices are ``typing.Literal[...]`` (jsonargparse checks them and ``--help`` lists them).
"""

from __future__ import annotations

import math
from typing import Optional

from jsonargparse.typing import register_type

__all__ = ["PositiveInt", "NonNegativeInt", "PositiveFloat", "NonNegativeFloat", "UnitInterval",
           "UnitIntervalOpenLow", "UnitIntervalOpenHigh", "OpenUnitInterval", "AboveOne", "bounded"]


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def describe(low: Optional[float], high: Optional[float], low_open: bool, high_open: bool) -> str:
    """The range in words: ">= 1", "> 0", "in [0, 1]", "in (0, 1]"."""
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{_fmt(low)}, {_fmt(high)}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {_fmt(low)}"
    if high is not None:
        return f"{'<' if high_open else '<='} {_fmt(high)}"
    return "any value"


def _number(v) -> Optional[float]:
    """``v`` as an int or float (also from a command-line string), or None if it is not a number."""
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return v
    if isinstance(v, str):
        for kind in (int, float):
            try:
                return kind(v.strip())
            except ValueError:
                pass
    return None


def bounded(base: type, low: Optional[float] = None, high: Optional[float] = None, *,
            low_open: bool = False, high_open: bool = False) -> type:
    """A schema type for ``base`` (int or float) values in the given range, registered with jsonargparse."""
    if base not in (int, float):
        raise TypeError(f"bounded: base must be int or float, got {base}")
    key = (base, low, high, low_open, high_open)
    if key in _MADE:  # one class per range: the same name is the same type
        return _MADE[key]
    rng = describe(low, high, low_open, high_open)
    noun = "an integer" if base is int else "a number"

    def inside(v) -> bool:
        return ((low is None or (v > low if low_open else v >= low))
                and (high is None or (v < high if high_open else v <= high)))

    def is_plain(v, _t) -> bool:  # an accepted value: a plain base-type number in range
        return type(v) is base and (base is int or math.isfinite(v)) and inside(v)

    def deserialize(v):
        number = _number(v)
        kind_ok = number is not None and (base is float or float(number).is_integer())
        if kind_ok and math.isfinite(number) and inside(number):
            return base(number)
        shown = number if number is not None else v
        # "must be in [0, 1], got 2.0"; the kind only where it is what is wrong: "an integer >= 1, got 1.5"
        raise ValueError(f"must be {rng if kind_ok else noun + ' ' + rng}, got {shown!r}")

    cls = type(f"{base.__name__} {rng}", (base,), {"__doc__": f"{base.__name__} {rng}", "__module__": __name__,
                                                  "range": rng})
    register_type(cls, serializer=base, deserializer=deserialize, type_check=is_plain)
    _MADE[key] = cls
    return cls


_MADE: dict[tuple, type] = {}


PositiveInt = bounded(int, 1)
NonNegativeInt = bounded(int, 0)
PositiveFloat = bounded(float, 0, low_open=True)
NonNegativeFloat = bounded(float, 0)
UnitInterval = bounded(float, 0, 1)
UnitIntervalOpenLow = bounded(float, 0, 1, low_open=True)
UnitIntervalOpenHigh = bounded(float, 0, 1, high_open=True)
OpenUnitInterval = bounded(float, 0, 1, low_open=True, high_open=True)
AboveOne = bounded(float, 1, low_open=True)
