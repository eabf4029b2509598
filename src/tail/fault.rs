//! A test hook: make the next tailers of a pod panic, to test that a panic restarts that
//! tailer with backoff (SPEC §2). Integration tests link the normal library, so the hook is
//! compiled in but hidden; unarmed, it costs one relaxed load per tailer start.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::target::TargetId;

static ARMED: AtomicBool = AtomicBool::new(false);
static PANICS: Mutex<Option<HashMap<String, u32>>> = Mutex::new(None);

/// Makes the next `times` tailers started for pod `pod` (any namespace) panic as they start.
#[doc(hidden)]
pub fn panic_at_start(pod: &str, times: u32) {
    let mut panics = PANICS.lock().unwrap_or_else(|e| e.into_inner());
    panics
        .get_or_insert_default()
        .insert(pod.to_string(), times);
    ARMED.store(true, Ordering::Relaxed);
}

/// Panics if [`panic_at_start`] asked for it for this target.
pub(crate) fn maybe_panic(id: &TargetId) {
    if !ARMED.load(Ordering::Relaxed) {
        return;
    }
    let fire = {
        let mut panics = PANICS.lock().unwrap_or_else(|e| e.into_inner());
        match panics.as_mut().and_then(|p| p.get_mut(&id.pod)) {
            Some(n) if *n > 0 => {
                *n -= 1;
                true
            }
            _ => false,
        }
    };
    if fire {
        panic!("injected panic for {id}");
    }
}
