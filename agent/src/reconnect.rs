//! The life of the agent's link to its coordinators, as one state moved forward by one pure
//! function ([`Conn::on`]), so every rule is tested without sockets or clocks.
//!
//! The agent is given one or more coordinator addresses (a VIP, or each coordinator). A
//! *pass* tries them in order, a follower's leader hint first. The rules:
//!
//! - A change of leader is not a failure. A session that ends after the coordinator welcomed
//!   us (the leader died, stepped down or handed over) starts a new pass at once, after a small
//!   jitter (at most [`SOON`]), so a fleet does not arrive in one burst. In that pass the lost
//!   leader comes last and a follower's hint naming it is not followed: a follower still names
//!   a dead leader until its etcd lease runs out.
//! - A follower's "the leader is X" is followed at once, within the pass; an address is tried
//!   at most once per pass.
//! - Only a pass in which every address failed backs off: jittered exponential from
//!   [`Backoff::base`] up to [`Backoff::max`]. While some coordinator answers as a follower, an
//!   election is under way and the cluster is alive: the wait stays at most
//!   [`Backoff::election`], so the new leader is found soon after it is elected.

use std::collections::VecDeque;
use std::time::Duration;

/// The most a lost leader's agents wait before trying again (chosen uniformly in `0..=SOON`).
pub const SOON: Duration = Duration::from_millis(500);

/// Waits between failed passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// After the first failed pass.
    pub base: Duration,
    /// The cap when no coordinator answered at all.
    pub max: Duration,
    /// The cap while followers answer (an election is under way).
    pub election: Duration,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(10),
            election: SOON,
        }
    }
}

impl Backoff {
    /// The wait after `failed` passes in a row (from 1) — the upper bound; half of it is the
    /// lower bound of the jitter.
    pub fn after(&self, failed: u32, followers_answered: bool) -> Delay {
        let doubled = self
            .base
            .saturating_mul(2u32.saturating_pow(failed.saturating_sub(1)));
        let cap = if followers_answered {
            self.election.min(self.max)
        } else {
            self.max
        };
        let d = doubled.min(cap);
        Delay { min: d / 2, max: d }
    }
}

/// A wait, drawn uniformly between `min` and `max` by whoever sleeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delay {
    pub min: Duration,
    pub max: Duration,
}

impl Delay {
    /// Right after a lost leader: `0..=SOON`.
    pub const SOON: Delay = Delay {
        min: Duration::ZERO,
        max: SOON,
    };
}

/// One pass over the addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pass {
    /// Still to try, in order.
    queue: VecDeque<String>,
    /// Tried in this pass.
    tried: Vec<String>,
    /// The leader just lost: a hint naming it is not followed in this pass.
    lost: Option<String>,
    /// Some coordinator answered as a follower.
    followers_answered: bool,
}

impl Pass {
    /// The configured addresses in order; `lost` (the leader whose session just ended), if it is
    /// one of them, last.
    fn new(configured: &[String], lost: Option<String>) -> Pass {
        let mut queue: VecDeque<String> = VecDeque::new();
        for a in configured {
            if !queue.contains(a) && Some(a) != lost.as_ref() {
                queue.push_back(a.clone());
            }
        }
        if let Some(l) = lost.as_ref().filter(|l| configured.contains(l)) {
            queue.push_back(l.clone());
        }
        Pass {
            queue,
            tried: vec![],
            lost,
            followers_answered: false,
        }
    }

    /// A follower named `leader`: try it next, unless this pass tried it already or it is the
    /// leader just lost. Whether it will be tried next.
    fn follow(&mut self, leader: String) -> bool {
        if self.tried.contains(&leader) || self.lost.as_ref() == Some(&leader) {
            return false;
        }
        self.queue.retain(|a| *a != leader);
        self.queue.push_front(leader);
        true
    }
}

/// Where the link stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Conn {
    /// Trying `target`, then the rest of `pass`.
    Connecting {
        target: String,
        /// The follower that named `target` as the leader (`None`: its turn in the pass).
        via: Option<String>,
        pass: Pass,
        /// Passes failed in a row before this one.
        failed: u32,
    },
    /// A session runs with `target`.
    Connected { target: String, failed: u32 },
    /// Waiting `delay` before the pass `next`.
    Waiting {
        delay: Delay,
        next: Pass,
        failed: u32,
    },
}

