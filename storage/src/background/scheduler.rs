//! The one scheduler of background builds (the IVF-PQ indexes of sealed segments): builds
//! queue here and run on the background pool, at most [`Scheduler::limit`] at a time (one by
//! default: each build's parallel parts use the whole pool already).
//!
//! A queued build belongs to a [`BuildOwner`] (a collection). When the owner is cancelled or
//! dropped, its builds that have not started are skipped; a running build finishes.
//!
//! Each runner takes one build, then hands its slot to a fresh runner on the pool if more
//! are queued. A runner that rayon executes while another task waits inside the pool (work
//! stealing) therefore holds that task up for one build at most, not for the whole queue.
//! The queue's own lock is held to push or pop a build, never while one runs.
use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

/// Whose builds a [`Scheduler`] holds: cancelling it, or dropping its last `Arc`, skips its
/// builds that have not started yet.
#[derive(Debug, Default)]
pub struct BuildOwner {
    cancelled: AtomicBool,
}

impl BuildOwner {
    /// Skips every build of this owner that has not started.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Release);
    }

    /// Whether [`BuildOwner::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }
}

struct Job {
    owner: Weak<BuildOwner>,
    /// What is built, for logs.
    label: String,
    run: Box<dyn FnOnce() + Send>,
}

impl Job {
    fn wanted(&self) -> bool {
        self.owner.upgrade().is_some_and(|o| !o.is_cancelled())
    }
}

struct Queue {
    jobs: VecDeque<Job>,
    /// Runners holding a slot (running a build or about to take one).
    running: usize,
}

/// A queue of builds run on the background pool, a bounded number at a time.
pub struct Scheduler {
    queue: Mutex<Queue>,
    limit: AtomicUsize,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("queued", &self.queued())
            .field("running", &self.running())
            .field("limit", &self.limit())
            .finish()
    }
}

static BUILDS: Scheduler = Scheduler::new(1);

/// The scheduler of index builds.
pub fn builds() -> &'static Scheduler {
    &BUILDS
}

impl Scheduler {
    /// A scheduler running at most `limit` builds at once (at least one).
    pub const fn new(limit: usize) -> Scheduler {
        Scheduler {
            queue: Mutex::new(Queue {
                jobs: VecDeque::new(),
                running: 0,
            }),
            limit: AtomicUsize::new(if limit == 0 { 1 } else { limit }),
        }
    }

