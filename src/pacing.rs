//! Pure pacing decisions: a token bucket per integration key, when to combine waiting events, and
//! how long to back off after a failure. Time is passed in, so every decision is testable.

use std::time::Duration;

use tokio::time::Instant;

/// A token bucket holding at most one minute's budget, refilled continuously.
#[derive(Clone, Debug)]
pub struct Budget {
    per_minute: f64,
    tokens: f64,
    at: Instant,
}

/// What to send next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Nothing may go out before this moment.
    WaitUntil(Instant),
    /// Send this many waiting events as one request: 1 when the budget covers every waiting event
    /// one by one, all of them (up to the size cap) when it does not.
    Send(usize),
}

impl Budget {
    pub fn new(per_minute: u32, now: Instant) -> Self {
        let per_minute = f64::from(per_minute.max(1));
        Budget { per_minute, tokens: per_minute, at: now }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_minute / 60.0).min(self.per_minute);
        self.at = now;
    }

    /// Decides what to do with `waiting` events (> 0) now.
    pub fn plan(&mut self, waiting: usize, now: Instant) -> Plan {
        self.refill(now);
        if self.tokens < 1.0 {
            let missing = 1.0 - self.tokens;
            return Plan::WaitUntil(now + Duration::from_secs_f64(missing * 60.0 / self.per_minute));
        }
        if (waiting as f64) <= self.tokens.floor() {
            Plan::Send(1)
        } else {
            // More wait than the budget allows: one event that names them all, rather than falling
            // minutes behind.
            Plan::Send(waiting)
        }
    }

    /// Takes one token for a request that is about to go out.
    pub fn take(&mut self, now: Instant) {
        self.refill(now);
        self.tokens -= 1.0;
    }

    /// ilert said 429: its window is used up whatever we counted, so nothing goes before `until`.
    pub fn exhausted_until(&mut self, until: Instant, now: Instant) {
        self.refill(now);
        let wait = until.saturating_duration_since(now).as_secs_f64();
        // One token comes due exactly at `until`.
        self.tokens = 1.0 - wait * self.per_minute / 60.0;
        self.at = now;
    }
}

/// Exponential backoff with full jitter: attempt 1 waits up to 1 s, doubling to at most `cap`.
/// `jitter` in [0, 1) is drawn by the caller.
pub fn backoff(attempt: u32, cap: Duration, jitter: f64) -> Duration {
    let base = Duration::from_secs(1).saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
    let ceiling = base.min(cap);
    // Never less than half the ceiling, so retries do not bunch up at zero.
    ceiling.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

/// The wait a 429 asks for: `Retry-After` seconds when given (bounded), else ilert's advice of 10-30 s.
pub fn retry_after(header: Option<&str>, jitter: f64) -> Duration {
    let advised = Duration::from_secs(10).mul_f64(1.0 + 2.0 * jitter.clamp(0.0, 1.0));
    match header.and_then(|h| h.trim().parse::<u64>().ok()) {
        Some(secs) => Duration::from_secs(secs.min(300)),
        None => advised,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_goes_one_by_one_while_the_budget_lasts_then_combines() {
        let t0 = Instant::now();
        let mut b = Budget::new(10, t0);
        // 4 waiting, 10 tokens: one at a time.
        assert_eq!(b.plan(4, t0), Plan::Send(1));
        for _ in 0..8 {
            b.take(t0);
        }
        // 2 tokens left, 5 waiting: combine all 5.
        assert_eq!(b.plan(5, t0), Plan::Send(5));
        b.take(t0);
        b.take(t0);
        // Empty: the next token comes after 6 s.
        assert_eq!(b.plan(1, t0), Plan::WaitUntil(t0 + Duration::from_secs(6)));
        assert_eq!(b.plan(1, t0 + Duration::from_secs(6)), Plan::Send(1));
    }

    #[test]
    fn never_more_than_the_budget_in_any_minute() {
        let t0 = Instant::now();
        let mut b = Budget::new(10, t0);
        let mut sent = Vec::new();
        let mut now = t0;
        // 30 events arrive at once; loop like the sender does.
        let mut waiting = 30usize;
        while waiting > 0 {
            match b.plan(waiting, now) {
                Plan::WaitUntil(t) => now = t,
                Plan::Send(n) => {
                    b.take(now);
                    sent.push(now);
                    waiting -= n;
                }
            }
        }
        for (i, t) in sent.iter().enumerate() {
            let in_window = sent[i..].iter().filter(|u| u.duration_since(*t) < Duration::from_secs(60)).count();
            assert!(in_window <= 10, "{in_window} requests within a minute");
        }
        assert!(sent.len() <= 10, "the 30 events took {} requests", sent.len());
    }

    #[test]
    fn after_429_nothing_goes_before_retry_after() {
        let t0 = Instant::now();
        let mut b = Budget::new(10, t0);
        b.exhausted_until(t0 + Duration::from_secs(20), t0);
        assert!(matches!(b.plan(1, t0 + Duration::from_secs(19)), Plan::WaitUntil(_)));
        assert_eq!(b.plan(1, t0 + Duration::from_millis(20_100)), Plan::Send(1));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let cap = Duration::from_secs(300);
        assert_eq!(backoff(1, cap, 1.0), Duration::from_secs(1));
        assert_eq!(backoff(4, cap, 1.0), Duration::from_secs(8));
        assert_eq!(backoff(30, cap, 1.0), cap);
        assert_eq!(backoff(4, cap, 0.0), Duration::from_secs(4));
        assert_eq!(retry_after(Some("7"), 0.5), Duration::from_secs(7));
        assert_eq!(retry_after(Some("junk"), 0.0), Duration::from_secs(10));
    }
}
