"""Errors of the module layer shared by its wire formats."""

from __future__ import annotations


class MalformedPayloadError(ValueError):
    """Bytes that are not a valid eclm safetensors payload."""
