//! ThinAgent Linux guest agent (skeleton; filled in by the following commits).
#![forbid(unsafe_code)]
