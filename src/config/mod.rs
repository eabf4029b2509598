//! Configuration: TOML model, `${VAR}` expansion, units, validation (SPEC §4).
pub mod model;
pub use model::*;
