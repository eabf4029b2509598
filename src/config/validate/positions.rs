//! The `[positions]` table (SPEC §4.4): which backend keeps each target's acknowledged position,
//! and how often it is written and garbage-collected.

use super::{Checker, HOUR, MONTH};
use crate::config::model::*;
use crate::config::raw::*;

/// The `[positions]` table; without it positions are kept in memory only.
pub(super) fn positions(c: &mut Checker, raw: Option<&RawPositions>) -> PositionsConfig {
    let d = PositionsConfig::default();
    let Some(raw) = raw else {
        return d;
    };
    let backend = match raw.backend.as_deref() {
        None => {
            c.error(
                "positions.backend",
                r#"missing (required: "file" or "kubernetes")"#,
            );
            PositionsBackend::Memory
        }
        Some("file") => match c.path("positions.path", raw.path.as_ref()) {
            Some(path) => PositionsBackend::File(path),
            None => {
                if raw.path.is_none() {
                    c.error(
                        "positions.path",
                        r#"missing (required with backend = "file")"#,
                    );
                }
                PositionsBackend::Memory
            }
        },
        Some("kubernetes") => {
            if raw.path.is_some() {
                c.error(
                    "positions.path",
                    r#"is only used with backend = "file" (the kubernetes backend keeps positions in ConfigMaps)"#,
                );
            }
            PositionsBackend::Kubernetes
        }
        Some(other) => {
            c.error(
                "positions.backend",
                format!(r#"{other:?} is not one of "file", "kubernetes""#),
            );
            PositionsBackend::Memory
        }
    };
    PositionsConfig {
        backend,
        sync_period: c.positive_duration(
            "positions.sync_period",
            raw.sync_period.as_deref(),
            d.sync_period,
            HOUR,
        ),
        gc_after: c.positive_duration(
            "positions.gc_after",
            raw.gc_after.as_deref(),
            d.gc_after,
            MONTH,
        ),
    }
}
