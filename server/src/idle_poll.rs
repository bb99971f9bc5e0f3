//! Idle polling: after a request, one thread keeps polling a CPU for a short window, so the
//! CPU is not halted when the next request (or the client's next packet) arrives.
//!
//! On virtual machines a halted vCPU takes tens of microseconds to wake (measured here: a
//! loopback request/response costs ≈ 68 µs more when both vCPUs may halt between requests),
//! more than an IVF search. The polling thread runs at `SCHED_IDLE` priority, so any runnable
//! thread preempts it at once, and the scheduler treats its CPU as idle when placing woken
//! threads (they land on the polling CPU, which is awake). It stops polling once no request has
//! arrived for the window, and then sleeps until the next one.
//!
//! The trade-off is CPU time: under steady traffic one core reads as busy. Off by default;
//! `server.idle_poll_us` turns it on. Do not enable under a CPU quota (Kubernetes `limits.cpu`):
//! polling time counts against the quota.
#![allow(unsafe_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Shared between the request path ([`IdlePoller::touch`]) and the polling thread.
#[derive(Debug)]
pub struct IdlePoller {
    epoch: Instant,
    /// Microseconds since `epoch` of the last request.
    last_us: AtomicU64,
    window_us: u64,
    /// Set when a request arrives after the polling thread went to sleep.
    wake: (Mutex<bool>, Condvar),
}

impl IdlePoller {
    /// Starts the polling thread; it polls for `window` after each request.
    pub fn start(window: Duration) -> std::io::Result<Arc<IdlePoller>> {
        let poller = Arc::new(IdlePoller {
            epoch: Instant::now(),
            last_us: AtomicU64::new(0),
            window_us: window.as_micros() as u64,
            wake: (Mutex::new(false), Condvar::new()),
        });
        for i in 0..std::thread::available_parallelism().map_or(1, |n| n.get()) {
            let p = Arc::clone(&poller);
            std::thread::Builder::new()
                .name(format!("quiver-idle-poll-{i}"))
                .spawn(move || p.run())?;
        }
        Ok(poller)
    }

    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    /// Records a request; wakes the polling thread if it was asleep.
    pub fn touch(&self) {
        let now = self.now_us();
        let previous = self.last_us.swap(now, Ordering::Relaxed);
        if now.saturating_sub(previous) >= self.window_us {
            let mut woken = self.wake.0.lock().unwrap_or_else(|e| e.into_inner());
            *woken = true;
            self.wake.1.notify_all();
        }
    }

    fn run(&self) {
        lower_priority();
        loop {
            while self
                .now_us()
                .saturating_sub(self.last_us.load(Ordering::Relaxed))
                < self.window_us
            {
                for _ in 0..64 {
                    std::hint::spin_loop();
                }
            }
            let mut woken = self.wake.0.lock().unwrap_or_else(|e| e.into_inner());
            while !*woken {
                woken = self.wake.1.wait(woken).unwrap_or_else(|e| e.into_inner());
            }
            *woken = false;
        }
    }
}

/// Moves the calling thread to `SCHED_IDLE` (Linux): it runs only when nothing else wants
/// the CPU.
#[cfg(target_os = "linux")]
fn lower_priority() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `sched_setscheduler` with pid 0 changes only the calling thread, and `param`
    // is a valid, initialised struct that outlives the call.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    if rc != 0 {
        tracing::warn!(
            error = %std::io::Error::last_os_error(),
            "idle poller: cannot lower its priority to SCHED_IDLE"
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority() {}
