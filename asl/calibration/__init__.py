"""ASL's threshold per model: the calibration file `python -m asl.bench calibrate` writes, its
strict reader, and the settings `asl.ASL.for_model` and the benchmark take from it
(docs/algorithms.md section 14)."""
from .defaults import (FALLBACK_TAU, PAPER_TAU, SCORING, asl_settings, bundled_file, calibration_file, config_of,
                       fingerprint, rule_settings, scaled_layer, settings_for)
from .file import CalibrationError, check, read, write

__all__ = ["FALLBACK_TAU", "PAPER_TAU", "SCORING", "CalibrationError", "asl_settings", "bundled_file", "calibration_file",
           "check", "config_of", "fingerprint", "read", "rule_settings", "scaled_layer", "settings_for", "write"]
