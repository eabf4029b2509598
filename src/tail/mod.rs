//! The tailer: one actor per container following `pods/log` (SPEC §5).
pub mod status;
