//! The webhooks' own sled database (`<data-dir>/webhooks`): endpoints with
//! their sealed secrets, where each stands in the journal, the event it is
//! retrying, replays asked for, and the delivery log.

use std::path::Path;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::EventKind;
use crate::seal::{MasterKey, SealError};

/// The database's directory inside the data directory.
pub const WEBHOOKS_DIR: &str = "webhooks";

/// Most endpoints a deployment may have.
pub const MAX_ENDPOINTS: usize = 32;

/// Why a webhook operation failed.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The database failed.
    #[error("the webhook store failed: {0}")]
    Store(#[from] sled::Error),
    /// A record could not be read back.
    #[error("a webhook record is damaged: {0}")]
    Damaged(String),
    /// A secret could not be sealed or opened.
    #[error("a webhook secret could not be sealed or opened: {0}")]
    Seal(#[from] SealError),
    /// No endpoint has that id.
    #[error("no webhook endpoint {0}")]
    UnknownEndpoint(String),
    /// There are [`MAX_ENDPOINTS`] already.
    #[error("at most {MAX_ENDPOINTS} webhook endpoints")]
    TooMany,
}

/// An endpoint as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// `wh_` and 16 hex digits.
    pub endpoint_id: String,
    /// Where events are POSTed.
    pub url: String,
    /// The kinds it receives (`commission.created`, …).
    pub kinds: Vec<String>,
    /// When it was added, Unix ms.
    pub created_at_ms: u64,
    /// The journal position up to which it has had (or given up on) every
    /// event: the next is after it.
    pub cursor: u64,
    /// The event it is retrying, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retrying: Option<Retrying>,
    /// Events an admin asked to send again, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replays: Vec<u64>,
    /// Its secret, sealed under the master key for this endpoint.
    sealed_secret: Vec<u8>,
}

impl Endpoint {
    /// Whether it receives `kind`.
    pub fn wants(&self, kind: EventKind) -> bool {
        self.kinds.iter().any(|k| k == kind.as_str())
    }
}

/// An event being retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retrying {
    /// The event's journal position.
    pub seq: u64,
    /// Whether it is a replay (the cursor does not move when it ends).
    pub replay: bool,
    /// Attempts so far.
    pub attempts: u32,
    /// When the first was made, Unix ms.
    pub first_at_ms: u64,
    /// When the next is due, Unix ms.
    pub next_at_ms: u64,
}

/// How a delivery attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Answered 2xx: done.
    Delivered,
    /// Failed; it will be retried.
    Retrying,
    /// Failed, and its retry window is over: given up.
    Failed,
}

/// One attempt in the delivery log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Delivery {
    /// The endpoint.
    pub endpoint_id: String,
    /// The event's id.
    pub event_id: String,
    /// Its kind (`commission.created`).
    #[serde(rename = "type")]
    pub kind: String,
    /// Which attempt (1 for the first).
    pub attempt: u32,
    /// Whether an admin asked for it again.
    pub replay: bool,
    /// When it was made, Unix ms.
    pub at_ms: u64,
    /// The HTTP status answered, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// What went wrong, if anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// How it ended: `delivered`, `retrying`, or `failed` (given up after
    /// the retry window).
    pub state: DeliveryState,
}

/// The webhook store.
#[derive(Debug, Clone)]
pub struct Webhooks {
    db: sled::Db,
    endpoints: sled::Tree,
    /// Key: endpoint id, 0, a log number (big-endian u64).
    deliveries: sled::Tree,
    /// Whether targets on loopback and private networks are allowed.
    pub allow_private: bool,
}

impl Webhooks {
    /// Opens (or creates) the store in `data_dir`.
    pub fn open(data_dir: &Path, allow_private: bool) -> Result<Self, WebhookError> {
        let db = sled::Config::new()
            .path(data_dir.join(WEBHOOKS_DIR))
            .open()?;
        Ok(Self {
            endpoints: db.open_tree("endpoints")?,
            deliveries: db.open_tree("deliveries")?,
            db,
            allow_private,
        })
    }

    /// Adds an endpoint receiving `kinds` from after journal position
    /// `head` on; returns it and its secret (`whsec_` and 64 hex digits),
    /// which is shown this once.
    pub fn add(
        &self,
        key: &MasterKey,
        url: &str,
        kinds: &[EventKind],
        head: u64,
        now_ms: u64,
    ) -> Result<(Endpoint, Zeroizing<String>), WebhookError> {
        if self.endpoints.len() >= MAX_ENDPOINTS {
            return Err(WebhookError::TooMany);
        }
        let mut id = [0u8; 8];
        let mut secret = Zeroizing::new([0u8; 32]);
        getrandom::fill(&mut id).map_err(|_| SealError::BadKey)?;
        getrandom::fill(&mut secret[..]).map_err(|_| SealError::BadKey)?;
        let endpoint_id = format!("wh_{}", super::hex(&id));
        let endpoint = Endpoint {
            sealed_secret: key.seal_for(&label(&endpoint_id), &secret)?,
            endpoint_id,
            url: url.to_owned(),
            kinds: kinds.iter().map(|k| k.as_str().to_owned()).collect(),
            created_at_ms: now_ms,
            cursor: head,
            retrying: None,
            replays: Vec::new(),
        };
        self.put(&endpoint)?;
        self.db.flush()?;
        let shown = Zeroizing::new(format!("whsec_{}", super::hex(&secret[..])));
        Ok((endpoint, shown))
    }

