//! Refusals, counted per caller, so that what the log holds of them is bounded
//! whatever a caller sends.
//!
//! Each [`INTERVAL`], the first [`PER_CALLER`] refusals of each caller (a uid)
//! are recorded one by one, and at most [`ALL_CALLERS`] of everyone's together;
//! the rest are counted, and at the interval's end each caller that had some
//! counted gets one `request.refusals` record: how many, by kind, and a sample
//! of the secrets they named. Every allowed read, and everything the owner is
//! refused, is still recorded one by one.

use super::{Actor, Event, Kind, Outcome, Record};
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often the counted refusals are recorded.
pub const INTERVAL: Duration = Duration::from_secs(10);
/// Refusals of one caller recorded one by one per interval.
const PER_CALLER: u32 = 16;
/// ... and of all callers together: a budget no number of uids can exceed.
const ALL_CALLERS: u32 = 256;
/// Secrets named in a summary, at most.
const SAMPLE: usize = 8;
/// Callers counted apart, at most; past it the rest share one tally.
const MAX_CALLERS: usize = 1024;

/// What a record says about a refusal: its kind, who was refused, and the secret
/// it named (`env`, `name`).
pub struct Refused<'a> {
    pub kind: Kind,
    pub actor: &'a Actor,
    pub secret: Option<(&'a str, &'a str)>,
}

/// The refusals of one interval.
pub struct Refusals {
    owner: u32,
    state: Mutex<State>,
}

/// Whose refusals a tally counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Caller {
    Uid(u32),
    /// No credentials from the kernel.
    Nobody,
    /// Past [`MAX_CALLERS`], everyone else.
    Others,
}

struct State {
    since: Instant,
    /// Recorded one by one this interval, all callers together.
    recorded: u32,
    callers: HashMap<Caller, Tally>,
}

/// One caller's refusals this interval.
struct Tally {
    /// As the summary names it: socket, uid and gid (a pid would name one
    /// process of many).
    actor: Actor,
    recorded: u32,
    counted: u64,
    kinds: BTreeMap<Kind, u64>,
    sample: Vec<String>,
}

impl State {
    fn new() -> State {
        State { since: Instant::now(), recorded: 0, callers: HashMap::new() }
    }

    /// Whether `refused` is recorded one by one; if not, it is counted.
    fn admit(&mut self, refused: &Refused<'_>) -> bool {
        let mut caller = refused.actor.uid.map_or(Caller::Nobody, Caller::Uid);
        if self.callers.len() >= MAX_CALLERS && !self.callers.contains_key(&caller) {
            caller = Caller::Others;
        }
        let tally = self.callers.entry(caller).or_insert_with(|| Tally {
            actor: match caller {
                Caller::Others => Actor { socket: refused.actor.socket, ..Actor::default() },
                _ => Actor {
                    socket: refused.actor.socket,
                    uid: refused.actor.uid,
                    gid: refused.actor.gid,
                    ..Actor::default()
                },
            },
            recorded: 0,
            counted: 0,
            kinds: BTreeMap::new(),
            sample: Vec::new(),
        });
        if tally.recorded < PER_CALLER && self.recorded < ALL_CALLERS {
            tally.recorded += 1;
            self.recorded += 1;
            return true;
        }
        tally.counted += 1;
        *tally.kinds.entry(refused.kind).or_default() += 1;
        if let Some((env, name)) = refused.secret
            && tally.sample.len() < SAMPLE
        {
            let secret = format!("{env}/{name}");
            if !tally.sample.contains(&secret) {
                tally.sample.push(secret);
            }
        }
        false
    }
}

impl Refusals {
    /// For a vault whose owner is `owner` (never counted: it is refused only its
    /// own mistakes).
    pub fn new(owner: u32) -> Refusals {
        Refusals { owner, state: Mutex::new(State::new()) }
    }

    /// The records to write now: all but the refusals past their caller's budget,
    /// which are counted instead.
    pub fn sift<R: Record>(&self, mut records: Vec<R>) -> Vec<R> {
        if !records.iter().any(|r| r.refused().is_some()) {
            return records;
        }
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        records.retain(|record| match record.refused() {
            Some(refused) if refused.actor.uid != Some(self.owner) => state.admit(&refused),
            _ => true,
        });
        records
    }

