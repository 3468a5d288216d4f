//! Stopping and restarting the long-running tasks of `pgcapi run`: the shutdown signal, [`supervise`]
//! (the one loop that runs a task again after a failure, with exponential backoff on `backon`) and
//! [`every`] (the one loop for work done on a schedule).
//!
//! Each worker is supervised on its own: capture, dispatch (or the dry run), retention and the metrics
//! probe each have their loop, so one failing or stopping never takes another down.

use backon::BackoffBuilder as _;
use std::future::Future;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tracing::warn;

/// The shutdown signal: turns `true` once, when the process is asked to stop.
pub type Shutdown = watch::Receiver<bool>;

/// The sending side of [`Shutdown`]; dropping it also stops the receivers.
pub type ShutdownTx = watch::Sender<bool>;

/// A new shutdown signal, not yet given.
pub fn channel() -> (ShutdownTx, Shutdown) {
    watch::channel(false)
}

/// Resolves once `shutdown` is given (or its sender is gone); at once when it already was.
pub async fn requested(shutdown: &mut Shutdown) {
    while !*shutdown.borrow_and_update() {
        if shutdown.changed().await.is_err() {
            return;
        }
    }
}

/// Waits `delay`, or less when `shutdown` changes meanwhile.
async fn pause(delay: Duration, shutdown: &mut Shutdown) {
    tokio::select! {
        _ = tokio::time::sleep(delay) => {}
        _ = shutdown.changed() => {}
    }
}

pub use crate::error::Action;
use crate::error::Error;

/// How a supervised task is restarted: waits growing from `first` to `max`, started over once a run
/// lasted `healthy` (the failure is then a new one, not the previous one going on).
///
/// Each wait is drawn between half and all of the deterministic step (jitter), so that processes that
/// lost the same server do not all come back at the same instant, and no wait is longer than `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// The longest first wait.
    pub first: Duration,
    /// The longest wait.
    pub max: Duration,
    /// A run at least this long resets the backoff.
    pub healthy: Duration,
}

impl Policy {
    /// Outages (a lost or refused connection): 200 ms, doubling up to 10 s, reset after a 30 s run.
    pub const OUTAGE: Policy = Policy {
        first: Duration::from_millis(200),
        max: Duration::from_secs(10),
        healthy: Duration::from_secs(30),
    };

    fn backoff(&self) -> backon::ExponentialBackoff {
        // backon's jitter adds up to one more step; halving the bounds keeps each wait in [step/2, step].
        backon::ExponentialBuilder::default()
            .with_min_delay(self.first / 2)
            .with_max_delay(self.max / 2)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times()
            .build()
    }
}

/// Runs `task` until it returns `Ok` (its value is returned) or `shutdown` is given (`Ok(None)`), and
/// runs it again after each failure that `classify` answers with [`Action::Retry`]; an error answered
/// with [`Action::Halt`] is returned.
///
/// `classify` sees the error and the wait the backoff would choose (for its log line and side effects,
/// such as the state capture reports); it decides, so each caller keeps its own judgement of what is an
/// outage. `name` names the task in the log.
pub async fn supervise<T, E, Fut>(
    name: &str,
    policy: Policy,
    mut shutdown: Shutdown,
    mut classify: impl FnMut(&E, Duration) -> Action,
    mut task: impl FnMut() -> Fut,
) -> Result<Option<T>, E>
where
    Fut: Future<Output = Result<T, E>>,
{
    let mut backoff = policy.backoff();
    loop {
        if *shutdown.borrow() {
            return Ok(None);
        }
        let started = Instant::now();
        let error = match task().await {
            Ok(value) => return Ok(Some(value)),
            Err(error) => error,
        };
        if started.elapsed() >= policy.healthy {
            backoff = policy.backoff();
        }
        let next = backoff.next().unwrap_or(policy.max);
        let delay = match classify(&error, next) {
            Action::Retry { after } => after.unwrap_or(next),
            Action::Halt => return Err(error),
        };
        if *shutdown.borrow() {
            return Ok(None);
        }
        tracing::debug!(
            task = name,
            wait_ms = delay.as_millis() as u64,
            "restarting"
        );
        pause(delay, &mut shutdown).await;
    }
}

