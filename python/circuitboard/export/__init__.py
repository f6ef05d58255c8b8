"""Static export: linked views as one offline HTML file, and the check that one is intact."""

from ._html import build_report, report
from ._verify import Verification, verify_report

__all__ = ["Verification", "build_report", "report", "verify_report"]
