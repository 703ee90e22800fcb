"""Processing algorithms that run ``landcover predict`` and ``landcover evaluate`` and load their results."""

from __future__ import annotations

import json
import os
from typing import ClassVar

from qgis.core import (
    QgsClassificationEqualInterval,
    QgsGraduatedSymbolRenderer,
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingLayerPostProcessorInterface,
    QgsProcessingOutputFile,
    QgsProcessingOutputNumber,
    QgsProcessingOutputRasterLayer,
    QgsProcessingOutputVectorLayer,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterFile,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsProviderRegistry,
    QgsStyle,
)

from . import runner
from .provider import executable_setting


class LoadStyle(QgsProcessingLayerPostProcessorInterface):
    """Gives a loaded result its look: the map its .qml (palette, class names), tiles_iou a miou ramp."""

    kept: ClassVar[list] = []  # QGIS holds only a C++ pointer: the Python objects must outlive the algorithm

    def __init__(self, qml: str = "", graduated_field: str = ""):
        super().__init__()
        self.qml, self.graduated_field = qml, graduated_field

    @classmethod
    def create(cls, **kwargs) -> LoadStyle:
        post = cls(**kwargs)
        cls.kept.append(post)
        return post

    def postProcessLayer(self, layer, context, feedback):
        if self.qml and os.path.exists(self.qml):
            message, ok = layer.loadNamedStyle(self.qml)
            if not ok:
                feedback.reportError(f"could not load the style {self.qml}: {message}")
        if self.graduated_field:
            renderer = QgsGraduatedSymbolRenderer(self.graduated_field)
            renderer.setSourceColorRamp(QgsStyle.defaultStyle().colorRamp("RdYlGn"))
            renderer.setClassificationMethod(QgsClassificationEqualInterval())
            renderer.updateClasses(layer, 5)
            layer.setRenderer(renderer)
        layer.triggerRepaint()


