"""Readers and writers. Every reader returns a list of :class:`ImageRecord` in the LPS world frame."""

from ._common import ImageRecord, ReadError
from ._dispatch import read, reader_for

__all__ = ["ImageRecord", "ReadError", "read", "reader_for"]
