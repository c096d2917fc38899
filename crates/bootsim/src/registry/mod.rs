//! The registry as the model reads it: a tree of keys with typed values,
//! names compared case-insensitively (as the configuration manager does),
//! original spelling kept for display.
//!
//! The readers (`.reg` exports and offline SYSTEM hives) each produce a
//! [`RegKey`] for the *control set* the machine boots with — the key that holds
//! `Services`, `Control` and `Enum` — so every later stage is reader-agnostic.

mod key;
mod value;

pub use key::RegKey;
pub use value::RegValue;
