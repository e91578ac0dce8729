//! Where signals sit in their channels' logs, remembered.
//!
//! Every report names its signal, and the session checks the signal's
//! channel (the device must have followed it) and records its position. A
//! signal's place never changes once it is published, so the log is asked
//! once per signal, not once per report: with a thousand devices reporting
//! each signal, that was a thousand Redis round trips (or sled reads) for
//! one answer. A place that expired from the log since is still the right
//! answer: the channel is the one the signal was published on, and
//! positions only ever move forward.
//!
//! Bounded in two generations: when the newer is full, the older is dropped
//! and the newer takes its place, so the signals reported lately stay and a
//! burst of new ones cannot grow the map without end.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use eagate_protocol::{ChannelName, SignalId};

use crate::signals::{SignalLog, SignalLogError};

/// A signal's channel and position in it.
pub type Place = (ChannelName, u64);

/// How many places a generation holds (a place is about 100 bytes).
pub const GENERATION: usize = 8_192;

/// The places of the signals reported on lately.
#[derive(Debug, Default)]
pub struct SignalPlaces {
    generations: Mutex<Generations>,
}

#[derive(Debug, Default)]
struct Generations {
    newer: HashMap<SignalId, Place>,
    older: HashMap<SignalId, Place>,
}

impl SignalPlaces {
    /// The place of `signal_id`, from memory or else from `log`; `None` for
    /// a signal the log does not hold (never published, or expired before
    /// any report here asked for it), which is not remembered: it is asked
    /// again next time.
    pub async fn locate(
        &self,
        log: &dyn SignalLog,
        signal_id: SignalId,
    ) -> Result<Option<Place>, SignalLogError> {
        if let Some(place) = self.known(signal_id) {
            return Ok(Some(place));
        }
        let place = log.locate(signal_id).await?;
        if let Some(place) = &place {
            self.remember(signal_id, place.clone());
        }
        Ok(place)
    }

    fn remember(&self, signal_id: SignalId, place: Place) {
        let mut generations = self.lock();
        if generations.newer.len() >= GENERATION {
            generations.older = std::mem::take(&mut generations.newer);
        }
        generations.newer.insert(signal_id, place);
    }

    fn known(&self, signal_id: SignalId) -> Option<Place> {
        let mut generations = self.lock();
        if let Some(place) = generations.newer.get(&signal_id) {
            return Some(place.clone());
        }
        // Still asked for: keep it past the older generation's end.
        let place = generations.older.remove(&signal_id)?;
        drop(generations);
        self.remember(signal_id, place.clone());
        Some(place)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Generations> {
        // The maps are whole between any two statements: a panic elsewhere
        // leaves nothing half-changed.
        self.generations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> SignalId {
        let mut bytes = [0; 16];
        bytes[..8].copy_from_slice(&n.to_be_bytes());
        SignalId(bytes)
    }

    fn place(n: u64) -> Place {
        (ChannelName::new("gold").unwrap(), n)
    }

    #[test]
    fn a_place_asked_for_lately_outlives_two_generations_of_others() {
        let places = SignalPlaces::default();
        places.remember(id(0), place(0));
        for n in 1..=GENERATION as u64 * 3 {
            places.remember(id(n), place(n));
            if n % 1_000 == 0 {
                assert_eq!(places.known(id(0)), Some(place(0)), "after {n}");
            }
        }
        assert_eq!(places.known(id(0)), Some(place(0)));
    }

    #[test]
    fn memory_stays_within_two_generations() {
        let places = SignalPlaces::default();
        for n in 0..GENERATION as u64 * 5 + 7 {
            places.remember(id(n), place(n));
        }
        let generations = places.lock();
        assert!(generations.newer.len() <= GENERATION);
        assert!(generations.older.len() <= GENERATION);
        drop(generations);
        // The oldest are forgotten, the newest kept.
        assert_eq!(places.known(id(0)), None);
        assert_eq!(
            places.known(id(GENERATION as u64 * 5 + 6)),
            Some(place(GENERATION as u64 * 5 + 6))
        );
    }
}
