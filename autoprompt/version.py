"""The package version (one place: prompt files record it)."""

__version__ = "0.1.0"
