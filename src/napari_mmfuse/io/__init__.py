"""Readers and writers. Every reader returns a list of :class:`ImageRecord` in the LPS world frame."""

from ._common import ImageRecord, ReadError, materialize, memory_budget
from ._dispatch import as_picture, check_writable, is_picture, read, reader_for, write
from .formats import FORMATS, Format, file_suffix

__all__ = [
    "FORMATS", "Format", "ImageRecord", "ReadError", "as_picture", "check_writable", "file_suffix", "is_picture",
    "materialize", "memory_budget", "read", "reader_for", "write",
]
