//! Real-time pacing of input that arrives faster than real time, shared by all tracks of one stream.
//!
//! A file uploaded with `curl -T` arrives at network speed; clients want it at play speed. The pacer maps
//! each buffer's running time to a wall-clock deadline from one anchor `(running time, instant)` and holds the
//! buffer while it is more than [`LEAD`] ahead. Holding the streaming thread backs up the bounded queues and
//! the appsrc, and that throttles the sender through TCP: memory stays bounded.
//!
//! A live source never accumulates delay here: when a buffer arrives later than its deadline (sender slower
//! than its own clock, or a network stall) by more than [`REANCHOR_AFTER`], the anchor moves so that buffer is
//! "now", instead of letting the debt be paid back later as a burst. The same deadlines tell the encoder
//! branch how late a frame is, so a transcode that cannot keep up drops frames instead of falling behind.

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// How far ahead of the wall clock input may run before it is held: a second of slack absorbs network
/// jitter and lets joiners get a full keyframe group at once.
pub const LEAD: Duration = Duration::from_secs(1);
/// How late input may arrive before the anchor moves: below this, jitter; above, the source has fallen
/// behind and must not be allowed to catch up with a burst.
pub const REANCHOR_AFTER: Duration = Duration::from_millis(500);
/// Frames later than this at the encoder are dropped rather than encoded (the transcode cannot keep up).
pub const MAX_ENCODE_LATENESS: Duration = Duration::from_secs(1);
/// Input this far ahead of its deadline is not a fast upload (that is held at [`LEAD`] and never gets further)
/// but a jump in the source's timestamps (an encoder restarted, hours skipped): the anchor moves, as for late
/// input, instead of holding the source for the length of the jump.
pub const JUMP_AHEAD: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct Pacer {
    enabled: bool,
    state: Mutex<State>,
    wake: Condvar,
}

#[derive(Debug, Default)]
struct State {
    /// (running time in ns, the instant it maps to).
    anchor: Option<(u64, Instant)>,
    shutdown: bool,
}

/// What [`Pacer::deadline`] decided for one buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// On time or late by less than the re-anchor threshold: pass.
    Pass,
    /// Too far ahead: hold until the instant.
    HoldUntil(Instant),
    /// Late: the anchor was moved to this buffer.
    Reanchored,
}

impl Pacer {
    pub fn new(enabled: bool) -> Self {
        Pacer {
            enabled,
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Decides for a buffer with running time `rt_ns` seen at `now`.
    pub fn deadline(&self, rt_ns: u64, now: Instant) -> Verdict {
        if !self.enabled {
            return Verdict::Pass;
        }
        let mut st = self.state.lock().unwrap();
        let &mut (art, at) = st.anchor.get_or_insert((rt_ns, now));
        let due = if rt_ns >= art {
            at + Duration::from_nanos(rt_ns - art)
        } else {
            at.checked_sub(Duration::from_nanos(art - rt_ns))
                .unwrap_or(at)
        };
        if due > now + JUMP_AHEAD {
            st.anchor = Some((rt_ns, now));
            Verdict::Reanchored
        } else if due > now + LEAD {
            Verdict::HoldUntil(due - LEAD)
        } else if now.saturating_duration_since(due) > REANCHOR_AFTER {
            st.anchor = Some((rt_ns, now));
            Verdict::Reanchored
        } else {
            Verdict::Pass
        }
    }

    /// How late a buffer is against the current anchor (zero when on time or pacing is off).
    pub fn lateness(&self, rt_ns: u64, now: Instant) -> Duration {
        if !self.enabled {
            return Duration::ZERO;
        }
        let st = self.state.lock().unwrap();
        match st.anchor {
            Some((art, at)) if rt_ns >= art => {
                now.saturating_duration_since(at + Duration::from_nanos(rt_ns - art))
            }
            _ => Duration::ZERO,
        }
    }

    /// Blocks the calling streaming thread as [`Pacer::deadline`] says, returning early on shutdown.
    /// Returns false once shut down.
    pub fn pace(&self, rt_ns: u64) -> bool {
        let Verdict::HoldUntil(until) = self.deadline(rt_ns, Instant::now()) else {
            return !self.state.lock().unwrap().shutdown;
        };
        let mut st = self.state.lock().unwrap();
        loop {
            if st.shutdown {
                return false;
            }
            let now = Instant::now();
            if now >= until {
                return true;
            }
            st = self.wake.wait_timeout(st, until - now).unwrap().0;
        }
    }

    /// Wakes every held thread and stops holding; called before the pipeline goes to NULL so teardown never
    /// waits on a sleeping pacer.
    pub fn shutdown(&self) {
        self.state.lock().unwrap().shutdown = true;
        self.wake.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn holds_only_input_more_than_a_second_ahead() {
        let p = Pacer::new(true);
        let t0 = Instant::now();
        assert_eq!(p.deadline(0, t0), Verdict::Pass);
        assert_eq!(p.deadline(S / 2, t0), Verdict::Pass);
        assert_eq!(p.deadline(S, t0), Verdict::Pass);
        assert_eq!(
            p.deadline(3 * S, t0),
            Verdict::HoldUntil(t0 + Duration::from_secs(2))
        );
        // Released at its time, it passes.
        assert_eq!(
            p.deadline(3 * S, t0 + Duration::from_secs(2)),
            Verdict::Pass
        );
    }

    #[test]
    fn late_input_moves_the_anchor_so_no_delay_piles_up() {
        let p = Pacer::new(true);
        let t0 = Instant::now();
        p.deadline(0, t0);
        // Source stalls 3 s, then resumes with the next second of media.
        let t1 = t0 + Duration::from_secs(4);
        assert_eq!(p.deadline(S, t1), Verdict::Reanchored);
        // A burst of the 2 s that follow is not passed through unpaced: the new anchor holds it.
        assert_eq!(p.deadline(2 * S, t1), Verdict::Pass);
        assert_eq!(
            p.deadline(3 * S, t1),
            Verdict::HoldUntil(t1 + Duration::from_secs(1))
        );
        assert_eq!(
            p.lateness(S, t1 + Duration::from_millis(300)),
            Duration::from_millis(300)
        );
    }

    #[test]
    fn a_jump_of_hours_ahead_moves_the_anchor_instead_of_holding_for_hours() {
        let p = Pacer::new(true);
        let t0 = Instant::now();
        p.deadline(0, t0);
        assert_eq!(p.deadline(10 * 3600 * S, t0), Verdict::Reanchored);
        // Paced from there on.
        assert_eq!(
            p.deadline(10 * 3600 * S + 3 * S, t0),
            Verdict::HoldUntil(t0 + Duration::from_secs(2))
        );
    }

    #[test]
    fn disabled_pacer_never_holds_or_reports_lateness() {
        let p = Pacer::new(false);
        let t0 = Instant::now();
        p.deadline(0, t0);
        assert_eq!(p.deadline(100 * S, t0), Verdict::Pass);
        assert_eq!(p.lateness(0, t0 + Duration::from_secs(100)), Duration::ZERO);
    }

    #[test]
    fn shutdown_releases_a_held_thread() {
        let p = std::sync::Arc::new(Pacer::new(true));
        assert!(p.pace(0));
        let p2 = p.clone();
        let h = std::thread::spawn(move || p2.pace(5 * S));
        std::thread::sleep(Duration::from_millis(50));
        p.shutdown();
        assert!(!h.join().unwrap());
    }
}
