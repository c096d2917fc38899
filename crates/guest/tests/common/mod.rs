//! Code shared by the guest crate's tests and its fuzz targets.

pub mod session_script;
