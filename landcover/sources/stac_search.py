"""``landcover search``: Sentinel-2 items from a STAC API (pystac-client) -> an ItemCollection file that ``ingest``
and ``predict`` take.

The query: a WGS84 bbox (given, or the bounds of an area-of-interest file), a date range, a maximum cloud cover
(``eo:cloud_cover``, through the API's query extension, else its CQL2 filter, else checked here) and a collection.
Network failures are one line naming the catalogue and the cause (name not resolved, connection refused, HTTP
status), at once: connections are not retried (HTTP 429/5xx answers are, with back-off); with ``LANDCOVER_OFFLINE``
set a catalogue beyond this machine is refused before any lookup (:func:`landcover.offline.check_url`).
"""

from __future__ import annotations

import datetime as dt
import json
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pystac
from pystac_client import Client, ConformanceClasses
from pystac_client.exceptions import APIError
from pystac_client.stac_api_io import StacApiIO
from urllib3 import Retry

from landcover.errors import ConfigError, LandcoverError, OfflineError, OutputExistsError, RemoteReadError
from landcover.io.outputs import write_text_atomic
from landcover.offline import check_url

EARTH_SEARCH = "https://earth-search.aws.element84.com/v1"
DEFAULT_COLLECTION = "sentinel-2-l2a"
TIMEOUT = (10.0, 60.0)  # seconds to connect, to wait for an answer
CLOUD = "eo:cloud_cover"


@dataclass(frozen=True)
class SearchResult:
    """What :func:`search` wrote: the file, the items' ids and the catalogue's parameters that found them."""

    out: str
    items: list[str]
    catalog: str
    parameters: dict[str, Any]


def check_dates(text: str) -> str:
    """A date or an interval ``START/END`` (ISO dates or datetimes, ``..`` open), checked; returned unchanged."""
    parts = text.split("/")
    try:
        if len(parts) > 2 or not all(parts):
            raise ValueError(text)
        stamps = [None if p == ".." else dt.datetime.fromisoformat(p.replace("Z", "+00:00")) for p in parts]
    except ValueError as exc:
        raise ConfigError(
            f"--dates {text!r}: give a date or START/END in ISO form, e.g. 2023-06-01/2023-08-31 (.. = open)"
        ) from exc
    times = [s.replace(tzinfo=s.tzinfo or dt.UTC) for s in stamps if s is not None]
    if len(times) == 2 and times[0] > times[1]:
        raise ConfigError(f"--dates {text!r}: the start is after the end")
    return text


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what it wraps: its cause, context and (urllib3) reason, depth first."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [x for x in (getattr(e, "reason", None), e.__cause__, e.__context__) if isinstance(x, BaseException)]
        todo += [a for a in e.args if isinstance(a, BaseException)]


def network_error(url: str, exc: BaseException) -> LandcoverError:
    """One line naming the catalogue and the cause of a failed request (DNS, refused, timeout, HTTP status)."""
    host = urlsplit(url).hostname or url
    cause = " ".join(str(exc).split())[:300] or type(exc).__name__
    for e in _causes(exc):
        if isinstance(e, OfflineError):
            return RemoteReadError(f"cannot search the STAC catalogue {url}: {e}")
        if isinstance(e, socket.gaierror):
            cause = f"the host name {host} cannot be resolved (no network or DNS: {e.strerror or e})"
            break
        if isinstance(e, ConnectionRefusedError):
            cause = f"connection to {host} refused (nothing listens there, or no network)"
            break
        if isinstance(e, TimeoutError | socket.timeout) or "timed out" in str(e).lower():
            cause = f"no answer from {host} within {TIMEOUT[0]:g} s to connect or {TIMEOUT[1]:g} s to reply"
            break
        if isinstance(e, APIError) and getattr(e, "status_code", None):
            cause = f"HTTP {getattr(e, 'status_code', '')} ({' '.join(str(e).split())[:200]})"
            break
    return RemoteReadError(
        f"cannot search the STAC catalogue {url}: {cause}; check the network and the URL (--catalog)"
    )


def _stac_io() -> StacApiIO:
    """Requests with time limits; no retry of connections (fail at once), back-off on 429 and 5xx answers."""
    retry = Retry(
        total=4, connect=0, read=0, status=3, backoff_factor=1.0,
        status_forcelist=(429, 500, 502, 503, 504), allowed_methods=None, raise_on_status=False,
    )  # fmt: skip
    return StacApiIO(timeout=TIMEOUT, max_retries=retry)


def _cloud_filter(client: Client, max_cloud: float | None) -> tuple[dict[str, Any], bool]:
    """The search's cloud-cover parameters (query extension, else CQL2 filter) and whether to check it here."""
    if max_cloud is None:
        return {}, False
    if client.conforms_to(ConformanceClasses.QUERY):
        return {"query": {CLOUD: {"lte": max_cloud}}}, False
    if client.conforms_to(ConformanceClasses.FILTER):
        flt = {"op": "<=", "args": [{"property": CLOUD}, max_cloud]}
        return {"filter": flt, "filter_lang": "cql2-json"}, False
    return {}, True


def search(
    out: str | Path,
    *,
    bbox: Sequence[float],
    dates: str | None = None,
    max_cloud: float | None = None,
    collection: str = DEFAULT_COLLECTION,
    catalog: str = EARTH_SEARCH,
    limit: int = 100,
    overwrite: bool = False,
) -> SearchResult:
    """Search ``catalog`` and write the items found (at most ``limit``) as an ItemCollection to ``out``."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} exists; pass --overwrite to replace it or choose another --out")
    if limit < 1:
        raise ConfigError(f"--limit must be at least 1, got {limit}")
    try:
        check_url(catalog)
    except OfflineError as exc:
        raise network_error(catalog, exc) from exc
    params: dict[str, Any] = {"collections": [collection], "bbox": list(bbox), "max_items": limit}
    params.update({"limit": min(limit, 100)} | ({"datetime": check_dates(dates)} if dates else {}))
    try:
        client = Client.open(catalog, stac_io=_stac_io())
        cloud, check_here = _cloud_filter(client, max_cloud)
        items = list(client.search(**params, **cloud).items())
    except NotImplementedError as exc:
        raise RemoteReadError(
            f"{catalog} is not a STAC API with item search ({exc}); pass --catalog with a STAC API URL such as "
            f"{EARTH_SEARCH}"
        ) from exc
    except (APIError, OSError, ValueError, pystac.STACError) as exc:
        raise network_error(catalog, exc) from exc
    if check_here and max_cloud is not None:
        items = [i for i in items if float(i.properties.get(CLOUD, 101.0)) <= max_cloud]
    if not items:
        raise ConfigError(
            f"no {collection} item in {catalog} matches the bbox {list(bbox)}, dates {dates or 'any'} and cloud "
            f"cover <= {max_cloud if max_cloud is not None else 100:g} %; widen --bbox/--dates or raise --max-cloud"
        )
    text = json.dumps(pystac.ItemCollection(items).to_dict(), indent=1) + "\n"
    write_text_atomic(out, text)
    used = {k: v for k, v in params.items() if k != "max_items"} | cloud
    return SearchResult(str(out), [i.id for i in items], catalog, used)
