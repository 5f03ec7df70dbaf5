"""Evaluation beyond accuracy: the operating point (temperature, threshold) and Grad-CAM."""

from crack_lightning.evaluation.operating_point import (
    at_prevalence,
    calibration_error,
    choose_threshold,
    cracks_needed,
    degenerate,
    fit_point,
    fit_temperature,
)

__all__ = ["at_prevalence", "calibration_error", "choose_threshold", "cracks_needed", "degenerate", "fit_point",
           "fit_temperature"]
