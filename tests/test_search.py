"""``landcover search`` against a fake STAC API served from 127.0.0.1 (a tiny http.server in this file): the query
sent, the ItemCollection written, and the one-line failure when the catalogue cannot be reached."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

import geopandas as gpd
import pystac
import pytest
from shapely.geometry import box
from typer.testing import CliRunner

from landcover.cli import app
from landcover.errors import AOIError, ConfigError, RemoteReadError
from landcover.io.aoi import WGS84, parse_bbox
from landcover.sources.stac_search import EARTH_SEARCH, check_dates, search

runner = CliRunner()
CORE = "https://api.stacspec.org/v1.0.0/core"
ITEM_SEARCH = "https://api.stacspec.org/v1.0.0/item-search"
QUERY = "https://api.stacspec.org/v1.0.0/item-search#query"
FILTER = "https://api.stacspec.org/v1.0.0/item-search#filter"


def fake_item(n: int, cloud: float) -> dict[str, Any]:
    """An Earth-Search-like item (only what the test needs)."""
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": f"S2B_33UUP_2023070{n}_0_L2A",
        "geometry": {"type": "Polygon", "coordinates": [[[15, 48], [16, 48], [16, 49], [15, 49], [15, 48]]]},
        "bbox": [15, 48, 16, 49],
        "properties": {"datetime": f"2023-07-0{n}T10:00:00Z", "eo:cloud_cover": cloud},
        "links": [],
        "assets": {"red": {"href": f"https://example.invalid/{n}/B04.tif", "type": "image/tiff"}},
        "collection": "sentinel-2-l2a",
    }


class FakeApi(BaseHTTPRequestHandler):
    """``/``: landing page (item-search + query, or filter); ``/search``: GET or POST, two items."""

    conformance: ClassVar[list[str]] = [CORE, ITEM_SEARCH, QUERY]
    requests: ClassVar[list[tuple[str, str, dict[str, Any]]]] = []  # a fresh list per test (the api fixture)

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def answer(self, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def route(self, method: str, params: dict[str, Any]) -> None:
        base = f"http://127.0.0.1:{self.server.server_address[1]}"
        path = urlsplit(self.path).path.rstrip("/")
        self.requests.append((method, path or "/", params))
        if path == "":
            self.answer(
                {
                    "type": "Catalog", "id": "fake", "description": "fake STAC API", "stac_version": "1.0.0",
                    "conformsTo": self.conformance,
                    "links": [
                        {"rel": "self", "href": base + "/", "type": "application/json"},
                        {"rel": "root", "href": base + "/", "type": "application/json"},
                        {"rel": "search", "href": base + "/search", "type": "application/geo+json", "method": "GET"},
                        {"rel": "search", "href": base + "/search", "type": "application/geo+json", "method": "POST"},
                    ],
                }
            )  # fmt: skip
        elif path == "/search":
            self.answer({"type": "FeatureCollection", "features": [fake_item(1, 5.0), fake_item(2, 12.5)]})
        else:
            self.send_error(404)

    def do_GET(self) -> None:
        self.route("GET", {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        self.route("POST", json.loads(self.rfile.read(length) or b"{}"))


@pytest.fixture
def api() -> Iterator[tuple[str, type[FakeApi]]]:
    handler = type("Api", (FakeApi,), {"requests": [], "conformance": list(FakeApi.conformance)})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", handler
    finally:
        server.shutdown()
        server.server_close()


def closed_port() -> int:
    """A 127.0.0.1 port where nothing listens."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.allow_hosts(["127.0.0.1"])