/// The `classify` of a task that never gives up while the process runs (dispatch, the dry run): an error
/// the policy retries ([`Error::action`]) is retried as it says; one it would halt on (a statement the
/// server refuses, a worker that stopped) is logged as needing an operator and retried after the
/// backoff too, so that fixing it (a grant, a table) resumes the task without a restart.
pub fn never_halt(task: &'static str) -> impl FnMut(&Error, Duration) -> Action {
    move |error, delay| match error.action() {
        Action::Retry { after } => {
            let wait = after.unwrap_or(delay);
            warn!(task, %error, retry_in_ms = wait.as_millis() as u64, "interrupted; retrying");
            Action::Retry { after }
        }
        Action::Halt => {
            tracing::error!(task, %error, retry_in_ms = delay.as_millis() as u64,
                "failed on something an operator must fix; retrying");
            Action::RETRY
        }
    }
}

/// Runs `round` at once and then every `period` until `shutdown` is given; a failed round is logged
/// (as `name`) and the next one comes on schedule. For work that is due periodically whether the last
/// round worked or not (retention, the metrics probe), where a growing backoff would only delay
/// noticing that things are fine again.
pub async fn every<E, Fut>(
    name: &str,
    period: Duration,
    mut shutdown: Shutdown,
    mut round: impl FnMut() -> Fut,
) where
    Fut: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    loop {
        if *shutdown.borrow() {
            return;
        }
        let mut stop = shutdown.clone();
        tokio::select! {
            result = round() => {
                if let Err(error) = result {
                    warn!(task = name, %error, next_in_s = period.as_secs(), "round failed");
                }
            }
            _ = requested(&mut stop) => return,
        }
        pause(period, &mut shutdown).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn waits_grow_with_jitter_within_the_policy() {
        let mut backoff = Policy::OUTAGE.backoff();
        let waits: Vec<Duration> = (0..10).map(|_| backoff.next().unwrap()).collect();
        assert!(waits[0] >= Duration::from_millis(100) && waits[0] <= Duration::from_millis(200));
        assert!(waits[3] >= Duration::from_millis(800), "{waits:?}");
        assert!(waits.iter().all(|w| *w <= Policy::OUTAGE.max), "{waits:?}");
        assert!(waits[9] >= Policy::OUTAGE.max / 2, "{waits:?}");
    }

    /// Waits short enough for a test.
    const QUICK: Policy = Policy {
        first: Duration::from_millis(2),
        max: Duration::from_millis(4),
        healthy: Duration::from_secs(3600),
    };

    #[tokio::test]
    async fn a_task_is_run_again_until_it_succeeds_and_a_halt_returns_the_error() {
        let (_tx, rx) = channel();
        let runs = AtomicU32::new(0);
        let result: Result<Option<u32>, &str> = supervise(
            "test",
            QUICK,
            rx.clone(),
            |_, _| Action::RETRY,
            || async {
                let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
                if n < 3 {
                    Err("not yet")
                } else {
                    Ok(n)
                }
            },
        )
        .await;
        assert_eq!(result, Ok(Some(3)));

        let result: Result<Option<()>, &str> = supervise(
            "test",
            QUICK,
            rx,
            |e, _| {
                if *e == "fatal" {
                    Action::Halt
                } else {
                    Action::RETRY
                }
            },
            || async { Err("fatal") },
        )
        .await;
        assert_eq!(result, Err("fatal"));
    }

    #[tokio::test]
    async fn shutdown_ends_the_wait_between_runs() {
        // GIVEN a task that failed and waits an hour before its next run
        let (tx, rx) = channel();
        let failed = std::sync::Arc::new(tokio::sync::Notify::new());
        let notify = failed.clone();
        let task = tokio::spawn(supervise(
            "test",
            QUICK,
            rx,
            |_: &&str, _| Action::Retry {
                after: Some(Duration::from_secs(3600)),
            },
            move || {
                let notify = notify.clone();
                async move {
                    notify.notify_one();
                    Err::<(), _>("down")
                }
            },
        ));
        failed.notified().await;
        // WHEN shutdown is given, THEN supervise returns at once
        tx.send(true).unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(5), task).await;
        assert_eq!(ended.expect("returned at shutdown").unwrap(), Ok(None));
    }
}
