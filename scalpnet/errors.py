"""The exceptions a user can cause. The CLI prints them as one line, exit code 2."""


class ScalpNetError(Exception):
    """Base class: something the user gave us is wrong; the message says what and why."""


class InvalidImageError(ScalpNetError):
    """A file or upload is not a readable image (empty, truncated, not an image, too large)."""


class DatasetError(ScalpNetError):
    """A dataset folder, CSV or split is missing, malformed or inconsistent."""


class ModelNotFoundError(ScalpNetError):
    """No usable model at the given run folder, path or URL."""


class WeightsUnavailableError(ScalpNetError):
    """Pretrained weights could not be downloaded or read."""


class ExportError(ScalpNetError):
    """A model could not be exported, or the export does not compute what the model does."""


class ConfigError(ScalpNetError):
    """A setting (flag or config field) is out of range or not one of the allowed values."""


class RunFolderError(ScalpNetError):
    """A run folder holds something other than the run being started or resumed."""


class DiskFullError(ScalpNetError):
    """A save failed because the disk (or quota) is full; the last good file is kept."""
