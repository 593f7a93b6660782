//! Pure: how many Kubernetes Events the deliveries of one pipeline cost.
//!
//! One Event per delivered rollout was one API request per rollout, as many as the ledger
//! writes that make delivery exact. The first delivery after a quiet spell still gets its own
//! Event at once (a lone rollout shows in `kubectl describe` as before, related to its
//! workload); the ones that follow within [`DIGEST_INTERVAL`] are held and published together as
//! one Event at its end, naming the first few and counting the rest. A burst of 1,000 rollouts
//! then costs a handful of Events, not 1,000.

use std::time::Duration;

use tokio::time::Instant;

/// Deliveries within this long of the last published Event share the next one.
pub const DIGEST_INTERVAL: Duration = Duration::from_secs(30);

/// A digest Event names at most this many deliveries; the rest are counted.
pub const DIGEST_NAMED: usize = 10;

/// What a delivery asks of the caller.
#[derive(Debug, PartialEq)]
pub enum Intent {
    /// Publish this delivery's own Event now.
    Publish,
    /// Held for the digest; `Some(at)`: the first held since the last digest, so the caller
    /// schedules [`Digest::flush`] at `at` (later held ones ride along).
    Hold(Option<Instant>),
}

/// The deliveries of one pipeline (and channel) since its last Event.
#[derive(Debug, Default)]
pub struct Digest {
    last_published: Option<Instant>,
    named: Vec<String>,
    held: usize,
}

impl Digest {
    /// A delivery happened at `now`, described by `note`.
    pub fn delivered(&mut self, note: &str, now: Instant) -> Intent {
        let quiet = self
            .last_published
            .is_none_or(|t| now.saturating_duration_since(t) >= DIGEST_INTERVAL);
        if quiet && self.held == 0 {
            self.last_published = Some(now);
            return Intent::Publish;
        }
        self.held += 1;
        if self.named.len() < DIGEST_NAMED {
            self.named.push(note.to_string());
        }
        if self.held == 1 {
            let at = self.last_published.map_or(now, |t| t + DIGEST_INTERVAL);
            Intent::Hold(Some(at.max(now)))
        } else {
            Intent::Hold(None)
        }
    }

    /// The digest note of what was held, if anything, and the digest emptied.
    pub fn flush(&mut self, now: Instant) -> Option<String> {
        if self.held == 0 {
            return None;
        }
        let mut note = if self.held == 1 {
            self.named[0].clone()
        } else {
            format!(
                "{} deliveries to ilert since the last Event: {}",
                self.held,
                self.named.join("; ")
            )
        };
        if self.held > self.named.len() {
            note.push_str(&format!("; and {} more", self.held - self.named.len()));
        }
        self.held = 0;
        self.named.clear();
        self.last_published = Some(now);
        Some(note)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lone_delivery_is_published_at_once_and_a_burst_in_one_digest() {
        let t0 = Instant::now();
        let mut d = Digest::default();
        assert_eq!(d.delivered("a", t0), Intent::Publish);
        let due = t0 + DIGEST_INTERVAL;
        assert_eq!(
            d.delivered("b", t0 + Duration::from_secs(1)),
            Intent::Hold(Some(due))
        );
        for i in 0..20 {
            assert_eq!(
                d.delivered(&format!("n{i}"), t0 + Duration::from_secs(2)),
                Intent::Hold(None)
            );
        }
        let note = d.flush(due).unwrap();
        assert!(
            note.starts_with("21 deliveries to ilert since the last Event: b; n0; "),
            "{note}"
        );
        assert!(note.ends_with("n8; and 11 more"), "{note}");
        assert_eq!(d.flush(due), None, "emptied");
        // Within the interval of the digest: held again; after it: at once.
        assert_eq!(
            d.delivered("c", due + Duration::from_secs(1)),
            Intent::Hold(Some(due + DIGEST_INTERVAL))
        );
        assert_eq!(d.flush(due + DIGEST_INTERVAL).as_deref(), Some("c"));
        assert_eq!(d.delivered("d", due + DIGEST_INTERVAL * 2), Intent::Publish);
    }

    #[test]
    fn a_delivery_while_a_digest_is_due_waits_for_it() {
        let t0 = Instant::now();
        let mut d = Digest::default();
        assert_eq!(d.delivered("a", t0), Intent::Publish);
        assert!(matches!(
            d.delivered("b", t0 + Duration::from_secs(1)),
            Intent::Hold(Some(_))
        ));
        // The interval passed but the digest has not gone out yet: no Event overtakes it.
        assert_eq!(
            d.delivered("c", t0 + DIGEST_INTERVAL * 2),
            Intent::Hold(None)
        );
        assert_eq!(
            d.flush(t0 + DIGEST_INTERVAL * 2).unwrap(),
            "2 deliveries to ilert since the last Event: b; c"
        );
    }
}
