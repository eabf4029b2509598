//! One stored position as both backends write it (SPEC §4.4): the target's identity, its
//! cursor, the container instance it belongs to and when it was updated — flat, so the file's
//! JSON and a ConfigMap's read the same.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::Stored;
use crate::cursor::{Cursor, Position};
use crate::target::TargetId;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Record {
    namespace: String,
    pod: String,
    container: String,
    uid: String,
    /// Unix second of the cursor (`sinceTime`).
    since: i64,
    /// Lines to discard after `since`.
    skip: u64,
    container_id: Option<String>,
    updated: Timestamp,
}

impl Record {
    /// The record of `id` at `stored`.
    pub(super) fn of(id: &TargetId, stored: &Stored) -> Record {
        Record {
            namespace: id.namespace.clone(),
            pod: id.pod.clone(),
            container: id.container.clone(),
            uid: id.uid.clone(),
            since: stored.position.cursor.since,
            skip: stored.position.cursor.skip,
            container_id: stored.position.container_id.as_deref().map(str::to_string),
            updated: stored.updated,
        }
    }

    /// The table entry it stores.
    pub(super) fn into_entry(self) -> (TargetId, Stored) {
        let position = Position {
            container_id: self.container_id.map(Into::into),
            cursor: Cursor {
                since: self.since,
                skip: self.skip,
            },
        };
        let id = TargetId {
            namespace: self.namespace,
            pod: self.pod,
            container: self.container,
            uid: self.uid,
        };
        (
            id,
            Stored {
                position,
                updated: self.updated,
            },
        )
    }
}
