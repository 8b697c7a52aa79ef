"""The exceptions a user can cause. The CLI prints them as one line, exit code 2."""


class ScalpNetError(Exception):
    """Base class: something the user gave us is wrong; the message says what and why."""


# Why an image could not be used: InvalidImageError.reason, one of these codes.
IMAGE_PROBLEMS = (
    "unreadable",  # the general case (e.g. the file cannot be opened)
    "missing",  # no such file
    "empty",  # 0 bytes
    "not_an_image",  # no decoder recognises it
    "corrupt",  # recognised, but the decoder failed (truncated, damaged)
    "too_many_pixels",  # details: width, height, megapixels, limit (megapixels)
    "too_large_to_decode",  # a decompression bomb
    "no_pixels",  # a 0-pixel image
    "file_too_large",  # an upload over the app's limit; details: size (MB), limit (MB)
)


class InvalidImageError(ScalpNetError):
    """A file or upload is not a readable image (empty, truncated, not an image, too large).

    ``str(error)`` is the English message. ``reason`` (one of ``IMAGE_PROBLEMS``) and
    ``details`` (the numbers the message names) let an interface say it in another language.
    """

    def __init__(self, message: str, reason: str = "unreadable", **details: object):
        super().__init__(message)
        if reason not in IMAGE_PROBLEMS:
            raise ValueError(f"unknown image problem {reason!r}; expected one of {IMAGE_PROBLEMS}")
        self.reason = reason
        self.details = details


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
