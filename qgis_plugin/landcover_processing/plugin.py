"""The plugin object QGIS loads: registers the landcover Processing provider (GUI and qgis_process)."""

from __future__ import annotations

from qgis.core import QgsApplication

from .provider import LandcoverProvider


class LandcoverProcessingPlugin:
    def __init__(self, iface=None):
        self.iface = iface
        self.provider = None

    def initProcessing(self):
        if self.provider is None:
            self.provider = LandcoverProvider()
            QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self):
        self.initProcessing()

    def unload(self):
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
