"""Evaluation beyond accuracy: the operating point (temperature, threshold) and Grad-CAM."""

from crack_lightning.evaluation.operating_point import (
    calibration_error,
    choose_threshold,
    degenerate,
    fit_temperature,
)

__all__ = ["calibration_error", "choose_threshold", "degenerate", "fit_temperature"]
