//! Keeping a map of recently seen keys bounded: the failure throttle's
//! keys and the connection gate's sources both forget what is stale first,
//! then the least recently seen, a tenth at a time, so the cost of making
//! room is spread over many insertions instead of paid on each.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Makes room in `map` before an insertion: forgets every entry last seen
/// (`seen`) more than `window` before `now`, and if `max` or more remain,
/// the tenth seen least recently.
pub(crate) fn make_room<K: Eq + Hash, V>(
    map: &mut HashMap<K, V>,
    max: usize,
    now: Instant,
    window: Duration,
    seen: impl Fn(&V) -> Instant,
) {
    map.retain(|_, value| now.saturating_duration_since(seen(value)) <= window);
    if map.len() >= max {
        let mut times: Vec<Instant> = map.values().map(&seen).collect();
        let cut = times.len() / 10;
        let (_, cutoff, _) = times.select_nth_unstable(cut);
        let cutoff = *cutoff;
        map.retain(|_, value| seen(value) > cutoff);
    }
}
