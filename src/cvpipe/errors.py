"""Errors that describe a fault in the user's data or configuration.

Stage scripts turn these into a short message and a non-zero exit, never a traceback:
the message itself must name the file, the row and the rule that was broken.
"""


class CvpipeError(Exception):
    """Base class for faults the user can fix (bad data, bad params)."""


class DataValidationError(CvpipeError):
    """The dataset broke one or more validation rules; the message lists them."""


class ConfigError(CvpipeError):
    """params.yaml holds a value the pipeline cannot use."""


class ParityError(CvpipeError):
    """The exported model disagrees with the PyTorch model beyond tolerance."""
