"""Checks for user-given numbers, shared by the API, the CLI and the widget: one sentence each."""

from __future__ import annotations

import math
import numbers

from .errors import InvalidParameter


def check_number(
    name: str,
    value: object,
    *,
    low: float | None = None,
    high: float | None = None,
    integer: bool = False,
    low_open: bool = False,
) -> float | int:
    """Return ``value`` as int/float if it is a finite number within [low, high]; else InvalidParameter.

    ``low_open`` makes the lower bound exclusive (e.g. a time limit must be > 0).
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidParameter(f"{name} must be a number, not {value!r}.")
    if not math.isfinite(float(value)):
        raise InvalidParameter(f"{name} must be a finite number, not {value!r}.")
    if integer:
        if float(value) != int(value):
            raise InvalidParameter(f"{name} must be a whole number, not {value!r}.")
        value = int(value)
    else:
        value = float(value)
    below = value <= low if (low is not None and low_open) else (low is not None and value < low)
    if below or (high is not None and value > high):
        if low is not None and high is not None and not low_open:
            rng = f"between {low:g} and {high:g}"
        else:
            lo = "" if low is None else f"{'above' if low_open else 'at least'} {low:g}"
            hi = "" if high is None else f"at most {high:g}"
            rng = " and ".join(x for x in (lo, hi) if x)
        raise InvalidParameter(f"{name} must be {rng}, not {value!r}.")
    return value
