"""``landcover search``: Sentinel-2 items from a STAC API into an ItemCollection file (pystac-client is imported
inside the command, so ``landcover --help`` stays fast)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from landcover.cli.common import app, handles_errors, out

EARTH_SEARCH = "https://earth-search.aws.element84.com/v1"  # the default of landcover.sources.stac_search too


@app.command()
@handles_errors
def search(
    out_path: Annotated[Path, typer.Option("--out", "-o", help="ItemCollection file to write (e.g. items.json).")],
    bbox: Annotated[
        str | None, typer.Option(help="minx,miny,maxx,maxy in WGS84 degrees, or minx,miny,maxx,maxy,CRS.")
    ] = None,
    aoi: Annotated[
        Path | None,
        typer.Option(help="Area of interest: a vector file (any format, any CRS); its bounds are searched."),
    ] = None,
    dates: Annotated[
        str | None, typer.Option(help="A date or START/END, e.g. 2023-06-01/2023-08-31 (.. = open end).")
    ] = None,
    max_cloud: Annotated[
        float | None, typer.Option(min=0, max=100, help="Largest eo:cloud_cover in percent, e.g. 20.")
    ] = None,
    collection: Annotated[str, typer.Option(help="The catalogue's collection.")] = "sentinel-2-l2a",
    catalog: Annotated[str, typer.Option(help="STAC API URL.")] = EARTH_SEARCH,
    limit: Annotated[int, typer.Option(min=1, help="At most this many items.")] = 100,
    overwrite: Annotated[bool, typer.Option(help="Replace --out if it exists.")] = False,
) -> None:
    """Find Sentinel-2 items in a STAC catalogue and write them as an ItemCollection for ingest and predict."""
    from landcover.errors import ConfigError
    from landcover.preflight import check_inputs_exist, check_output_path

    check_output_path(out_path, folder=False)
    from landcover.io.aoi import WGS84, aoi_option
    from landcover.sources.stac_search import search as run_search

    if aoi is not None:
        check_inputs_exist([aoi])
    area = aoi_option(aoi, bbox)  # both given: an error
    if area is None:
        raise ConfigError("give the area to search: --bbox minx,miny,maxx,maxy or --aoi FILE (one of them)")
    result = run_search(
        out_path,
        bbox=area.in_crs(WGS84).bounds,
        dates=dates,
        max_cloud=max_cloud,
        collection=collection,
        catalog=catalog,
        limit=limit,
        overwrite=overwrite,
    )
    out.print(
        f"wrote {len(result.items)} item(s) of {collection} from {catalog} to {result.out}; "
        f"ingest or predict them with `landcover ingest {result.out} ...`",
        highlight=False,
        soft_wrap=True,
    )
