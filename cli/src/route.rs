//! Which coordinator a client command talks to next: the addresses given (`--coordinator`,
//! repeatable, or `FACTOTUM_COORDINATOR` with commas), tried in order, and the leader a
//! follower names. Pure: the client performs the attempts and reports what it found.

/// Where a client command's next attempt goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// The i-th address given, in the order given.
    Given(usize),
    /// The leader a follower named.
    Leader(String),
}

/// What an attempt at the current target found (an answer that settles the command ends the
/// route instead).
#[derive(Debug)]
pub(crate) enum Found {
    /// No connection: the error.
    Unreachable(String),
    /// A coordinator that cannot serve the request now, naming the leader or no one.
    Follower(Option<String>),
}

/// What to do after [`Route::after`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Try the new target at once.
    Now,
    /// Try the new target after a short pause (a new round, or a leader between terms).
    AfterPause,
    /// Every given address was unreachable this round: report them.
    GiveUp,
}

/// The given coordinators, tried in order: an unreachable one passes to the next; a follower's
/// answer sends the command to the leader it names (naming none: on to the next address). A
/// round in which no given address could be reached gives up; any other round starts again at
/// the first address after a pause. A leader we were sent to that fails us starts a new round
/// too (it may have just died). Moved forward only by [`Route::after`]; no IO, no clock.
#[derive(Debug)]
pub(crate) struct Route {
    given: Vec<String>,
    at: Target,
    /// This round's unreachable given addresses, with why.
    unreachable: Vec<(String, String)>,
}

impl Route {
    pub(crate) fn new(given: Vec<String>) -> Route {
        assert!(!given.is_empty(), "a route needs an address");
        Route {
            given,
            at: Target::Given(0),
            unreachable: vec![],
        }
    }

    pub(crate) fn url(&self) -> &str {
        match &self.at {
            Target::Given(i) => &self.given[*i],
            Target::Leader(url) => url,
        }
    }

    pub(crate) fn unreachable(&self) -> &[(String, String)] {
        &self.unreachable
    }

    pub(crate) fn after(&mut self, found: Found) -> Step {
        match (self.at.clone(), found) {
            (_, Found::Follower(Some(leader))) if leader != self.url() => {
                self.at = Target::Leader(leader);
                Step::Now
            }
            (Target::Given(i), Found::Unreachable(why)) => {
                self.unreachable.push((self.given[i].clone(), why));
                self.next_given(i)
            }
            (Target::Given(i), Found::Follower(_)) => self.next_given(i),
            (Target::Leader(_), _) => self.new_round(),
        }
    }

    fn next_given(&mut self, i: usize) -> Step {
        if i + 1 < self.given.len() {
            self.at = Target::Given(i + 1);
            Step::Now
        } else if self.unreachable.len() == self.given.len() {
            Step::GiveUp
        } else {
            self.new_round()
        }
    }

    fn new_round(&mut self) -> Step {
        self.at = Target::Given(0);
        self.unreachable.clear();
        Step::AfterPause
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(given: &[&str]) -> Route {
        Route::new(given.iter().map(|s| s.to_string()).collect())
    }

    fn down() -> Found {
        Found::Unreachable("connection refused".into())
    }

    #[test]
    fn an_unreachable_address_passes_to_the_next() {
        let mut r = route(&["http://a", "http://b"]);
        assert_eq!(r.after(down()), Step::Now);
        assert_eq!(r.url(), "http://b");
    }

    #[test]
    fn a_round_where_nothing_answers_gives_up_naming_every_address() {
        let mut r = route(&["http://a", "http://b"]);
        r.after(down());
        assert_eq!(r.after(down()), Step::GiveUp);
        let named: Vec<&str> = r.unreachable().iter().map(|(u, _)| u.as_str()).collect();
        assert_eq!(named, ["http://a", "http://b"]);
        assert_eq!(route(&["http://a"]).after(down()), Step::GiveUp);
    }

    #[test]
    fn a_follower_sends_us_to_the_leader_it_names() {
        let mut r = route(&["http://a", "http://b"]);
        assert_eq!(r.after(Found::Follower(Some("http://l".into()))), Step::Now);
        assert_eq!(r.url(), "http://l");
        // The leader moved on: follow again.
        assert_eq!(r.after(Found::Follower(Some("http://m".into()))), Step::Now);
        assert_eq!(r.url(), "http://m");
    }

    #[test]
    fn a_leader_that_fails_us_starts_a_new_round_after_a_pause() {
        let mut r = route(&["http://a", "http://b"]);
        r.after(down());
        r.after(Found::Follower(Some("http://l".into())));
        assert_eq!(r.after(down()), Step::AfterPause);
        assert_eq!(r.url(), "http://a");
        assert!(r.unreachable().is_empty(), "a new round forgets the last");
    }

    #[test]
    fn a_follower_without_a_leader_passes_on_then_the_round_starts_again() {
        let mut r = route(&["http://a", "http://b"]);
        assert_eq!(r.after(Found::Follower(None)), Step::Now);
        assert_eq!(r.url(), "http://b");
        // b unreachable, but a answered this round: not a give-up.
        assert_eq!(r.after(down()), Step::AfterPause);
        assert_eq!(r.url(), "http://a");
        // One address naming itself or no one: the same address again, after a pause.
        let mut one = route(&["http://a"]);
        assert_eq!(
            one.after(Found::Follower(Some("http://a".into()))),
            Step::AfterPause
        );
        assert_eq!(one.url(), "http://a");
    }
}