def test_search_sends_the_query_and_writes_an_item_collection(api, tmp_path):
    url, handler = api
    result = runner.invoke(
        app,
        [
            "search", "--bbox", "15.1,48.2,15.4,48.5", "--dates", "2023-06-01/2023-08-31", "--max-cloud", "20",
            "--collection", "sentinel-2-l2a", "--catalog", url, "--limit", "10", "--out", str(tmp_path / "items.json"),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "2 item(s)" in result.output
    (method, path, sent) = next(r for r in handler.requests if r[1] == "/search")
    assert (method, path) == ("POST", "/search")
    assert sent["bbox"] == [15.1, 48.2, 15.4, 48.5]
    assert sent["collections"] == ["sentinel-2-l2a"]
    assert sent["datetime"].startswith("2023-06-01T00:00:00") and "/2023-08-31T23:59:59" in sent["datetime"]
    assert sent["query"] == {"eo:cloud_cover": {"lte": 20.0}}
    assert sent["limit"] == 10
    items = pystac.ItemCollection.from_file(str(tmp_path / "items.json"))
    assert [i.id for i in items] == ["S2B_33UUP_20230701_0_L2A", "S2B_33UUP_20230702_0_L2A"]
    assert items.items[1].properties["eo:cloud_cover"] == 12.5
    assert [p.name for p in tmp_path.iterdir()] == ["items.json"]  # nothing temporary left


@pytest.mark.allow_hosts(["127.0.0.1"])
def test_search_uses_a_cql2_filter_when_the_api_has_no_query_extension_and_reads_an_aoi(api, tmp_path):
    url, handler = api
    handler.conformance = [CORE, ITEM_SEARCH, FILTER]
    aoi = tmp_path / "aoi.gpkg"
    gpd.GeoDataFrame(geometry=[box(550_000, 5_330_000, 560_000, 5_340_000)], crs="EPSG:32633").to_file(aoi)
    result = runner.invoke(
        app, ["search", "--aoi", str(aoi), "--max-cloud", "10", "--catalog", url, "--out", str(tmp_path / "i.json")]
    )
    assert result.exit_code == 0, result.output
    sent = next(r[2] for r in handler.requests if r[1] == "/search")
    assert sent["filter"] == {"op": "<=", "args": [{"property": "eo:cloud_cover"}, 10.0]}
    assert sent["filter-lang"] == "cql2-json" and "query" not in sent
    minx, miny, maxx, maxy = gpd.read_file(aoi).to_crs(4326).total_bounds
    assert sent["bbox"] == pytest.approx([minx, miny, maxx, maxy])
    assert 15.6 < minx < maxx < 15.9 and 48.1 < miny < maxy < 48.3  # the AOI's degrees, not its metres


@pytest.mark.allow_hosts(["127.0.0.1"])
def test_without_query_or_filter_the_cloud_cover_is_checked_here(api, tmp_path):
    url, handler = api
    handler.conformance = [CORE, ITEM_SEARCH]
    result = search(tmp_path / "i.json", bbox=(15, 48, 16, 49), max_cloud=10, catalog=url)
    assert result.items == ["S2B_33UUP_20230701_0_L2A"]  # the 12.5 % one is dropped
    sent = next(r[2] for r in handler.requests if r[1] == "/search")
    assert "query" not in sent and "filter" not in sent


@pytest.mark.allow_hosts(["127.0.0.1"])
def test_an_unreachable_catalogue_fails_at_once_in_one_line(tmp_path):
    url = f"http://127.0.0.1:{closed_port()}/v1"
    started = time.perf_counter()
    result = runner.invoke(
        app, ["search", "--bbox", "15,48,16,49", "--catalog", url, "--out", str(tmp_path / "i.json")]
    )
    assert time.perf_counter() - started < 10
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and url in lines[0] and "refused" in lines[0] and "Traceback" not in result.output
    assert not (tmp_path / "i.json").exists()


def test_offline_mode_refuses_a_remote_catalogue_before_any_lookup(tmp_path):
    with pytest.raises(RemoteReadError, match="LANDCOVER_OFFLINE") as err:
        search(tmp_path / "i.json", bbox=(15, 48, 16, 49), catalog=EARTH_SEARCH)
    assert EARTH_SEARCH in str(err.value) and "\n" not in str(err.value)


def test_search_in_a_subprocess_imports_no_torch_and_exits_2_when_offline(tmp_path):
    code = (
        "import sys\nfrom landcover.cli import app\n"
        f"try:\n    app(['search', '--bbox', '15,48,16,49', '--out', {str(tmp_path / 'i.json')!r}])\n"
        "except SystemExit as e:\n    print('exit', e.code)\n"
        "print(sorted(m for m in ('torch', 'lightning', 'geopandas') if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.split("\n")[:2] == ["exit 2", "[]"], proc.stdout + proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "earth-search" in proc.stderr
    assert "--help" not in proc.stderr


def test_bad_options_are_one_line_errors(tmp_path):
    with pytest.raises(AOIError, match="minx < maxx"):
        parse_bbox("16,48,15,49")
    with pytest.raises(AOIError, match="WGS84"):
        parse_bbox("500000,5300000,510000,5310000")
    assert parse_bbox("500000,5300000,510000,5310000,EPSG:32633").in_crs(WGS84).bounds == pytest.approx(
        (15.0, 47.85, 15.133, 47.94), abs=0.01
    )
    with pytest.raises(ConfigError, match="start is after"):
        check_dates("2023-08-31/2023-06-01")
    with pytest.raises(ConfigError, match="ISO"):
        check_dates("June 2023")
    assert check_dates("2023-06-01/..") == "2023-06-01/.."
    result = runner.invoke(app, ["search", "--out", str(tmp_path / "i.json")])
    assert result.exit_code == 2 and "--bbox" in result.output and len(result.output.strip().splitlines()) == 1


def test_the_cli_imports_pystac_client_only_inside_the_search_command():
    code = "import sys, landcover.cli; print(sorted(m for m in ('pystac_client', 'pystac') if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert proc.stdout.strip() == "[]"
    from landcover.cli import stac as cli_stac

    assert cli_stac.EARTH_SEARCH == EARTH_SEARCH  # the command's default is the library's
