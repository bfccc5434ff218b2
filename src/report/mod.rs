//! Reports: tables of sweep points × metrics.

pub mod table;

pub use table::{Cell, Table};
