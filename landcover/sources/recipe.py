"""A compositing recipe: the periods of a multi-date composite, their reduction, and the band names it makes.

YAML (``composite:`` of configs/ingest.yaml)::

    composite:
      periods:
        - {name: spring, start: 2018-03-01, end: 2018-05-31}            # median by default
        - {name: summer, start: 2018-06-01, end: 2018-08-31, method: quantile, quantile: 0.25}
        - 2018-09-01/2018-11-30                                          # shorthand: named p3 (by order)
      group: tile              # one composite per MGRS tile; "all": every input on the first's grid
      min_observations: 1      # products a period needs, else a ConfigError naming it

Band names are ``<band>@<period>`` (``B04@spring``), period-major: every band of the first period, then
of the second... :func:`period_band` makes them and :func:`split_band` takes them apart (a plain
``B04`` is ``("B04", None)``), so band matching by name works on composites as on single dates.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from datetime import date
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from landcover.errors import ConfigError
from landcover.sources.product import Product

SEPARATOR = "@"
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
SHORTHAND_RE = re.compile(
    r"\s*(?:(?P<name>[^=]+)=)?\s*(?P<start>\d{4}-\d{2}-\d{2})\s*/\s*(?P<end>\d{4}-\d{2}-\d{2})\s*"
)


class Period(BaseModel):
    """A period of a composite: dates ``start``..``end`` (both included) and how its observations are reduced.

    ``median`` (default) and ``quantile`` (``quantile`` in 0..1) are NaN-aware over the valid, cloud-free
    observations; ``best`` takes per pixel the observation with the lowest cloud probability."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="Used in band names (B04@<name>): letters, digits, _ and -")
    start: date
    end: date
    method: Literal["median", "quantile", "best"] = "median"
    quantile: float | None = Field(None, ge=0, le=1, description="The quantile of method 'quantile' (0..1)")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME_RE.fullmatch(value):
            raise ValueError(
                f"period name {value!r} cannot be part of a band name (B04@{value}): "
                "use letters, digits, _ and -, starting with a letter or digit"
            )
        return value

    @model_validator(mode="after")
    def _check(self) -> Period:
        if self.start > self.end:
            raise ValueError(f"period {self.name} starts ({self.start}) after it ends ({self.end}); swap the dates")
        if self.method == "quantile" and self.quantile is None:
            raise ValueError(f"period {self.name} uses method 'quantile' without quantile: add e.g. quantile: 0.25")
        if self.method != "quantile" and self.quantile is not None:
            raise ValueError(f"period {self.name} gives quantile={self.quantile} but method {self.method!r}")
        return self

    def contains(self, day: date) -> bool:
        return self.start <= day <= self.end

    def label(self) -> str:
        return f"{self.name} ({self.start}/{self.end})"


class CompositeRecipe(BaseModel):
    """The periods of a composite (in band order), how inputs are grouped, and the observations a period needs."""

    model_config = ConfigDict(extra="forbid")
    periods: list[Period] = Field(min_length=1, description="Periods, or START/END strings (named p1, p2...)")
    group: Literal["tile", "all"] = Field(
        "tile", description="'tile': one composite per MGRS tile; 'all': one of every input on the first's grid"
    )
    min_observations: int = Field(1, ge=1, description="Products each period needs (else the run stops)")

    @field_validator("periods", mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list | tuple):
            return value
        return [_parse_period(item, i) if isinstance(item, str) else item for i, item in enumerate(value, 1)]

    @model_validator(mode="after")
    def _check(self) -> CompositeRecipe:
        names = [p.name for p in self.periods]
        if dup := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"period names repeat ({', '.join(dup)}); give each period its own name")
        ordered = sorted(self.periods, key=lambda p: p.start)
        for a, b in itertools.pairwise(ordered):
            if b.start <= a.end:
                raise ValueError(f"periods {a.label()} and {b.label()} overlap; a date may belong to one period only")
        return self

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.periods]

    def band_names(self, bands: Sequence[str]) -> list[str]:
        """Period-qualified names, period-major: every band of period 1, then of period 2..."""
        return [period_band(b, p) for p in self.periods for b in bands]

    def period_of(self, day: date) -> Period | None:
        return next((p for p in self.periods if p.contains(day)), None)

    def assign(self, products: Sequence[Product]) -> dict[str, list[Product]]:
        """Period name -> the products sensed in it, by date. Products outside every period are left out.

        Raises :class:`ConfigError` for a product without a sensing date, or a period with fewer than
        ``min_observations`` products (naming the period, its dates and the dates given)."""
        dated = sorted(((sensing_date(p), p) for p in products), key=lambda dp: (dp[0], dp[1].product_id))
        groups: dict[str, list[Product]] = {p.name: [] for p in self.periods}
        for day, product in dated:
            period = self.period_of(day)
            if period is not None:
                groups[period.name].append(product)
        for period in self.periods:
            got = groups[period.name]
            if len(got) < self.min_observations:
                dates = ", ".join(sorted({str(d) for d, _ in dated})) or "none"
                raise ConfigError(
                    f"period {period.label()} has {len(got)} product(s), min_observations is "
                    f"{self.min_observations} (the inputs are of {dates}); add products of that period, "
                    "change its dates, or lower composite.min_observations"
                )
        return groups


def _parse_period(text: str, index: int) -> dict[str, Any]:
    match = SHORTHAND_RE.fullmatch(text)
    if match is None:
        raise ValueError(f"period {text!r} is not START/END (e.g. 2018-03-01/2018-05-31) or NAME=START/END")
    name = (match.group("name") or f"p{index}").strip()
    return {"name": name, "start": match.group("start"), "end": match.group("end")}


def sensing_date(product: Product) -> date:
    """The sensing date of ``product`` (its ``sensing_time``, ISO); a ConfigError when unknown."""
    text = product.sensing_time or ""
    try:
        return date.fromisoformat(text[:10])
    except ValueError:
        raise ConfigError(
            f"{product.product_id} has no sensing date ({text or 'none in its metadata or file names'}), so it "
            "cannot be placed in a composite period; use products whose name or metadata give the date"
        ) from None


def period_band(band: str, period: Period | str) -> str:
    """``B04`` of period ``spring`` -> ``B04@spring``."""
    return f"{band}{SEPARATOR}{period if isinstance(period, str) else period.name}"


def split_band(name: str) -> tuple[str, str | None]:
    """``B04@spring`` -> ``("B04", "spring")``; a plain ``B04`` -> ``("B04", None)``."""
    band, sep, period = name.partition(SEPARATOR)
    return (band, period) if sep else (band, None)