    /// Most builds run at once.
    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Acquire)
    }

    /// Changes the limit (at least one). Running builds finish; new ones start within it.
    pub fn set_limit(&'static self, limit: usize) {
        self.limit.store(limit.max(1), Ordering::Release);
        // A higher limit: start the runners it allows for builds already queued.
        loop {
            let start = {
                let mut q = self.lock();
                let start = !q.jobs.is_empty() && q.running < self.limit();
                if start {
                    q.running += 1;
                }
                start
            };
            if !start {
                break;
            }
            self.start_runner();
        }
    }

    /// Builds waiting to start.
    pub fn queued(&self) -> usize {
        self.lock().jobs.len()
    }

    /// Runners at work (at most the limit, but for a moment after it is lowered).
    pub fn running(&self) -> usize {
        self.lock().running
    }

    /// Queues `job` (a build of `owner`'s, described by `label` in logs); it runs on the
    /// background pool once a slot is free, unless `owner` is cancelled or dropped first.
    /// A panic in `job` is logged and does not stop later builds.
    pub fn submit(
        &'static self,
        owner: &Arc<BuildOwner>,
        label: impl Into<String>,
        job: impl FnOnce() + Send + 'static,
    ) {
        let start = {
            let mut q = self.lock();
            q.jobs.push_back(Job {
                owner: Arc::downgrade(owner),
                label: label.into(),
                run: Box::new(job),
            });
            let start = q.running < self.limit();
            if start {
                q.running += 1;
            }
            start
        };
        if start {
            self.start_runner();
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a runner for a slot already counted in `running`: on the background pool, or
    /// on a thread of its own when the pool could not start.
    fn start_runner(&'static self) {
        match super::pool() {
            Some(p) => p.spawn(move || self.run_one()),
            None => {
                let spawned = std::thread::Builder::new()
                    .name("quiver-build".into())
                    .spawn(move || self.run_one());
                if let Err(e) = spawned {
                    tracing::error!(error = %e, "cannot start a background build thread; queued builds wait for the next submission");
                    self.lock().running -= 1;
                }
            }
        }
    }

    /// One runner's turn: the next build still wanted, then the slot handed on or released.
    fn run_one(&'static self) {
        let Some(job) = self.next_job() else { return };
        let Job { label, run, .. } = job;
        if let Err(panic) = std::panic::catch_unwind(AssertUnwindSafe(run)) {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(build = %label, panic = %what, "background build panicked");
        }
        if self.keep_slot() {
            self.start_runner();
        }
    }

    /// Pops the next build whose owner still wants it. `None`, with the runner's slot
    /// released, when none is left.
    fn next_job(&self) -> Option<Job> {
        let mut skipped = Vec::new();
        let next = {
            let mut q = self.lock();
            loop {
                match q.jobs.pop_front() {
                    Some(job) if job.wanted() => break Some(job),
                    Some(job) => skipped.push(job),
                    None => {
                        q.running -= 1;
                        break None;
                    }
                }
            }
        };
        // Dropped outside the lock: a job's captures may be costly to drop.
        for job in skipped {
            tracing::info!(build = %job.label, "queued build skipped: its owner was cancelled or dropped");
        }
        next
    }

    /// After a build: whether the runner's slot goes on to the next one (builds queued and the
    /// slot within the limit); otherwise it is released.
    fn keep_slot(&self) -> bool {
        let mut q = self.lock();
        if !q.jobs.is_empty() && q.running <= self.limit() {
            true
        } else {
            q.running -= 1;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;

    fn leaked(limit: usize) -> &'static Scheduler {
        Box::leak(Box::new(Scheduler::new(limit)))
    }

    const WAIT: Duration = Duration::from_secs(30);

    #[test]
    fn builds_run_at_most_the_limit_at_once() {
        for limit in [1, 2] {
            let s = leaked(limit);
            let owner = Arc::new(BuildOwner::default());
            let now = Arc::new(AtomicUsize::new(0));
            let most = Arc::new(AtomicUsize::new(0));
            let (done, finished) = mpsc::channel();
            for i in 0..6 {
                let (now, most, done) = (Arc::clone(&now), Arc::clone(&most), done.clone());
                s.submit(&owner, format!("job {i}"), move || {
                    let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(n, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(10));
                    now.fetch_sub(1, Ordering::SeqCst);
                    done.send(i).unwrap();
                });
            }
            let mut ran: Vec<i32> = (0..6)
                .map(|_| finished.recv_timeout(WAIT).unwrap())
                .collect();
            ran.sort_unstable();
            assert_eq!(ran, (0..6).collect::<Vec<_>>());
            assert!(most.load(Ordering::SeqCst) <= limit, "limit {limit}");
            if limit == 1 {
                assert_eq!(most.load(Ordering::SeqCst), 1);
            }
        }
        assert_eq!(Scheduler::new(0).limit(), 1, "a limit of 0 means 1");
        assert_eq!(builds().limit(), 1, "one build at a time by default");
    }

    #[test]
    fn builds_of_a_cancelled_or_dropped_owner_are_skipped() {
        let s = leaked(1);
        let keep = Arc::new(BuildOwner::default());
        let (gate_tx, gate) = mpsc::channel::<()>();
        let (done, finished) = mpsc::channel();
        // Holds the one slot until the others are queued.
        let d = done.clone();
        s.submit(&keep, "gate", move || {
            gate.recv_timeout(WAIT).unwrap();
            d.send("gate").unwrap();
        });
        let cancelled = Arc::new(BuildOwner::default());
        let dropped = Arc::new(BuildOwner::default());
        for (owner, name) in [
            (&cancelled, "cancelled"),
            (&dropped, "dropped"),
            (&keep, "kept"),
        ] {
            let d = done.clone();
            s.submit(owner, name, move || d.send(name).unwrap());
        }
        cancelled.cancel();
        drop(dropped);
        gate_tx.send(()).unwrap();
        assert_eq!(finished.recv_timeout(WAIT).unwrap(), "gate");
        assert_eq!(finished.recv_timeout(WAIT).unwrap(), "kept");
        assert!(finished.recv_timeout(Duration::from_millis(100)).is_err());
        let started = std::time::Instant::now();
        while s.running() > 0 {
            assert!(
                started.elapsed() < WAIT,
                "the runner never released its slot"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(s.queued(), 0);
    }

    #[test]
    fn a_panicking_build_does_not_stop_the_next() {
        let s = leaked(1);
        let owner = Arc::new(BuildOwner::default());
        let (done, finished) = mpsc::channel();
        s.submit(&owner, "panics", || panic!("test panic in a build"));
        s.submit(&owner, "after", move || done.send(()).unwrap());
        finished.recv_timeout(WAIT).unwrap();
    }
}
