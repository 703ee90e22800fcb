"""The "landcover" Processing provider: its algorithms and its one setting, the landcover executable."""

from __future__ import annotations

from qgis.core import QgsProcessingProvider

from .runner import ENV

EXECUTABLE_SETTING = "LANDCOVER_EXECUTABLE"


def executable_setting() -> str:
    """The provider setting (Settings > Options > Processing > Providers > landcover), "" when unset."""
    try:
        from processing.core.ProcessingConfig import ProcessingConfig
    except ImportError:  # Processing's Python plugin not loaded: only the environment and PATH
        return ""
    return str(ProcessingConfig.getSetting(EXECUTABLE_SETTING) or "")


class LandcoverProvider(QgsProcessingProvider):
    def load(self):
        try:
            from processing.core.ProcessingConfig import ProcessingConfig, Setting
        except ImportError:
            pass
        else:
            ProcessingConfig.settingIcons[self.name()] = self.icon()
            ProcessingConfig.addSetting(
                Setting(
                    self.name(),
                    EXECUTABLE_SETTING,
                    f"landcover executable (full path; empty: ${ENV}, then landcover on PATH)",
                    "",
                    valuetype=Setting.FILE,
                )
            )
            ProcessingConfig.readSettings()
        self.refreshAlgorithms()
        return True

    def unload(self):
        try:
            from processing.core.ProcessingConfig import ProcessingConfig
        except ImportError:
            return
        ProcessingConfig.removeSetting(EXECUTABLE_SETTING)

    def loadAlgorithms(self):
        from .algorithms import EvaluateAlgorithm, PredictAlgorithm

        self.addAlgorithm(PredictAlgorithm())
        self.addAlgorithm(EvaluateAlgorithm())

    def id(self):
        return "landcover"

    def name(self):
        return "landcover"

    def longName(self):
        return "landcover (Sentinel-2 land-cover maps)"