/// What happened to the link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The target took the session.
    Connected,
    /// The target could not be reached or refused; `leader_hint` is a follower's answer
    /// (`Some(Some(addr))`: the leader is there; `Some(None)`: none elected yet).
    Failed { leader_hint: Option<Option<String>> },
    /// The session ended; `welcomed`: the coordinator had taken us on (a lost leader, not a
    /// failure).
    SessionEnded { welcomed: bool },
    /// The wait is over.
    Waited,
}

impl Conn {
    /// The first state: the first configured address. `configured` must not be empty.
    pub fn start(configured: &[String]) -> Conn {
        Pass::new(configured, None).into_conn(0, None)
    }

    /// The one place the link moves forward. Events that do not fit the state leave it as is.
    pub fn on(self, event: Event, configured: &[String], backoff: &Backoff) -> Conn {
        match (self, event) {
            (Conn::Connecting { target, failed, .. }, Event::Connected) => {
                Conn::Connected { target, failed }
            }
            (
                Conn::Connecting {
                    target,
                    mut pass,
                    failed,
                    ..
                },
                Event::Failed { leader_hint },
            ) => {
                pass.tried.push(target.clone());
                let mut via = None;
                if let Some(hint) = leader_hint {
                    pass.followers_answered = true;
                    if hint.is_some_and(|leader| pass.follow(leader)) {
                        via = Some(target);
                    }
                }
                if pass.queue.is_empty() {
                    let failed = failed + 1;
                    Conn::Waiting {
                        delay: backoff.after(failed, pass.followers_answered),
                        next: Pass::new(configured, None),
                        failed,
                    }
                } else {
                    pass.into_conn(failed, via)
                }
            }
            (Conn::Connected { target, failed }, Event::SessionEnded { welcomed }) => {
                if welcomed {
                    Conn::Waiting {
                        delay: Delay::SOON,
                        next: Pass::new(configured, Some(target)),
                        failed: 0,
                    }
                } else {
                    // Taken, then dropped before a welcome: as good as refused.
                    let failed = failed + 1;
                    Conn::Waiting {
                        delay: backoff.after(failed, false),
                        next: Pass::new(configured, Some(target)),
                        failed,
                    }
                }
            }
            (Conn::Waiting { next, failed, .. }, Event::Waited) => next.into_conn(failed, None),
            (state, _) => state,
        }
    }
}

