//! Keeps a pipeline's long-running tasks (its senders and its status writer) running. A task that
//! panics is logged at error level with the pipeline's name and the panic message, counted in
//! `ilert_rollout_task_restarts_total`, and started again after a short backoff: a task that dies
//! quietly would leave /healthz ok while nothing is delivered. Dropping (aborting) the supervisor
//! drops the task with it.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use tokio::time::Instant;
use tracing::{debug, error};

use crate::metrics::Metrics;

/// Why a task ended on purpose. A task has no other way to end than these or a panic, so every
/// end is either meant or restarted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// SIGTERM: what was on the wire is finished and recorded.
    Shutdown,
    /// The pipeline is gone (its status answers 404).
    PipelineGone,
}

/// A task that ran this long before it failed is starting over, not failing in a loop.
const HEALTHY_RUN: Duration = Duration::from_secs(60);
/// The longest wait before a restart.
const MAX_DELAY: Duration = Duration::from_secs(30);

/// Runs the task `start` makes until it ends on purpose; after a panic, `start(true)` makes a
/// fresh one once `first_delay` (doubling with each restart in a row, up to 30 s) has passed.
pub async fn supervise<F, Fut>(
    pipeline: String,
    task: &'static str,
    metrics: Arc<Metrics>,
    first_delay: Duration,
    mut start: F,
) where
    F: FnMut(bool) -> Fut,
    Fut: Future<Output = Ended>,
{
    let mut in_a_row: u32 = 0;
    loop {
        let started = Instant::now();
        // The task's state is all its own (the outbox and counters it shares survive a panic as
        // they are: every lock in the controller ignores poisoning), so unwinding out of it is safe.
        match AssertUnwindSafe(start(in_a_row > 0)).catch_unwind().await {
            Ok(ended) => {
                debug!(pipeline = %pipeline, task, ?ended, "pipeline task finished");
                return;
            }
            Err(panic) => {
                if started.elapsed() >= HEALTHY_RUN {
                    in_a_row = 0;
                }
                in_a_row = in_a_row.saturating_add(1);
                let delay = restart_delay(in_a_row, first_delay);
                metrics.task_restart(task);
                error!(
                    pipeline = %pipeline,
                    task,
                    panic = %panic_message(panic.as_ref()),
                    restart_in_seconds = delay.as_secs_f32(),
                    "pipeline task failed; starting it again"
                );
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// `first` doubling with each restart in a row, at most 30 s.
fn restart_delay(in_a_row: u32, first: Duration) -> Duration {
    first
        .saturating_mul(1u32 << in_a_row.saturating_sub(1).min(16))
        .min(MAX_DELAY)
}

/// The text of a panic (`panic!("...")` carries a `&str` or a `String`).
pub fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn a_task_that_panics_is_counted_and_started_again_until_it_ends_on_purpose() {
        let metrics = Arc::new(Metrics::default());
        let runs = Arc::new(AtomicU32::new(0));
        let restarted = Arc::new(AtomicU32::new(0));
        let (r, again) = (runs.clone(), restarted.clone());
        supervise(
            "ns/p".into(),
            "sender",
            metrics.clone(),
            Duration::from_millis(1),
            move |is_restart| {
                let n = r.fetch_add(1, Ordering::SeqCst);
                if is_restart {
                    again.fetch_add(1, Ordering::SeqCst);
                }
                async move {
                    if n < 2 {
                        panic!("boom {n}");
                    }
                    Ended::Shutdown
                }
            },
        )
        .await;
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        assert_eq!(restarted.load(Ordering::SeqCst), 2);
        assert!(
            metrics
                .encode()
                .contains("ilert_rollout_task_restarts_total{task=\"sender\"} 2"),
            "{}",
            metrics.encode()
        );
    }

    #[tokio::test]
    async fn aborting_the_supervisor_ends_the_task() {
        struct Dropped(Arc<AtomicU32>);
        impl Drop for Dropped {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let dropped = Arc::new(AtomicU32::new(0));
        let d = dropped.clone();
        let handle = tokio::spawn(supervise(
            "ns/p".into(),
            "status",
            Arc::new(Metrics::default()),
            Duration::from_millis(1),
            move |_| {
                let guard = Dropped(d.clone());
                async move {
                    let _guard = guard;
                    std::future::pending::<Ended>().await
                }
            },
        ));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(dropped.load(Ordering::SeqCst), 0);
        handle.abort();
        assert!(handle.await.unwrap_err().is_cancelled());
        assert_eq!(dropped.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn restarts_in_a_row_back_off_up_to_30_s() {
        let ms = Duration::from_millis;
        assert_eq!(restart_delay(1, ms(500)), ms(500));
        assert_eq!(restart_delay(3, ms(500)), ms(2000));
        assert_eq!(restart_delay(100, ms(500)), MAX_DELAY);
    }

    #[test]
    fn names_what_panicked() {
        let s: Box<dyn Any + Send> = Box::new("static text");
        assert_eq!(panic_message(s.as_ref()), "static text");
        let s: Box<dyn Any + Send> = Box::new(format!("formatted {}", 7));
        assert_eq!(panic_message(s.as_ref()), "formatted 7");
        let s: Box<dyn Any + Send> = Box::new(7u8);
        assert_eq!(panic_message(s.as_ref()), "a panic without a message");
    }
}
