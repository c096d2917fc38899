//! One module per message family: payload layout, rules, codec.

pub mod error_message;
pub mod file_event;
pub mod goodbye;
pub mod heartbeat;
pub mod hello;
pub mod host_action;
pub mod read;
pub mod verdict;
