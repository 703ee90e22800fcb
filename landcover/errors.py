"""One root exception, :class:`LandcoverError`, and one subclass per kind of failure.

Every message says what is wrong *and* how to fix it. The CLI prints the message on one
line to stderr and exits with code 2; library users catch :class:`LandcoverError`.
"""

from __future__ import annotations


class LandcoverError(Exception):
    """Root of every error landcover raises on purpose."""

    exit_code = 2


class ConfigError(LandcoverError):
    """A configuration file or option is invalid."""


class CatalogTableError(LandcoverError):
    """A table in data_catalog/ is missing or inconsistent (a packaging bug)."""


class UnknownCodeError(LandcoverError):
    """Label values that the CORINE tables (or a mapping file) do not know."""


class LabelSourceError(LandcoverError):
    """A label source cannot be used (no code column, wrong geometry type, ...)."""


class NoOverlapError(LandcoverError):
    """Two datasets that must overlap do not (labels vs. scene, prediction vs. labels)."""


class InputFormatError(LandcoverError):
    """An input is not a Sentinel-2 product or layout that landcover recognises."""


class MissingBandError(InputFormatError):
    """A band that is needed is not in the product."""


class ProductMismatchError(InputFormatError):
    """Files of different products (tiles, dates, grids) were mixed."""


class CorruptFileError(LandcoverError):
    """A file exists but cannot be read (truncated download, not a raster, ...)."""


class OutputExistsError(LandcoverError):
    """The output exists (or was made with other settings) and --overwrite was not given."""


class DatasetError(LandcoverError):
    """An ingested dataset is missing parts or does not match what is asked of it."""


class ModelError(LandcoverError):
    """A checkpoint or weight file cannot be used with the data at hand."""


class UnsafeFileError(ModelError):
    """A checkpoint or weight file whose unpickling would run code: refused, never executed."""


class OfflineError(LandcoverError, ConnectionRefusedError):
    """A network connection while LANDCOVER_OFFLINE is set (also an OSError, as libraries expect)."""


class TrainingError(LandcoverError):
    """A training run (e.g. a sweep variant) failed; its log says why."""


class OutputError(LandcoverError):
    """An output cannot be written: permission denied, a read-only file system, no space left."""


class RemoteReadError(LandcoverError):
    """A remote file (http(s)://, s3://) cannot be read: the server refused it or the network failed."""


class AOIError(LandcoverError):
    """An area of interest cannot be used: unreadable, empty, or outside every input."""
