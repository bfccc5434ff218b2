//! Calibration: sampling windows from a dataset and collecting per-linear-layer input statistics.
