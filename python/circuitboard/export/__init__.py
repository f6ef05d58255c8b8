"""Static export: linked views as one offline HTML file."""

from ._html import build_report, report

__all__ = ["build_report", "report"]