    /// The secret an endpoint signs with (the bytes after `whsec_`).
    pub fn secret(
        &self,
        key: &MasterKey,
        endpoint: &Endpoint,
    ) -> Result<Zeroizing<[u8; 32]>, WebhookError> {
        Ok(key.unseal_for(&label(&endpoint.endpoint_id), &endpoint.sealed_secret)?)
    }

    /// Every endpoint, by id.
    pub fn endpoints(&self) -> Result<Vec<Endpoint>, WebhookError> {
        self.endpoints
            .iter()
            .values()
            .map(|value| decode(&value?))
            .collect()
    }

    /// One endpoint.
    pub fn endpoint(&self, endpoint_id: &str) -> Result<Endpoint, WebhookError> {
        let value = self
            .endpoints
            .get(endpoint_id)?
            .ok_or_else(|| WebhookError::UnknownEndpoint(endpoint_id.to_owned()))?;
        decode(&value)
    }

    /// Removes an endpoint (its log stays).
    pub fn remove(&self, endpoint_id: &str) -> Result<(), WebhookError> {
        self.endpoints
            .remove(endpoint_id)?
            .ok_or_else(|| WebhookError::UnknownEndpoint(endpoint_id.to_owned()))?;
        self.db.flush()?;
        Ok(())
    }

    /// Changes an endpoint with `change` (replays, a cursor moved back);
    /// durable when it returns.
    pub fn update(
        &self,
        endpoint_id: &str,
        change: impl Fn(&mut Endpoint),
    ) -> Result<Endpoint, WebhookError> {
        let mut changed = None;
        self.endpoints.fetch_and_update(endpoint_id, |old| {
            // Each try starts afresh (a compare-and-swap may retry).
            changed = None;
            let old = old?;
            let Ok(mut endpoint) = serde_json::from_slice::<Endpoint>(old) else {
                // Damaged: left as it is, never deleted by an update.
                return Some(old.to_vec());
            };
            change(&mut endpoint);
            let value = serde_json::to_vec(&endpoint).expect("an endpoint serializes");
            changed = Some(endpoint);
            Some(value)
        })?;
        let endpoint =
            changed.ok_or_else(|| WebhookError::UnknownEndpoint(endpoint_id.to_owned()))?;
        self.db.flush()?;
        Ok(endpoint)
    }

    /// Records an attempt and what it changed in its endpoint together
    /// (`change` is applied to the endpoint as stored now, so a replay an
    /// admin asked for meanwhile is kept), and makes both durable: an event
    /// is never recorded delivered twice, nor its cursor moved without its
    /// log line. Refused (false) if the endpoint was removed meanwhile.
    pub fn record(
        &self,
        endpoint_id: &str,
        change: impl Fn(&mut Endpoint),
        delivery: &Delivery,
    ) -> Result<bool, WebhookError> {
        use sled::Transactional;
        use sled::transaction::ConflictableTransactionError;
        // Log positions start at 1: 0 is "from the start" when paging.
        let log_id = self.db.generate_id()? + 1;
        let mut log_key = endpoint_id.as_bytes().to_vec();
        log_key.push(0);
        log_key.extend_from_slice(&log_id.to_be_bytes());
        let delivery_value = serde_json::to_vec(delivery).expect("a delivery serializes");
        let recorded = (&self.endpoints, &self.deliveries).transaction(|(endpoints, log)| {
            let Some(stored) = endpoints.get(endpoint_id.as_bytes())? else {
                return Ok(false);
            };
            let mut endpoint: Endpoint =
                decode(&stored).map_err(|e| ConflictableTransactionError::Abort(e.to_string()))?;
            change(&mut endpoint);
            let value = serde_json::to_vec(&endpoint).expect("an endpoint serializes");
            endpoints.insert(endpoint_id.as_bytes(), value)?;
            log.insert(log_key.as_slice(), delivery_value.as_slice())?;
            Ok(true)
        });
        let recorded = recorded.map_err(|e| match e {
            sled::transaction::TransactionError::Storage(e) => WebhookError::Store(e),
            sled::transaction::TransactionError::Abort(why) => WebhookError::Damaged(why),
        })?;
        self.db.flush()?;
        Ok(recorded)
    }

    /// An endpoint's delivery log, oldest first, after log position
    /// `after` (0 for the start); with each line's position.
    pub fn deliveries(
        &self,
        endpoint_id: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Delivery)>, WebhookError> {
        let mut from = endpoint_id.as_bytes().to_vec();
        from.push(0);
        let prefix = from.clone();
        from.extend_from_slice(&after.saturating_add(1).to_be_bytes());
        self.deliveries
            .range(from..)
            .take_while(|item| {
                item.as_ref()
                    .map_or(true, |(key, _)| key.starts_with(&prefix))
            })
            .take(limit)
            .map(|item| {
                let (key, value) = item?;
                let position = key[prefix.len()..]
                    .try_into()
                    .map(u64::from_be_bytes)
                    .map_err(|_| WebhookError::Damaged("a delivery key".into()))?;
                Ok((position, decode(&value)?))
            })
            .collect()
    }

    fn put(&self, endpoint: &Endpoint) -> Result<(), WebhookError> {
        let value = serde_json::to_vec(endpoint).expect("an endpoint serializes");
        self.endpoints
            .insert(endpoint.endpoint_id.as_bytes(), value)?;
        Ok(())
    }
}

/// What an endpoint's sealed secret is bound to: it opens for this endpoint
/// only.
fn label(endpoint_id: &str) -> String {
    format!("webhook secret:{endpoint_id}")
}

fn decode<T: serde::de::DeserializeOwned>(value: &[u8]) -> Result<T, WebhookError> {
    serde_json::from_slice(value).map_err(|e| WebhookError::Damaged(e.to_string()))
}
