//! Pure pacing decisions: a token bucket per integration key, when to combine waiting events, and
//! how long to back off after a failure. Time is passed in, so every decision is testable.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// A sliding one-minute window per integration key: at most `per_minute` requests in any 60 s,
/// which is what ilert enforces (a token bucket would allow twice that across a minute).
#[derive(Clone, Debug)]
pub struct Budget {
    per_minute: usize,
    sent: VecDeque<Instant>,
    blocked_until: Option<Instant>,
}

/// What to send next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Nothing may go out before this moment.
    WaitUntil(Instant),
    /// Send this many waiting events as one request: 1 when the budget left covers every waiting
    /// event one by one, all of them (up to the size cap) when it does not.
    Send(usize),
}

const WINDOW: Duration = Duration::from_secs(60);

impl Budget {
    pub fn new(per_minute: u32) -> Self {
        let per_minute = per_minute.max(1) as usize;
        Budget {
            per_minute,
            // Grows with what is sent: the limit can be far above what is ever used.
            sent: VecDeque::new(),
            blocked_until: None,
        }
    }

    fn forget_old(&mut self, now: Instant) {
        while self
            .sent
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= WINDOW)
        {
            self.sent.pop_front();
        }
        // After a burst, hand back the room it took.
        if self.sent.capacity() > 64 && self.sent.len() < self.sent.capacity() / 4 {
            self.sent.shrink_to(self.sent.len() * 2);
        }
    }

    /// Decides what to do with `waiting` events (> 0) now and, when that is to send, counts the
    /// request at once. Pipelines that share a key share its budget: a check apart from the count
    /// would let two of them through on the same slot.
    pub fn reserve(&mut self, waiting: usize, now: Instant) -> Plan {
        let plan = self.plan(waiting, now);
        if let Plan::Send(_) = plan {
            self.forget_old(now);
            self.sent.push_back(now);
        }
        plan
    }

    fn plan(&mut self, waiting: usize, now: Instant) -> Plan {
        if let Some(until) = self.blocked_until {
            if now < until {
                return Plan::WaitUntil(until);
            }
            self.blocked_until = None;
        }
        self.forget_old(now);
        let left = self.per_minute.saturating_sub(self.sent.len());
        if let (0, Some(oldest)) = (left, self.sent.front()) {
            return Plan::WaitUntil(*oldest + WINDOW);
        }
        if left > self.per_minute / 2 {
            // The first half of the budget serves single events at once; when more wait than it
            // covers, one event names them all rather than falling minutes behind.
            return if waiting > left {
                Plan::Send(waiting)
            } else {
                Plan::Send(1)
            };
        }
        // The second half is spread over the minute (one request every 60 s / budget), each
        // combining whatever waits: a long burst is reported every few seconds, never a minute late.
        let spacing = WINDOW / self.per_minute as u32;
        match self.sent.back() {
            Some(last) if now < *last + spacing => Plan::WaitUntil(*last + spacing),
            _ => Plan::Send(waiting),
        }
    }

    /// ilert said 429: its window is used up whatever we counted, so nothing goes before `until`.
    pub fn exhausted_until(&mut self, until: Instant) {
        self.blocked_until = Some(until);
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

/// The wait after a 429: what ilert's `Retry-After` asked for (see `ilert::parse_retry_after`),
/// else ilert's advice of 10-30 s; never longer than `cap` (`--retry-max-seconds`), however long
/// the answer asks for.
pub fn retry_wait(asked: Option<Duration>, cap: Duration, jitter: f64) -> Duration {
    let advised = Duration::from_secs(10).mul_f64(1.0 + 2.0 * jitter.clamp(0.0, 1.0));
    asked.unwrap_or(advised).min(cap)
}

/// The longest wait `later` adds to a clock reading.
const FAR: Duration = Duration::from_secs(366 * 24 * 3600);

/// `now + wait` that cannot overflow the clock (which panics): a wait longer than a year is a
/// year. For every wait that comes from an answer or a flag.
pub fn later(now: Instant, wait: Duration) -> Instant {
    now.checked_add(wait.min(FAR)).unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A limit is a ceiling, not a reservation: the benchmark lifts pacing with a limit of a
    /// million a minute, and a window sized for it held 16 MB per integration key from the start.
    #[test]
    fn a_budget_holds_what_it_sent_not_what_it_may_send() {
        let t0 = Instant::now();
        let mut b = Budget::new(1_000_000);
        assert!(
            b.sent.capacity() < 64,
            "{} slots before any send",
            b.sent.capacity()
        );
        for i in 0..5_000u64 {
            b.reserve(1, t0 + Duration::from_millis(i));
        }
        assert_eq!(b.sent.len(), 5_000);
        // A minute later the window is empty again, and so is most of its room.
        b.reserve(1, t0 + Duration::from_secs(120));
        assert_eq!(b.sent.len(), 1);
        assert!(
            b.sent.capacity() < 64,
            "{} slots kept after the window emptied",
            b.sent.capacity()
        );
    }

    #[test]
    fn a_burst_goes_one_by_one_while_the_budget_lasts_then_combines() {
        let t0 = Instant::now();
        let mut b = Budget::new(10);
        // 4 waiting, 10 left: one at a time.
        assert_eq!(b.reserve(4, t0), Plan::Send(1));
        assert_eq!(b.reserve(3, t0), Plan::Send(1));
        // 8 left, 9 waiting: combine all 9.
        assert_eq!(b.reserve(9, t0), Plan::Send(9));
        for _ in 0..2 {
            assert_eq!(b.reserve(1, t0), Plan::Send(1));
        }
        // Half spent: the rest is spread, one request every 6 s, combining what waits.
        assert_eq!(
            b.reserve(1, t0),
            Plan::WaitUntil(t0 + Duration::from_secs(6))
        );
        for i in 0..5 {
            assert_eq!(
                b.reserve(3, t0 + Duration::from_secs(6 * (i + 1))),
                Plan::Send(3)
            );
        }
        // Spent: the next request may go when the first leaves the window.
        assert_eq!(
            b.reserve(1, t0 + Duration::from_secs(31)),
            Plan::WaitUntil(t0 + Duration::from_secs(60))
        );
        assert_eq!(b.reserve(2, t0 + Duration::from_secs(60)), Plan::Send(2));
    }

    #[test]
    fn never_more_than_the_budget_in_any_minute() {
        let t0 = Instant::now();
        let mut b = Budget::new(10);
        let mut sent = Vec::new();
        let mut now = t0;
        // 30 events arrive one every 200 ms; loop like the sender does.
        let mut arrived = 0usize;
        let mut waiting = 0usize;
        let mut done = 0usize;
        while done < 30 {
            while arrived < 30 && t0 + Duration::from_millis(200 * arrived as u64) <= now {
                arrived += 1;
                waiting += 1;
            }
            if waiting == 0 {
                now += Duration::from_millis(50);
                continue;
            }
            match b.reserve(waiting, now) {
                Plan::WaitUntil(t) => now = t,
                Plan::Send(n) => {
                    sent.push(now);
                    waiting -= n;
                    done += n;
                    now += Duration::from_millis(20);
                }
            }
        }
        for (i, t) in sent.iter().enumerate() {
            let in_window = sent[i..]
                .iter()
                .filter(|u| u.duration_since(*t) < WINDOW)
                .count();
            assert!(in_window <= 10, "{in_window} requests within a minute");
        }
        assert!(
            sent.len() <= 10,
            "the 30 events took {} requests",
            sent.len()
        );
        assert!(
            now - t0 < Duration::from_secs(15),
            "all 30 out within seconds, took {:?}",
            now - t0
        );
    }

    /// Two pipelines on one key, each sender in its own task: both may look at the budget before
    /// either counts its request. Events arrive at both for two minutes.
    #[test]
    fn two_pipelines_on_one_key_never_exceed_the_budget_together() {
        let t0 = Instant::now();
        let mut b = Budget::new(10);
        let every = [Duration::from_millis(700), Duration::from_millis(900)];
        let mut arrived = [0u64; 2];
        let mut waiting = [0usize; 2];
        let mut resume = [t0; 2];
        let mut sent = Vec::new();
        let mut now = t0;
        while now < t0 + Duration::from_secs(180) {
            for s in 0..2 {
                while arrived[s] < 170 && t0 + every[s] * arrived[s] as u32 <= now {
                    arrived[s] += 1;
                    waiting[s] += 1;
                }
            }
            let ready: Vec<usize> = (0..2)
                .filter(|&s| waiting[s] > 0 && resume[s] <= now)
                .collect();
            // Every sender ready at this moment decides before any of them has sent.
            let plans: Vec<(usize, Plan)> = ready
                .iter()
                .map(|&s| (s, b.reserve(waiting[s], now)))
                .collect();
            for (s, plan) in plans {
                match plan {
                    Plan::WaitUntil(t) => resume[s] = t,
                    Plan::Send(n) => {
                        sent.push(now);
                        waiting[s] -= n.min(waiting[s]);
                    }
                }
            }
            now += Duration::from_millis(100);
        }
        assert!(sent.len() > 10, "the test must send for more than a minute");
        for (i, t) in sent.iter().enumerate() {
            let in_window = sent[i..]
                .iter()
                .filter(|u| u.duration_since(*t) < WINDOW)
                .count();
            assert!(
                in_window <= 10,
                "{in_window} requests within the minute from {:?}",
                t.duration_since(t0)
            );
        }
    }

    #[test]
    fn after_429_nothing_goes_before_retry_after() {
        let t0 = Instant::now();
        let mut b = Budget::new(10);
        b.exhausted_until(t0 + Duration::from_secs(20));
        assert_eq!(
            b.reserve(1, t0 + Duration::from_secs(19)),
            Plan::WaitUntil(t0 + Duration::from_secs(20))
        );
        assert_eq!(b.reserve(1, t0 + Duration::from_secs(20)), Plan::Send(1));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let cap = Duration::from_secs(300);
        assert_eq!(backoff(1, cap, 1.0), Duration::from_secs(1));
        assert_eq!(backoff(4, cap, 1.0), Duration::from_secs(8));
        assert_eq!(backoff(30, cap, 1.0), cap);
        assert_eq!(backoff(4, cap, 0.0), Duration::from_secs(4));
    }

    #[test]
    fn a_429_waits_what_it_asks_for_up_to_the_cap() {
        let s = Duration::from_secs;
        let cap = s(300);
        assert_eq!(retry_wait(Some(s(7)), cap, 0.5), s(7));
        assert_eq!(retry_wait(Some(s(86400)), cap, 0.5), cap);
        assert_eq!(retry_wait(Some(s(86400)), s(5), 0.5), s(5));
        assert_eq!(retry_wait(Some(Duration::MAX), s(5), 0.5), s(5));
        assert_eq!(retry_wait(Some(Duration::ZERO), cap, 0.5), Duration::ZERO);
        // Nothing usable asked for: ilert's advice of 10-30 s, capped too.
        assert_eq!(retry_wait(None, cap, 0.0), s(10));
        assert_eq!(retry_wait(None, cap, 1.0), s(30));
        assert_eq!(retry_wait(None, s(5), 0.5), s(5));
    }

    #[test]
    fn later_never_overflows_the_clock() {
        let now = Instant::now();
        assert_eq!(
            later(now, Duration::from_secs(5)),
            now + Duration::from_secs(5)
        );
        assert_eq!(later(now, Duration::from_secs(u64::MAX)), now + FAR);
        assert_eq!(later(now, Duration::MAX), now + FAR);
    }
}
