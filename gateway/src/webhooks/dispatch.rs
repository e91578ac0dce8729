//! Delivering events: each endpoint takes the next event it wants after its
//! cursor in the journal (or a replay an admin asked for), POSTs it signed,
//! and records the attempt with its new state in one durable write. A
//! failure is retried after [`backoff_ms`](super::backoff_ms) until the
//! event's retry window ([`Pacing`]) is over.

use std::sync::Arc;
use std::time::Duration;

use eagate_affiliates::Ledger;

use super::events::{WebhookEvent, event_of};
use super::store::{Delivery, DeliveryState, Endpoint, Retrying, WebhookError, Webhooks};
use super::{RETRY_WINDOW_MS, backoff_ms, check_target, signature};
use crate::seal::MasterKey;

/// Journal entries read per look for an endpoint's next event.
const SCAN: usize = 256;

/// How often the dispatcher looks for work.
const TICK: Duration = Duration::from_millis(500);

/// How deliveries are paced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pacing {
    /// How long one POST may take, connecting included (default 10 s).
    pub timeout: Duration,
    /// The wait before the first retry, doubled for each next one up to
    /// an hour (default 10 s).
    pub retry_base_ms: u64,
    /// How long after its first attempt an event is retried before it is
    /// given up on (default 3 days).
    pub retry_window_ms: u64,
}

impl Default for Pacing {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            retry_base_ms: 10_000,
            retry_window_ms: RETRY_WINDOW_MS,
        }
    }
}

/// The sidecar's deliverer of webhook events.
#[derive(Clone)]
pub struct Dispatcher {
    /// The endpoints and their log.
    pub webhooks: Webhooks,
    ledger: Arc<Ledger>,
    key: MasterKey,
    clock: crate::clock::Clock,
    agent: ureq::Agent,
    pacing: Pacing,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher").finish_non_exhaustive()
    }
}

/// What one round did for one endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryRun {
    /// Nothing was due.
    Idle,
    /// An attempt was made and recorded.
    Attempted(Delivery),
}