class LandcoverAlgorithm(QgsProcessingAlgorithm):
    command = ""

    def createInstance(self):
        return type(self)()

    def group(self):
        return "Land cover"

    def groupId(self):
        return "landcover"

    def run_landcover(self, args: list[str], feedback) -> None:
        """Run ``landcover COMMAND ARGS`` with progress; raise its one-line error as a QgsProcessingException."""
        try:
            exe = runner.find_executable(executable_setting())
        except runner.LandcoverNotFound as exc:
            raise QgsProcessingException(str(exc)) from None
        command = [exe, self.command, *args]
        feedback.pushCommandInfo(" ".join(command))

        def progress(percent: float, stage: str) -> None:
            feedback.setProgress(percent)
            feedback.setProgressText(stage)

        outcome = runner.run(command, progress, feedback.isCanceled, feedback.pushConsoleInfo)
        if outcome.canceled:
            raise QgsProcessingException(f"landcover {self.command} was canceled (partial outputs were removed)")
        if outcome.returncode != 0:
            raise QgsProcessingException(f"landcover {self.command} failed: {outcome.error}")

    @staticmethod
    def advanced(param):
        param.setFlags(param.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
        return param


def raster_file(layer) -> str:
    """The file behind a raster layer (landcover reads files, not QGIS layers)."""
    path = QgsProviderRegistry.instance().decodeUri(layer.providerType(), layer.source()).get("path", "")
    if layer.providerType() != "gdal" or not path or not os.path.exists(path):
        raise QgsProcessingException(
            f"layer {layer.name()!r} is not a raster file ({layer.source()}); save it as a GeoTIFF first"
        )
    return path


class PredictAlgorithm(LandcoverAlgorithm):
    command = "predict"
    CHECKPOINT, INPUT, INPUT_PATH, AOI = "CHECKPOINT", "INPUT", "INPUT_PATH", "AOI"
    PROBABILITIES, CONFIDENCE, TILE, BATCH_SIZE, DEVICE = "PROBABILITIES", "CONFIDENCE", "TILE", "BATCH_SIZE", "DEVICE"
    OUTPUT, OUTPUT_PROBABILITIES, OUTPUT_CONFIDENCE = "OUTPUT", "OUTPUT_PROBABILITIES", "OUTPUT_CONFIDENCE"
    DEVICES: ClassVar[list[str]] = ["auto", "cpu", "cuda"]

    def name(self):
        return "predict"

    def displayName(self):
        return "Predict land-cover map"

    def shortHelpString(self):
        return (
            "Runs `landcover predict CHECKPOINT INPUT --out OUTPUT`: a land-cover map (Cloud-Optimized GeoTIFF, "
            "255 = no data) of a Sentinel-2 raster layer or product file, added to the project with its .qml "
            "style (palette and class names). Optionally per-class probabilities and the confidence "
            "(max probability x 255), and an area of interest."
        )

    def initAlgorithm(self, config=None):
        self.addParameter(QgsProcessingParameterFile(self.CHECKPOINT, "Checkpoint (landcover train: best.ckpt)"))
        self.addParameter(
            QgsProcessingParameterRasterLayer(self.INPUT, "Sentinel-2 raster (multi-band GeoTIFF)", optional=True)
        )
        self.addParameter(
            QgsProcessingParameterFile(
                self.INPUT_PATH, "or a product file (SAFE .zip, STAC item .json, GeoTIFF)", optional=True
            )
        )
        self.addParameter(
            QgsProcessingParameterFeatureSource(
                self.AOI, "Area of interest (polygons)", [QgsProcessing.TypeVectorPolygon], optional=True
            )
        )
        self.addParameter(QgsProcessingParameterBoolean(self.PROBABILITIES, "Per-class probabilities", False))
        self.addParameter(QgsProcessingParameterBoolean(self.CONFIDENCE, "Confidence (max probability)", False))
        tile = QgsProcessingParameterNumber(
            self.TILE,
            "Window side (px; empty: landcover's default)",
            QgsProcessingParameterNumber.Integer,
            optional=True,
            minValue=1,
        )
        self.addParameter(self.advanced(tile))
        batch = QgsProcessingParameterNumber(
            self.BATCH_SIZE, "Windows per model call", QgsProcessingParameterNumber.Integer, 8, minValue=1
        )
        self.addParameter(self.advanced(batch))
        self.addParameter(self.advanced(QgsProcessingParameterEnum(self.DEVICE, "Device", self.DEVICES, False, 0)))
        self.addParameter(QgsProcessingParameterRasterDestination(self.OUTPUT, "Land-cover map"))
        self.addOutput(QgsProcessingOutputRasterLayer(self.OUTPUT_PROBABILITIES, "Class probabilities"))
        self.addOutput(QgsProcessingOutputRasterLayer(self.OUTPUT_CONFIDENCE, "Confidence"))

    def input_path(self, parameters, context) -> str:
        layer = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        path = self.parameterAsFile(parameters, self.INPUT_PATH, context)
        if (layer is None) == (not path):
            raise QgsProcessingException("give either a raster layer (INPUT) or a product file (INPUT_PATH)")
        return raster_file(layer) if layer is not None else path

    def processAlgorithm(self, parameters, context, feedback):
        out = self.parameterAsOutputLayer(parameters, self.OUTPUT, context)
        if not out.lower().endswith((".tif", ".tiff")):
            raise QgsProcessingException(f"the map is a GeoTIFF: name the output .tif, not {out}")
        args = [self.parameterAsFile(parameters, self.CHECKPOINT, context), self.input_path(parameters, context)]
        args += ["--out", out, "--overwrite"]
        if parameters.get(self.AOI):
            aoi = self.parameterAsCompatibleSourceLayerPath(
                parameters, self.AOI, context, ["gpkg", "shp", "geojson"], "gpkg", feedback
            )
            args += ["--aoi", aoi]
        extra = {self.PROBABILITIES: "--probabilities", self.CONFIDENCE: "--confidence"}
        args += [flag for key, flag in extra.items() if self.parameterAsBoolean(parameters, key, context)]
        if parameters.get(self.TILE) not in (None, ""):
            args += ["--tile", str(self.parameterAsInt(parameters, self.TILE, context))]
        args += ["--batch-size", str(self.parameterAsInt(parameters, self.BATCH_SIZE, context))]
        args += ["--device", self.DEVICES[self.parameterAsEnum(parameters, self.DEVICE, context)]]
        self.run_landcover(args, feedback)
        stem = os.path.splitext(out)[0]
        if context.willLoadLayerOnCompletion(out):
            details = context.layerToLoadOnCompletionDetails(out)
            details.setPostProcessor(LoadStyle.create(qml=stem + ".qml"))
        results = {self.OUTPUT: out}
        for key, suffix, title in (
            (self.OUTPUT_PROBABILITIES, "_probabilities.tif", "class probabilities"),
            (self.OUTPUT_CONFIDENCE, "_confidence.tif", "confidence"),
        ):
            path = stem + suffix
            if os.path.exists(path):
                results[key] = path
                name = f"{os.path.basename(stem)} {title}"
                context.addLayerToLoadOnCompletion(
                    path, QgsProcessingContext.LayerDetails(name, context.project(), key)
                )
        return results


class EvaluateAlgorithm(LandcoverAlgorithm):
    command = "evaluate"
    PREDICTION, LABELS, NOMENCLATURE, TILE_SIZE, REPLICATES = (
        "PREDICTION",
        "LABELS",
        "NOMENCLATURE",
        "TILE_SIZE",
        "REPLICATES",
    )
    OUTPUT, TILES_IOU, REPORT, MIOU, OVERALL_ACCURACY = "OUTPUT", "TILES_IOU", "REPORT", "MIOU", "OVERALL_ACCURACY"

    def name(self):
        return "evaluate"

    def displayName(self):
        return "Evaluate map against labels"

    def shortHelpString(self):
        return (
            "Runs `landcover evaluate PREDICTION LABELS --out OUTPUT`: IoU, accuracy and kappa of a land-cover map "
            "against CORINE labels (raster or vector, any CRS) or a labels.tif, with bootstrap intervals; adds "
            "tiles_iou.gpkg (each tile's mIoU, a spatial error map) to the project, coloured by mIoU."
        )

    def initAlgorithm(self, config=None):
        self.addParameter(QgsProcessingParameterRasterLayer(self.PREDICTION, "Land-cover map (landcover predict)"))
        self.addParameter(QgsProcessingParameterFile(self.LABELS, "Labels: CORINE raster/vector or labels.tif"))
        self.addParameter(
            QgsProcessingParameterString(self.NOMENCLATURE, "Nomenclature (empty: the map's)", optional=True)
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                self.TILE_SIZE,
                "Tile side of tiles_iou.gpkg (px)",
                QgsProcessingParameterNumber.Integer,
                256,
                minValue=1,
            )
        )
        replicates = QgsProcessingParameterNumber(
            self.REPLICATES, "Bootstrap replicates", QgsProcessingParameterNumber.Integer, 2000, minValue=10
        )
        self.addParameter(self.advanced(replicates))
        self.addParameter(QgsProcessingParameterFolderDestination(self.OUTPUT, "Report folder"))
        self.addOutput(QgsProcessingOutputVectorLayer(self.TILES_IOU, "IoU per tile"))
        self.addOutput(QgsProcessingOutputFile(self.REPORT, "Report (Markdown)"))
        self.addOutput(QgsProcessingOutputNumber(self.MIOU, "mIoU"))
        self.addOutput(QgsProcessingOutputNumber(self.OVERALL_ACCURACY, "Overall accuracy"))

    def processAlgorithm(self, parameters, context, feedback):
        out = self.parameterAsString(parameters, self.OUTPUT, context)
        prediction = raster_file(self.parameterAsRasterLayer(parameters, self.PREDICTION, context))
        args = [prediction, self.parameterAsFile(parameters, self.LABELS, context), "--out", out, "--overwrite"]
        if nomenclature := self.parameterAsString(parameters, self.NOMENCLATURE, context):
            args += ["--nomenclature", nomenclature]
        args += ["--tile-size", str(self.parameterAsInt(parameters, self.TILE_SIZE, context))]
        args += ["--replicates", str(self.parameterAsInt(parameters, self.REPLICATES, context))]
        self.run_landcover(args, feedback)
        with open(os.path.join(out, "metrics.json"), encoding="utf-8") as f:
            scores = json.load(f)["scores"]
        tiles = os.path.join(out, "tiles_iou.gpkg")
        details = QgsProcessingContext.LayerDetails("IoU per tile", context.project(), self.TILES_IOU)
        details.setPostProcessor(LoadStyle.create(graduated_field="miou"))
        context.addLayerToLoadOnCompletion(tiles, details)
        return {
            self.OUTPUT: out,
            self.TILES_IOU: tiles,
            self.REPORT: os.path.join(out, "report.md"),
            self.MIOU: scores["miou"],
            self.OVERALL_ACCURACY: scores["overall_accuracy"],
        }
