"""Checks for user-given numbers, shared by the API, the CLI and the widget: one sentence each."""

from __future__ import annotations

import math
import numbers
from typing import Any

from napari_unet.errors import InvalidParameter


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


# The limits of each user-given number, in one place: the API, the CLI (its flag of the same name)
# and the option dataclasses read them here, so every path refuses the same values alike.
LIMITS: dict[str, dict[str, Any]] = {
    "tile": {"low": 16, "high": 16384, "integer": True},
    "overlap": {"low": 0, "integer": True},
    "batch size": {"low": 1, "high": 1024, "integer": True},
    "threshold": {"low": 0, "high": 1},
    "seed threshold": {"low": 0, "high": 1},
    "min size": {"low": 0, "integer": True},
    "epochs": {"low": 1, "high": 100000, "integer": True},
    "time limit": {"low": 0, "low_open": True},
    "validation fraction": {"low": 0.05, "high": 0.9},
    "steps per epoch": {"low": 1, "high": 100000, "integer": True},
}


def check_limit(name: str, value: object) -> float | int:
    """:func:`check_number` with the limits :data:`LIMITS` holds for ``name``."""
    return check_number(name, value, **LIMITS[name])
