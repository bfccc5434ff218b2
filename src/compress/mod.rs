//! Compression kernels: pure functions of weight matrices (and calibration statistics).
