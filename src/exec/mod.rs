//! The scheduler: runs a plan over a device pool.