    /// Ends the interval: a record for each caller that had refusals counted.
    pub fn summaries(&self) -> Vec<Event> {
        let ended = std::mem::replace(&mut *self.state.lock().unwrap_or_else(|p| p.into_inner()), State::new());
        let seconds = ended.since.elapsed().as_secs();
        let mut tallies: Vec<Tally> = ended.callers.into_values().filter(|t| t.counted > 0).collect();
        tallies.sort_by_key(|t| t.actor.uid);
        tallies
            .into_iter()
            .map(|t| {
                Event::new(Kind::RequestRefusals, Outcome::Denied, &t.actor)
                    .with("count", t.counted)
                    .with(
                        "kinds",
                        serde_json::Map::from_iter(t.kinds.into_iter().map(|(k, n)| (k.as_str().to_owned(), n.into()))),
                    )
                    .with("sample", t.sample)
                    .with("seconds", seconds)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::audit::{Read, ReadDetail};

    fn agent(uid: u32) -> Actor {
        Actor { socket: Some("agent"), uid: Some(uid), gid: Some(uid), pid: Some(42), ..Actor::default() }
    }

    fn denied<'a>(actor: &'a Actor, name: &'a str) -> Read<'a> {
        let detail = ReadDetail::Reason("not granted".into());
        Read { kind: Kind::SecretRead, outcome: Outcome::Denied, actor, client: None, env: "prod", name, detail }
    }

    #[test]
    fn past_its_budget_a_callers_refusals_are_counted_then_summed_up() {
        let refusals = Refusals::new(0);
        let (greedy, polite, owner) = (agent(7), agent(8), agent(0));
        let names: Vec<String> = (0..100).map(|i| format!("n{i}")).collect();
        let kept = refusals.sift(names.iter().map(|n| denied(&greedy, n)).collect());
        assert_eq!(kept.len(), PER_CALLER as usize);
        let allowed = Read { outcome: Outcome::Ok, detail: ReadDetail::Version(1), ..denied(&greedy, "mine") };
        assert_eq!(refusals.sift(vec![allowed]).len(), 1, "an allowed read is always recorded");
        assert_eq!(refusals.sift(vec![denied(&polite, "x")]).len(), 1, "another caller has its own budget");
        let limited = Event::new(Kind::RequestRateLimited, Outcome::Denied, &greedy);
        assert!(refusals.sift(vec![limited]).is_empty());
        assert_eq!(
            refusals.sift((0..100).map(|_| denied(&owner, "x")).collect()).len(),
            100,
            "the owner is never counted"
        );

        let summaries = refusals.summaries();
        assert_eq!(summaries.len(), 1, "{summaries:?}");
        let s = &summaries[0];
        assert_eq!(
            (s.kind, s.outcome, s.actor.uid, s.actor.pid),
            (Kind::RequestRefusals, Outcome::Denied, Some(7), None)
        );
        assert_eq!(s.detail["count"], 100 - PER_CALLER as u64 + 1);
        assert_eq!(s.detail["kinds"], serde_json::json!({"request.rate_limited": 1, "secret.read": 84}));
        let sample: Vec<String> = (16..16 + SAMPLE).map(|i| format!("prod/n{i}")).collect();
        assert_eq!(s.detail["sample"], serde_json::json!(sample));
        assert!(refusals.summaries().is_empty(), "a new interval starts empty");
        assert_eq!(refusals.sift(vec![denied(&greedy, "again")]).len(), 1, "with a new budget");
        assert!(
            refusals.sift(vec![Event::new(Kind::RequestRefusals, Outcome::Denied, &greedy)]).len() == 1,
            "never a summary"
        );
    }

    #[test]
    fn all_callers_together_have_a_budget_and_a_bounded_number_of_tallies() {
        let refusals = Refusals::new(0);
        let actors: Vec<Actor> = (1..=2000).map(agent).collect();
        let recorded: usize = actors.iter().map(|a| refusals.sift(vec![denied(a, "x"), denied(a, "y")]).len()).sum();
        assert_eq!(recorded, ALL_CALLERS as usize);
        let summaries = refusals.summaries();
        assert_eq!(
            summaries.len(),
            MAX_CALLERS + 1 - (ALL_CALLERS as usize / 2),
            "one for each caller counted, and the rest together"
        );
        let total: u64 = summaries.iter().map(|s| s.detail["count"].as_u64().unwrap()).sum();
        assert_eq!(total, 4000 - ALL_CALLERS as u64);
        assert!(summaries.iter().any(|s| s.actor.uid.is_none()), "the rest, together");
    }
}
