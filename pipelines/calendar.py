"""Calendar covariates: known ahead for any future step, so a forecaster may always use them."""

from __future__ import annotations

import numpy as np

__all__ = ["CALENDAR_FEATURES", "calendar_features", "has_time_of_day", "steps_per_day"]

CALENDAR_FEATURES = ("hour_sin", "hour_cos", "dow_sin", "dow_cos", "doy_sin", "doy_cos")


def has_time_of_day(covariate_names: tuple[str, ...]) -> bool:
    """Whether the first two covariates are the time of day's sine and cosine, where a model's
    daily cycle reads its phase (forecast/cycle.py)."""
    return covariate_names[:2] == CALENDAR_FEATURES[:2]


def steps_per_day(frequency: str) -> int:
    """Steps in a day at a pandas-style frequency ("1h" -> 24, "15min" -> 96, "10min" -> 144):
    the length of a daily cycle. A step that does not divide a day evenly, or a day or longer,
    has no daily cycle: a clear error."""
    import pandas as pd

    try:
        step = pd.Timedelta(pd.tseries.frequencies.to_offset(frequency))
    except (ValueError, TypeError) as e:
        raise ValueError(f"no daily cycle at frequency {frequency!r}: not a fixed step") from e
    day = pd.Timedelta(days=1)
    if not pd.Timedelta(0) < step < day or day % step != pd.Timedelta(0):
        raise ValueError(
            f"no daily cycle at frequency {frequency!r}: a step of {step} does not divide a day "
            "evenly into two or more steps; set --cycle-length 0 (none) or a number of steps"
        )
    return int(day // step)


def calendar_features(timestamps: np.ndarray) -> np.ndarray:
    """timestamps [T] (datetime64) -> [T, 6] float32: sin/cos of time of day, weekday, day of year.

    Sine and cosine keep midnight next to 23:59 and December next to January.
    """
    ts = timestamps.astype("datetime64[s]")
    seconds_of_day = (ts - ts.astype("datetime64[D]")).astype(np.int64)
    days = ts.astype("datetime64[D]").astype(np.int64)
    # 1970-01-01 was a Thursday: weekday 3 when Monday is 0.
    dow = (days + 3) % 7
    year_start = ts.astype("datetime64[Y]").astype("datetime64[D]").astype(np.int64)
    doy = days - year_start
    angles = [
        2 * np.pi * seconds_of_day / 86400.0,
        2 * np.pi * dow / 7.0,
        2 * np.pi * doy / 365.25,
    ]
    cols = []
    for a in angles:
        cols += [np.sin(a), np.cos(a)]
    return np.stack(cols, axis=-1).astype(np.float32)
