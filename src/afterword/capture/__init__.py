"""Capture: the SDK wrapper, background logging and the durable spool."""

from afterword.capture.logger import CaptureLogger, assign_ids
from afterword.capture.spool import Spool
from afterword.capture.wrap import Wrapped, feedback, to_message, wrap

__all__ = ["wrap", "feedback", "Wrapped", "CaptureLogger", "Spool", "assign_ids", "to_message"]