impl Pass {
    fn into_conn(mut self, failed: u32, via: Option<String>) -> Conn {
        match self.queue.pop_front() {
            Some(target) => Conn::Connecting {
                target,
                via,
                pass: self,
                failed,
            },
            // Only with no configured address at all, which the flags refuse.
            None => Conn::Waiting {
                delay: Backoff::default().after(failed + 1, false),
                next: self,
                failed: failed + 1,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    const A: &str = "http://a";
    const B: &str = "http://b";
    const C: &str = "http://c";

    fn target(c: &Conn) -> Option<&str> {
        match c {
            Conn::Connecting { target, .. } => Some(target),
            _ => None,
        }
    }

    fn refused() -> Event {
        Event::Failed { leader_hint: None }
    }

    fn follower(leader: Option<&str>) -> Event {
        Event::Failed {
            leader_hint: Some(leader.map(str::to_string)),
        }
    }

    /// Runs `events` from `state`, recording the target of each connecting state on the way.
    fn drive(mut state: Conn, events: Vec<Event>, cfg: &[String]) -> (Conn, Vec<String>) {
        let b = Backoff::default();
        let mut seen = vec![];
        seen.extend(target(&state).map(str::to_string));
        for e in events {
            state = state.on(e, cfg, &b);
            seen.extend(target(&state).map(str::to_string));
        }
        (state, seen)
    }

    /// The first pass after the session with `leader` ended.
    fn after_losing(cfg: &[String], leader: &str) -> Conn {
        let b = Backoff::default();
        Conn::Connected {
            target: leader.to_string(),
            failed: 0,
        }
        .on(Event::SessionEnded { welcomed: true }, cfg, &b)
        .on(Event::Waited, cfg, &b)
    }

    #[test]
    fn the_configured_addresses_are_tried_in_order_and_a_full_failed_pass_backs_off() {
        let cfg = addrs(&[A, B, C]);
        let (state, seen) = drive(Conn::start(&cfg), vec![refused(), refused()], &cfg);
        assert_eq!(seen, [A, B, C]);
        let state = state.on(refused(), &cfg, &Backoff::default());
        assert_eq!(
            state,
            Conn::Waiting {
                delay: Delay {
                    min: Duration::from_millis(50),
                    max: Duration::from_millis(100)
                },
                next: Pass::new(&cfg, None),
                failed: 1
            }
        );
        let state = state.on(Event::Waited, &cfg, &Backoff::default());
        assert_eq!(target(&state), Some(A), "the next pass starts over");
    }

    #[test]
    fn no_wait_until_a_whole_pass_has_failed() {
        let cfg = addrs(&[A, B, C]);
        let mut state = Conn::start(&cfg);
        for _ in 0..2 {
            state = state.on(refused(), &cfg, &Backoff::default());
            assert!(matches!(state, Conn::Connecting { .. }), "{state:?}");
        }
    }

    #[test]
    fn backoff_doubles_per_failed_pass_up_to_ten_seconds() {
        let b = Backoff::default();
        let maxes: Vec<u128> = (1..=10)
            .map(|n| b.after(n, false).max.as_millis())
            .collect();
        assert_eq!(
            maxes,
            [100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000, 10_000]
        );
        assert_eq!(b.after(u32::MAX, false).max, Duration::from_secs(10));
        assert_eq!(b.after(3, false).min, Duration::from_millis(200));
    }

    #[test]
    fn while_followers_answer_the_wait_stays_short() {
        let b = Backoff::default();
        assert_eq!(b.after(9, true).max, SOON);
        let cfg = addrs(&[A, B]);
        let mut state = Conn::start(&cfg);
        for _ in 0..8 {
            state = state.on(follower(None), &cfg, &b);
            state = state.on(follower(None), &cfg, &b);
            let Conn::Waiting { delay, .. } = &state else {
                panic!("{state:?}")
            };
            assert!(delay.max <= SOON, "{delay:?}");
            state = state.on(Event::Waited, &cfg, &b);
        }
    }

    #[test]
    fn failures_keep_counting_across_passes_until_a_session_is_welcomed() {
        let cfg = addrs(&[A]);
        let b = Backoff::default();
        let mut state = Conn::start(&cfg);
        for _ in 0..3 {
            state = state.on(refused(), &cfg, &b).on(Event::Waited, &cfg, &b);
        }
        let state = state.on(Event::Connected, &cfg, &b).on(
            Event::SessionEnded { welcomed: false },
            &cfg,
            &b,
        );
        assert!(
            matches!(state, Conn::Waiting { failed: 4, delay, .. } if delay.max == Duration::from_millis(800)),
            "a session dropped before its welcome is a failure: {state:?}"
        );
        let state = state
            .on(Event::Waited, &cfg, &b)
            .on(Event::Connected, &cfg, &b)
            .on(Event::SessionEnded { welcomed: true }, &cfg, &b);
        assert!(
            matches!(
                state,
                Conn::Waiting {
                    failed: 0,
                    delay: Delay::SOON,
                    ..
                }
            ),
            "{state:?}"
        );
    }

    #[test]
    fn a_lost_leader_is_retried_soon_after_every_other_address() {
        let cfg = addrs(&[A, B, C]);
        let b = Backoff::default();
        let state = Conn::Connected {
            target: A.into(),
            failed: 3,
        }
        .on(Event::SessionEnded { welcomed: true }, &cfg, &b);
        let Conn::Waiting { delay, failed, .. } = &state else {
            panic!("{state:?}")
        };
        assert_eq!((*delay, *failed), (Delay::SOON, 0));
        assert!(delay.max <= Duration::from_millis(500));
        let (_, seen) = drive(state, vec![Event::Waited, refused(), refused()], &cfg);
        assert_eq!(seen, [B, C, A], "the lost leader comes last");
    }

    #[test]
    fn a_follower_naming_the_dead_leader_is_not_followed_in_the_pass_after_it_died() {
        let cfg = addrs(&[A, B, C]);
        let state = after_losing(&cfg, B);
        // B was the leader and is dead; A and C still name it until its lease runs out.
        let (state, seen) = drive(
            state,
            vec![follower(Some(B)), follower(Some(B)), refused()],
            &cfg,
        );
        assert_eq!(seen, [A, C, B], "B once, in its configured turn (last)");
        assert!(
            matches!(&state, Conn::Waiting { .. }),
            "B refused too: {state:?}"
        );
        assert!(
            matches!(state, Conn::Waiting { failed: 1, .. }),
            "{state:?}"
        );
        // In the next pass a hint is followed again (the old leader may be back and leading).
        let (_, seen) = drive(
            state,
            vec![Event::Waited, follower(Some(B)), refused()],
            &cfg,
        );
        assert_eq!(seen, [A, B, C]);
    }

    #[test]
    fn a_leader_that_was_never_configured_is_not_retried_after_it_died() {
        // The agent knows a VIP and a follower; the leader it found through a hint died.
        let cfg = addrs(&[A, B]);
        let b = Backoff::default();
        let state = Conn::start(&cfg)
            .on(follower(Some("http://x")), &cfg, &b)
            .on(Event::Connected, &cfg, &b)
            .on(Event::SessionEnded { welcomed: true }, &cfg, &b);
        let (state, seen) = drive(
            state,
            vec![
                Event::Waited,
                follower(Some("http://x")),
                follower(Some("http://x")),
            ],
            &cfg,
        );
        assert_eq!(seen, [A, B]);
        assert!(matches!(state, Conn::Waiting { .. }));
    }

    #[test]
    fn a_new_leader_named_by_a_follower_is_tried_next_and_only_once_per_pass() {
        let cfg = addrs(&[A, B, C]);
        let (state, seen) = drive(
            Conn::start(&cfg),
            vec![
                follower(Some(C)),
                refused(), // C, not there yet
                follower(Some(C)),
                refused(), // B
            ],
            &cfg,
        );
        assert_eq!(seen, [A, C, B]);
        assert!(
            matches!(state, Conn::Waiting { failed: 1, .. }),
            "{state:?}"
        );
        let cfg = addrs(&[A, B]);
        let (state, seen) = drive(
            Conn::start(&cfg),
            vec![follower(Some("http://new")), Event::Connected],
            &cfg,
        );
        assert_eq!(seen, [A, "http://new"]);
        let followed =
            Conn::start(&cfg).on(follower(Some("http://new")), &cfg, &Backoff::default());
        assert!(
            matches!(&followed, Conn::Connecting { target, via: Some(v), .. } if target == "http://new" && v == A),
            "{followed:?}"
        );
        let in_turn = Conn::start(&cfg).on(follower(Some(A)), &cfg, &Backoff::default());
        assert!(
            matches!(&in_turn, Conn::Connecting { target, via: None, .. } if target == B),
            "a hint naming the address just tried is not followed: {in_turn:?}"
        );
        assert_eq!(
            state,
            Conn::Connected {
                target: "http://new".into(),
                failed: 0
            }
        );
    }

    #[test]
    fn events_out_of_turn_change_nothing() {
        let cfg = addrs(&[A]);
        let b = Backoff::default();
        let start = Conn::start(&cfg);
        assert_eq!(start.clone().on(Event::Waited, &cfg, &b), start);
        let up = Conn::Connected {
            target: A.into(),
            failed: 0,
        };
        assert_eq!(up.clone().on(Event::Connected, &cfg, &b), up);
    }

    #[test]
    fn duplicate_addresses_are_tried_once() {
        let cfg = addrs(&[A, B, A]);
        let (_, seen) = drive(Conn::start(&cfg), vec![refused(), refused()], &cfg);
        assert_eq!(seen, [A, B]);
    }
}
