"""What real QGIS sees in landcover's outputs: run by the system Python that has QGIS (``python3-qgis``), not the venv.

    QT_QPA_PLATFORM=offscreen /usr/bin/python3 tests/qgis_checks.py SPEC.json

SPEC.json: ``{"layers": [{"path": ..., "kind": "raster" | "vector", "render": OUT.png (optional)}, ...]}``, or
``{"run": [{"algorithm": ..., "parameters": {...}}, ...], "plugin_path": ...}`` (see run_in_project).
Prints one JSON object: per layer, what QGIS loaded (validity, CRS, extent, size, bands, the renderer and its
palette or bands, fields and feature count); ``render`` draws the layer alone with QgsMapRendererSequentialJob
at one pixel per raster pixel (extent = the layer's extent, output size = its size, transparent background) and
saves the image as a PNG for the caller to compare. Only the standard library and qgis: the venv's packages are
not visible here. tests/test_qgis.py runs it and asserts on the result.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path


def raster_facts(layer) -> dict:
    renderer = layer.renderer()
    provider = layer.dataProvider()
    facts: dict = {
        "width": layer.width(),
        "height": layer.height(),
        "band_count": layer.bandCount(),
        "band_names": [layer.bandName(i) for i in range(1, layer.bandCount() + 1)],
        "nodata": provider.sourceNoDataValue(1) if provider.sourceHasNoDataValue(1) else None,
        "renderer": renderer.type(),
        "alpha_band": renderer.alphaBand(),
    }
    if renderer.type() == "paletted":
        facts["band"] = renderer.band()
        facts["classes"] = [
            {"value": c.value, "color": c.color.name(), "alpha": c.color.alpha(), "label": c.label}
            for c in renderer.classes()
        ]
    elif renderer.type() == "singlebandgray":
        facts["bands"] = [renderer.grayBand()]
    elif renderer.type() == "multibandcolor":
        facts["bands"] = [renderer.redBand(), renderer.greenBand(), renderer.blueBand()]
    return facts


def vector_facts(layer) -> dict:
    from qgis.core import QgsWkbTypes

    return {
        "feature_count": layer.featureCount(),
        "geometry": QgsWkbTypes.displayString(layer.wkbType()),
        "fields": layer.fields().names(),
        "renderer": layer.renderer().type(),
        "sublayers": [s.split("!!::!!")[1] for s in layer.dataProvider().subLayers()],
    }


def render(layer, png: str) -> None:
    """Draw ``layer`` alone, one output pixel per raster pixel, on a transparent background."""
    from qgis.core import QgsMapRendererSequentialJob, QgsMapSettings
    from qgis.PyQt.QtCore import QSize
    from qgis.PyQt.QtGui import QColor

    settings = QgsMapSettings()
    settings.setLayers([layer])
    settings.setDestinationCrs(layer.crs())
    settings.setOutputSize(QSize(layer.width(), layer.height()))
    settings.setExtent(layer.extent())
    settings.setBackgroundColor(QColor(0, 0, 0, 0))
    job = QgsMapRendererSequentialJob(settings)
    job.start()
    job.waitForFinished()
    if not job.renderedImage().save(png, "PNG"):
        raise OSError(f"could not save {png}")


def run_in_project(runs: list[dict], plugin_path: str) -> dict:
    """Run Processing algorithms as the Toolbox does (processing.runAndLoadResults: results loaded into the
    project, post-processors applied) with the plugin in ``plugin_path``; their results and the project's layers
    afterwards."""
    from qgis.core import QgsApplication, QgsProcessingContext, QgsProcessingFeedback, QgsProject

    sys.path.append(os.path.join(QgsApplication.pkgDataPath(), "python", "plugins"))
    sys.path.insert(0, plugin_path)
    import processing
    from landcover_processing import classFactory
    from processing.core.Processing import Processing

    Processing.initialize()
    plugin = classFactory(None)
    plugin.initProcessing()
    results = []
    for run in runs:
        context = QgsProcessingContext()
        context.setProject(QgsProject.instance())
        results.append(
            processing.runAndLoadResults(run["algorithm"], run["parameters"], QgsProcessingFeedback(), context)
        )
    layers = []
    for layer in QgsProject.instance().mapLayers().values():
        renderer = layer.renderer()
        facts = {"name": layer.name(), "source": layer.source(), "renderer": renderer.type()}
        if renderer.type() == "paletted":
            facts["labels"] = [c.label for c in renderer.classes()]
        if renderer.type() == "graduatedSymbol":
            facts.update(attribute=renderer.classAttribute(), ranges=len(renderer.ranges()))
        layers.append(facts)
    return {"results": results, "project": layers}


def check(spec: dict) -> dict:
    from qgis.core import Qgis, QgsRasterLayer, QgsVectorLayer

    if "run" in spec:
        return {"qgis_version": Qgis.QGIS_VERSION, **run_in_project(spec["run"], spec["plugin_path"])}
    results = []
    for item in spec["layers"]:
        path = item["path"]
        if item["kind"] == "raster":
            layer = QgsRasterLayer(path, Path(path).stem, "gdal")  # loads <name>.qml when there is one
        else:
            layer = QgsVectorLayer(path, Path(path).stem, "ogr")
        facts: dict = {"path": path, "valid": layer.isValid()}
        if layer.isValid():
            e = layer.extent()
            facts.update(crs=layer.crs().authid(), extent=[e.xMinimum(), e.yMinimum(), e.xMaximum(), e.yMaximum()])
            facts.update(raster_facts(layer) if item["kind"] == "raster" else vector_facts(layer))
            if item.get("render"):
                render(layer, item["render"])
        results.append(facts)
        del layer
    return {"qgis_version": Qgis.QGIS_VERSION, "layers": results}


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    if not os.environ.get("XDG_RUNTIME_DIR"):
        os.environ["XDG_RUNTIME_DIR"] = tempfile.mkdtemp(prefix="qgis-runtime-")
    from qgis.core import QgsApplication

    app = QgsApplication([], False)
    app.initQgis()
    result = check(spec)
    print(json.dumps(result))
    sys.stdout.flush()
    os._exit(0)  # exitQgis() can crash in PyQt's teardown once the layers are gone; nothing is left to save


if __name__ == "__main__":
    main()
