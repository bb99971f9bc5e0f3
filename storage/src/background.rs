//! The budget of background work (index builds, compaction): a bounded thread pool for the
//! parallel parts, a pacer that holds disk traffic to a byte rate, and the scheduler that
//! queues index builds onto the pool ([`builds`]). Foreground searches run on the global rayon
//! pool and the server's runtime; background work is confined here so a rebuild or a merge
//! cannot take every core from them, and its threads run at a lower CPU priority (nice 10), so
//! on a busy machine the kernel gives queries the cores first.
use std::sync::OnceLock;
use std::time::{Duration, Instant};

mod scheduler;
pub use scheduler::{BuildOwner, Scheduler, builds};

static POOL: OnceLock<Option<rayon::ThreadPool>> = OnceLock::new();

/// Sets the number of background threads. Only the first call (before any background work)
/// takes effect; returns whether it did.
pub fn set_threads(threads: usize) -> bool {
    let mut set = false;
    POOL.get_or_init(|| {
        set = true;
        build(threads)
    });
    set
}

/// The default budget: half the cores, at least one.
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get() / 2)
        .unwrap_or(1)
        .max(1)
}

fn build(threads: usize) -> Option<rayon::ThreadPool> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .thread_name(|i| format!("quiver-bg-{i}"))
        .start_handler(|_| lower_priority())
        .build()
        .map_err(|e| {
            tracing::error!(error = %e, "cannot start the background pool; background work runs on its own thread");
        })
        .ok()
}

/// Nice value of the background threads.
const NICE: libc::c_int = 10;

/// Lowers the calling thread's CPU priority (Linux schedules threads individually).
fn lower_priority() {
    // SAFETY: gettid and setpriority take no pointers and only affect the calling thread's
    // scheduling; a failure (e.g. no permission) is reported through the return value.
    let rc = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, NICE)
    };
    if rc != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "cannot lower the priority of a background thread");
    }
}

fn pool() -> Option<&'static rayon::ThreadPool> {
    POOL.get_or_init(|| build(default_threads())).as_ref()
}

/// Threads in the background pool.
pub fn threads() -> usize {
    pool().map_or(1, rayon::ThreadPool::current_num_threads)
}

/// Runs `f` in the background pool: its rayon parallelism uses only the budgeted threads.
pub fn run<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    match pool() {
        Some(p) => p.install(f),
        None => f(),
    }
}

/// Holds a stream of disk traffic to `bytes_per_sec` on average (0 = unlimited): callers
/// report bytes as they go and are put to sleep when ahead of the budget.
#[derive(Debug)]
pub struct Pacer {
    bytes_per_sec: u64,
    started: Instant,
    bytes: u64,
    slept: Duration,
}

impl Pacer {
    /// A pacer for `bytes_per_sec` (0 = unlimited).
    pub fn new(bytes_per_sec: u64) -> Pacer {
        Pacer {
            bytes_per_sec,
            started: Instant::now(),
            bytes: 0,
            slept: Duration::ZERO,
        }
    }

    /// Accounts `n` bytes; sleeps until they fit the budget.
    pub fn pace(&mut self, n: usize) {
        self.bytes += n as u64;
        if self.bytes_per_sec == 0 {
            return;
        }
        let due = Duration::from_secs_f64(self.bytes as f64 / self.bytes_per_sec as f64);
        let elapsed = self.started.elapsed();
        if due > elapsed {
            let wait = due - elapsed;
            std::thread::sleep(wait);
            self.slept += wait;
        }
    }

    /// Bytes accounted so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Time spent asleep to stay within the budget.
    pub fn slept(&self) -> Duration {
        self.slept
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacer_holds_the_rate() {
        let mut p = Pacer::new(10 << 20); // 10 MiB/s
        let t = Instant::now();
        for _ in 0..20 {
            p.pace(256 << 10); // 5 MiB in total
        }
        let s = t.elapsed().as_secs_f64();
        assert!(s >= 0.45, "5 MiB at 10 MiB/s took {s:.3} s");
        assert_eq!(p.bytes(), 5 << 20);
        let mut free = Pacer::new(0);
        free.pace(1 << 30);
        assert_eq!(free.slept(), Duration::ZERO);
    }
}