impl Dispatcher {
    /// A dispatcher of `ledger`'s events to `webhooks`' endpoints.
    pub fn new(
        webhooks: Webhooks,
        ledger: Arc<Ledger>,
        key: MasterKey,
        clock: crate::clock::Clock,
        pacing: Pacing,
    ) -> Self {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(pacing.timeout))
            .http_status_as_error(false)
            .max_redirects(0)
            // No proxy from the environment: a proxy would resolve and
            // reach addresses the target check refused.
            .proxy(None)
            .build()
            .new_agent();
        Self {
            webhooks,
            ledger,
            key,
            clock,
            agent,
            pacing,
        }
    }

    /// The journal's last position: a new endpoint starts after it.
    pub fn head(&self) -> Result<u64, WebhookError> {
        self.ledger
            .durable_seq()
            .map_err(|e| WebhookError::Damaged(e.to_string()))
    }

    /// The ledger events come from.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Runs one round: every endpoint makes at most one attempt, all at
    /// once.
    pub async fn run_once(&self) -> Result<Vec<DeliveryRun>, WebhookError> {
        let endpoints = self.webhooks.endpoints()?;
        let rounds = endpoints.into_iter().map(|endpoint| {
            let this = self.clone();
            async move { this.step(endpoint).await }
        });
        futures_util::future::join_all(rounds)
            .await
            .into_iter()
            .collect()
    }

    /// Delivers until the process stops: round after round while events
    /// are being delivered, a tick apart when there is nothing to do.
    pub async fn follow(self) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut warned = false;
        loop {
            match self.run_once().await {
                Ok(runs) => {
                    warned = false;
                    let delivered = runs.iter().any(|run| {
                        matches!(run, DeliveryRun::Attempted(d) if d.state == DeliveryState::Delivered)
                    });
                    if delivered {
                        tokio::task::yield_now().await;
                        continue;
                    }
                }
                // Once per outage, not every tick.
                Err(e) if !warned => {
                    warned = true;
                    tracing::warn!(error = %e, "delivering webhooks failed; retrying");
                }
                Err(_) => {}
            }
            tick.tick().await;
        }
    }

    /// One endpoint's next step.
    async fn step(&self, mut endpoint: Endpoint) -> Result<DeliveryRun, WebhookError> {
        let now = (self.clock)();
        let (seq, replay, attempts, first_at) = match endpoint.retrying {
            Some(retrying) if retrying.next_at_ms > now => return Ok(DeliveryRun::Idle),
            Some(retrying) => (
                retrying.seq,
                retrying.replay,
                retrying.attempts,
                retrying.first_at_ms,
            ),
            None => match endpoint.replays.first() {
                Some(&seq) => (seq, true, 0, now),
                None => match self.next_event(&mut endpoint)? {
                    Some(seq) => (seq, false, 0, now),
                    None => return Ok(DeliveryRun::Idle),
                },
            },
        };
        let Some(event) = self.event_at(seq)? else {
            // Not an event (only a damaged journal gets here): recorded
            // as failed, and the endpoint moves on.
            let delivery = Delivery {
                endpoint_id: endpoint.endpoint_id.clone(),
                event_id: super::event_id(seq),
                kind: String::new(),
                attempt: attempts.saturating_add(1),
                replay,
                at_ms: now,
                status: None,
                error: Some("the journal has no such event".into()),
                state: DeliveryState::Failed,
            };
            self.record(&endpoint, seq, replay, None, &delivery).await?;
            return Ok(DeliveryRun::Attempted(delivery));
        };
        let body = serde_json::to_vec(&event).expect("an event serializes");
        let secret = self.webhooks.secret(&self.key, &endpoint)?;
        let sent_at = now / 1_000;
        let header = signature(&secret[..], sent_at, &body);
        let (url, allow_private, agent) = (
            endpoint.url.clone(),
            self.webhooks.allow_private,
            self.agent.clone(),
        );
        let (event_id, kind) = (event.id.clone(), event.kind);
        let answer = tokio::task::spawn_blocking(move || {
            // Checked at each attempt: a name may resolve elsewhere now.
            check_target(&url, allow_private).map_err(|e| e.to_string())?;
            agent
                .post(&url)
                .header("content-type", "application/json")
                .header("eagate-signature", &header)
                .header("eagate-event-id", &event_id)
                .header("eagate-event-type", kind)
                .header("user-agent", "eagate-webhooks/1")
                .send(&body[..])
                .map(|response| response.status().as_u16())
                .map_err(|e| e.to_string())
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        let attempt = attempts.saturating_add(1);
        // The wait runs from the attempt's end: a timeout as long as the
        // wait must not make the retry due at once.
        let ended = (self.clock)();
        let (status, error) = match answer {
            Ok(status) if (200..300).contains(&status) => (Some(status), None),
            Ok(status) => (Some(status), Some(format!("answered {status}"))),
            Err(error) => (None, Some(error)),
        };
        let state = if error.is_none() {
            DeliveryState::Delivered
        } else if ended.saturating_sub(first_at) >= self.pacing.retry_window_ms {
            DeliveryState::Failed
        } else {
            DeliveryState::Retrying
        };
        let retrying = (state == DeliveryState::Retrying).then(|| Retrying {
            seq,
            replay,
            attempts: attempt,
            first_at_ms: first_at,
            next_at_ms: ended.saturating_add(backoff_ms(self.pacing.retry_base_ms, attempt)),
        });
        let delivery = Delivery {
            endpoint_id: endpoint.endpoint_id.clone(),
            event_id: event.id,
            kind: event.kind.to_owned(),
            attempt,
            replay,
            at_ms: now,
            status,
            error,
            state,
        };
        if state == DeliveryState::Failed {
            tracing::warn!(endpoint = %endpoint.endpoint_id, event = %delivery.event_id, attempts = attempt, "a webhook event was given up on after its retry window");
        }
        if !self
            .record(&endpoint, seq, replay, retrying, &delivery)
            .await?
        {
            // Removed while the attempt was under way.
            return Ok(DeliveryRun::Idle);
        }
        Ok(DeliveryRun::Attempted(delivery))
    }

    /// Records an attempt with what it changes in its endpoint, on a
    /// blocking thread (it fsyncs). False if the endpoint is gone.
    async fn record(
        &self,
        endpoint: &Endpoint,
        seq: u64,
        replay: bool,
        retrying: Option<Retrying>,
        delivery: &Delivery,
    ) -> Result<bool, WebhookError> {
        let done = delivery.state != DeliveryState::Retrying;
        // Entries it does not want, skipped on the way to this one.
        let skipped_to = endpoint.cursor;
        let (webhooks, endpoint_id, delivery) = (
            self.webhooks.clone(),
            endpoint.endpoint_id.clone(),
            delivery.clone(),
        );
        tokio::task::spawn_blocking(move || {
            webhooks.record(
                &endpoint_id,
                |stored| {
                    stored.retrying = retrying;
                    stored.cursor = stored.cursor.max(skipped_to);
                    if done && replay {
                        if let Some(at) = stored.replays.iter().position(|s| *s == seq) {
                            stored.replays.remove(at);
                        }
                    } else if done {
                        stored.cursor = stored.cursor.max(seq);
                    }
                },
                &delivery,
            )
        })
        .await
        .map_err(|e| WebhookError::Damaged(e.to_string()))?
    }

    /// The next event after the endpoint's cursor that it wants; moves the
    /// cursor past entries it does not want (kept with the next record).
    fn next_event(&self, endpoint: &mut Endpoint) -> Result<Option<u64>, WebhookError> {
        loop {
            let entries = self
                .ledger
                .durable_after(endpoint.cursor, SCAN)
                .map_err(|e| WebhookError::Damaged(e.to_string()))?;
            let Some(last) = entries.last().map(|e| e.seq) else {
                return Ok(None);
            };
            if let Some(entry) = entries
                .iter()
                .find(|e| event_of(&e.fact).is_some_and(|kind| endpoint.wants(kind)))
            {
                // Entries before it are not wanted: skip them for good.
                endpoint.cursor = entry.seq - 1;
                return Ok(Some(entry.seq));
            }
            endpoint.cursor = last;
            if entries.len() < SCAN {
                let cursor = endpoint.cursor;
                self.webhooks.update(&endpoint.endpoint_id, |e| {
                    e.cursor = e.cursor.max(cursor);
                })?;
                return Ok(None);
            }
        }
    }

    /// The event at journal position `seq`, if that entry is one.
    fn event_at(&self, seq: u64) -> Result<Option<WebhookEvent>, WebhookError> {
        let entries = self
            .ledger
            .durable_after(seq.saturating_sub(1), 1)
            .map_err(|e| WebhookError::Damaged(e.to_string()))?;
        Ok(entries
            .first()
            .filter(|e| e.seq == seq)
            .and_then(WebhookEvent::of))
    }

    /// The events `endpoint` wants made at or after `since_ms` (Unix ms),
    /// in journal order, at most `most` (None past that).
    pub fn events_since(
        &self,
        endpoint: &Endpoint,
        since_ms: u64,
        most: usize,
    ) -> Result<Option<Vec<u64>>, WebhookError> {
        let mut found = Vec::new();
        let mut after = 0;
        loop {
            let entries = self
                .ledger
                .durable_after(after, SCAN)
                .map_err(|e| WebhookError::Damaged(e.to_string()))?;
            for entry in &entries {
                if entry.fact.at_ms() >= since_ms
                    && event_of(&entry.fact).is_some_and(|kind| endpoint.wants(kind))
                {
                    if found.len() == most {
                        return Ok(None);
                    }
                    found.push(entry.seq);
                }
            }
            match entries.last() {
                Some(last) if entries.len() == SCAN => after = last.seq,
                _ => return Ok(Some(found)),
            }
        }
    }

    /// The event with id `event_id`, if the journal has it and `endpoint`
    /// wants its kind.
    pub fn wanted_event(
        &self,
        endpoint: &Endpoint,
        event_id: &str,
    ) -> Result<Option<u64>, WebhookError> {
        let Some(seq) = super::events::event_seq(event_id) else {
            return Ok(None);
        };
        Ok(self
            .event_at(seq)?
            .filter(|event| {
                super::EventKind::parse(event.kind).is_some_and(|kind| endpoint.wants(kind))
            })
            .map(|event| event.seq))
    }
}
