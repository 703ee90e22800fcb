"""QGIS plugin: a Processing provider that runs the installed ``landcover`` command (see README.md, "QGIS")."""


def classFactory(iface):
    from .plugin import LandcoverProcessingPlugin

    return LandcoverProcessingPlugin(iface)
