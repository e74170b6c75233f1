"""Offline evaluation of the classifiers: metrics, text reports and confusion-matrix images."""

from mixroute.evaluation.classification import (
    ClassificationMetrics,
    ClassStats,
    compute_metrics,
    expected_calibration_error,
    format_report,
    render_confusion_png,
)

__all__ = [
    "ClassStats",
    "ClassificationMetrics",
    "compute_metrics",
    "expected_calibration_error",
    "format_report",
    "render_confusion_png",
]
