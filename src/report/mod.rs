//! Reports: tables of sweep points × metrics.
