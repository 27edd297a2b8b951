//! What the endpoints say about the target: which process is attached and how it was selected, or why
//! none is; `/readyz` answers from it and `/` shows it.

use std::sync::Mutex;

/// The target's state as the sampler last saw it.
#[derive(Debug)]
pub struct TargetStatus {
    state: Mutex<Readiness>,
}

/// Whether a target is attached, and the line that says so.
#[derive(Debug, Clone)]
struct Readiness {
    ready: bool,
    /// One line for people: the attached target, or the reason there is none.
    summary: String,
}

impl Default for TargetStatus {
    fn default() -> Self {
        TargetStatus {
            state: Mutex::new(Readiness {
                ready: false,
                summary: "starting: no sample taken yet".to_owned(),
            }),
        }
    }
}

impl TargetStatus {
    /// Ready, with `summary` saying what is being watched.
    pub fn set_ready(&self, summary: String) {
        self.set(true, summary);
    }

    /// Not ready, with `reason` saying what vitals is waiting for.
    pub fn set_waiting(&self, reason: String) {
        self.set(false, reason);
    }

    fn set(&self, ready: bool, summary: String) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.ready != ready || s.summary != summary {
            *s = Readiness { ready, summary };
        }
    }

    /// Whether vitals is ready, and the line describing why (or why not).
    pub fn get(&self) -> (bool, String) {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        (s.ready, s.summary.clone())
    }
}
