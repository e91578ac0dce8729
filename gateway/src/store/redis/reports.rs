//! Execution reports in Redis: per device a hash of reports by sequence
//! number (the exactly-once record), the confirmed watermark, a stream of
//! stored reports and the newest session epoch; per signal a set indexing
//! its reports; the fill feed the affiliate programme reads.

use std::sync::LazyLock;

use redis::{AsyncCommands, Script};

use eagate_protocol::SignalId;

use super::RedisStores;
use super::batches::{ReportCommands, ScriptAnswer};
use crate::reports::{
    FeedFill, Ingested, MAX_REPORT_GAP, ReportKind, ReportStore, ReportStoreError, SessionEpoch,
    StoreFuture, StoredReport, Written,
};

/// Hashed once; invoked by EVALSHA, loaded on a NOSCRIPT answer.
pub(super) static INGEST_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/ingest_reports.lua")));
static BEGIN_SESSION_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/begin_session.lua")));

/// How many names and values [`push_stream_fields`] appends.
fn stream_field_count(report: &StoredReport) -> usize {
    let optional = [
        report.ticket.is_some(),
        report.price.is_some(),
        report.volume.is_some(),
        report.error_code.is_some(),
        report.error_text.is_some(),
    ];
    2 * (6 + optional.into_iter().filter(|&present| present).count())
}

/// Appends the report's executions stream entry, name then value, to
/// `cmd`: straight into the command, no string of its own per field (this
/// runs once per report).
fn push_stream_fields(cmd: &mut redis::Cmd, report: &StoredReport) {
    cmd.arg("device_id")
        .arg(&report.device_id)
        .arg("seq")
        .arg(report.seq)
        .arg("signal_id")
        .arg(report.signal_id.to_string())
        .arg("kind")
        .arg(match report.kind {
            ReportKind::Received => "received",
            ReportKind::Filled => "filled",
            ReportKind::Rejected => "rejected",
            ReportKind::Reversed => "reversed",
        })
        .arg("at_ms")
        .arg(report.at_ms)
        .arg("stored_at_ms")
        .arg(report.stored_at_ms);
    if let Some(ticket) = report.ticket {
        cmd.arg("ticket").arg(ticket);
    }
    if let Some(price) = &report.price {
        cmd.arg("price").arg(price.to_string());
    }
    if let Some(volume) = &report.volume {
        cmd.arg("volume").arg(volume.to_string());
    }
    if let Some(code) = report.error_code {
        cmd.arg("error_code").arg(code);
    }
    if let Some(text) = &report.error_text {
        cmd.arg("error_text").arg(text);
    }
}

impl RedisStores {
    /// The number each of `devices` holds under `what` (0 where none), in
    /// one round trip: GETs in a pipeline, not one MGET, since the keys are
    /// in as many slots as devices.
    async fn numbers_of_each(
        &self,
        devices: &[&str],
        what: &str,
    ) -> Result<Vec<u64>, ReportStoreError> {
        let reads = devices.iter().map(|device_id| {
            let mut read = redis::cmd("GET");
            read.arg(self.device_key(device_id, what));
            read
        });
        let reads: Vec<redis::Cmd> = reads.collect();
        let numbers = self.connection.send_by_slot(&reads).await?;
        numbers
            .iter()
            .map(|number| Ok(redis::from_redis_value::<Option<u64>>(number)?.unwrap_or(0)))
            .collect()
    }

    /// The commands that write `reports`, a run of one device's, in this
    /// order (sent with other sessions' in one pipeline, see `batches`):
    /// - the fill feed's entries first, on every attempt: once the script
    ///   has run, the watermark may confirm a fill to the device, which then
    ///   never resends it; a feed entry written after it could be lost to a
    ///   crash. A duplicate entry is harmless (the reader is idempotent),
    ///   and so is the entry of a fill the script then refuses or does not
    ///   reach: it is a real trade of the device's account, which the device
    ///   stores later, under this number or one of its own;
    /// - the script, which stores the run or says where and why it stopped;
    /// - the signals' index entries (outside the script: their keys are in
    ///   other slots), on every attempt, whatever the script decided; an
    ///   entry whose number holds another signal's report, or none, is
    ///   skipped by `for_signal`. One Redis runs the pipeline whole, in
    ///   order; a cluster takes the entries first and the scripts after
    ///   (see `batches::query_cluster`), so no confirmed report lacks its
    ///   index entry.
    fn run_commands(
        &self,
        reports: &[StoredReport],
        epoch: Option<SessionEpoch>,
    ) -> ReportCommands {
        let device_id = reports.first().map_or("", |r| r.device_id.as_str());
        // One buffer for the device's four keys: the command copies each.
        let mut key = self.device_key(device_id, "");
        let base = key.len();
        let mut script =
            redis::Cmd::with_capacity(8 + 20 * reports.len(), 256 + 640 * reports.len());
        script.arg("EVALSHA").arg(INGEST_SCRIPT.get_hash()).arg(4);
        for what in ["reports", "watermark", "executions", "session"] {
            key.truncate(base);
            key.push_str(what);
            script.arg(&key);
        }
        script
            .arg(MAX_REPORT_GAP)
            .arg(epoch.map_or(0, |SessionEpoch(epoch)| epoch));
        let mut feed = Vec::new();
        let mut index = Vec::with_capacity(reports.len());
        for report in reports {
            let json = serde_json::to_vec(report).expect("a report always serializes");
            script
                .arg(report.seq)
                .arg(json)
                .arg(stream_field_count(report));
            push_stream_fields(&mut script, report);
            if report.kind.in_fill_feed() {
                let fill = FeedFill::of(report);
                let mut entry = redis::cmd("XADD");
                entry
                    .arg(self.fill_feed_key())
                    .arg("*")
                    .arg("device_id")
                    .arg(fill.device_id)
                    .arg("seq")
                    .arg(fill.seq)
                    .arg("stored_at_ms")
                    .arg(fill.stored_at_ms);
                if let Some(signal_id) = fill.signal_id {
                    entry.arg("signal_id").arg(signal_id.to_string());
                }
                if let Some(volume) = fill.volume {
                    entry.arg("volume").arg(volume.to_string());
                }
                if let Some(ticket) = fill.reverses_ticket {
                    entry.arg("reverses_ticket").arg(ticket);
                }
                feed.push(entry);
            }
            let mut entry = redis::cmd("SADD");
            entry
                .arg(self.signal_reports_key(report.signal_id))
                .arg(format!("{} {}", report.device_id, report.seq));
            index.push(entry);
        }
        ReportCommands {
            feed,
            script,
            index,
        }
    }
}

/// What the script's answer about `report` means.
fn outcome_of(report: &StoredReport, answer: ScriptAnswer) -> Result<Written, ReportStoreError> {
    let (stored, watermark, existing) = answer;
    let ingested = match stored {
        -3 => {
            return Err(ReportStoreError::Redis(redis::RedisError::from((
                redis::ErrorKind::ResponseError,
                "the ingest script failed",
                existing.unwrap_or_default(),
            ))));
        }
        -2 => Ingested::Superseded,
        -4 => return Err(ReportStoreError::SessionLost),
        -1 => {
            return Err(ReportStoreError::TooFarAhead {
                seq: report.seq,
                confirmed: watermark,
            });
        }
        _ => match existing {
            Some(existing) => {
                crate::reports::resend_outcome(existing.as_bytes(), report, watermark)?
            }
            None => Ingested::Stored {
                confirmed_up_to: watermark,
            },
        },
    };
    // Durable as Redis's configuration makes an acknowledged write (its AOF
    // policy): nothing more to wait for.
    Ok(Written::final_outcome(ingested))
}

impl ReportStore for RedisStores {
    fn write<'a>(
        &'a self,
        report: &'a StoredReport,
        epoch: Option<SessionEpoch>,
    ) -> StoreFuture<'a, Written> {
        Box::pin(async move {
            let mut outcomes = self.write_run(std::slice::from_ref(report), epoch).await?;
            outcomes.pop().unwrap_or_else(|| Err(unanswered()))
        })
    }

    fn write_run<'a>(
        &'a self,
        reports: &'a [StoredReport],
        epoch: Option<SessionEpoch>,
    ) -> StoreFuture<'a, Vec<Result<Written, ReportStoreError>>> {
        Box::pin(async move {
            // A zero ends the run where it stands, before anything of it is
            // sent.
            let valid = reports.iter().take_while(|r| r.seq != 0).count();
            if valid == 0 {
                return Ok(vec![Err(ReportStoreError::ZeroSequence)]);
            }
            let run = &reports[..valid];
            let answers = self
                .report_batches
                .write(self.run_commands(run, epoch))
                .await?;
            if answers.is_empty() || answers.len() > run.len() {
                return Err(unanswered());
            }
            Ok(run
                .iter()
                .zip(answers)
                .map(|(report, answer)| outcome_of(report, answer))
                .collect())
        })
    }

    fn begin_session<'a>(&'a self, device_id: &'a str) -> StoreFuture<'a, (SessionEpoch, u64)> {
        Box::pin(async move {
            let mut connection = self.connection.clone();
            let (epoch, watermark): (u64, u64) = BEGIN_SESSION_SCRIPT
                .key(self.device_key(device_id, "session"))
                .key(self.device_key(device_id, "watermark"))
                .invoke_async(&mut connection)
                .await?;
            Ok((SessionEpoch(epoch), watermark))
        })
    }

    fn current_sessions<'a>(
        &'a self,
        devices: &'a [&'a str],
    ) -> StoreFuture<'a, Vec<SessionEpoch>> {
        Box::pin(async move {
            let epochs = self.numbers_of_each(devices, "session").await?;
            Ok(epochs.into_iter().map(SessionEpoch).collect())
        })
    }

    fn current_session<'a>(&'a self, device_id: &'a str) -> StoreFuture<'a, SessionEpoch> {
        Box::pin(async move {
            let mut connection = self.connection.clone();
            let epoch: Option<u64> = connection
                .get(self.device_key(device_id, "session"))
                .await?;
            Ok(SessionEpoch(epoch.unwrap_or(0)))
        })
    }

    fn confirmed_up_to_each<'a>(&'a self, devices: &'a [&'a str]) -> StoreFuture<'a, Vec<u64>> {
        Box::pin(self.numbers_of_each(devices, "watermark"))
    }

    fn confirmed_up_to<'a>(&'a self, device_id: &'a str) -> StoreFuture<'a, u64> {
        Box::pin(async move {
            let mut connection = self.connection.clone();
            let watermark: Option<u64> = connection
                .get(self.device_key(device_id, "watermark"))
                .await?;
            Ok(watermark.unwrap_or(0))
        })
    }

    fn for_signal<'a>(&'a self, signal_id: SignalId) -> StoreFuture<'a, Vec<StoredReport>> {
        Box::pin(async move {
            let mut connection = self.connection.clone();
            let members: Vec<String> = connection
                .smembers(self.signal_reports_key(signal_id))
                .await?;
            let mut places: Vec<(String, u64)> = members
                .iter()
                .filter_map(|m| {
                    let (device, seq) = m.rsplit_once(' ')?;
                    Some((device.to_owned(), seq.parse().ok()?))
                })
                .collect();
            places.sort();
            let mut found = Vec::with_capacity(places.len());
            for (device, seq) in places {
                let json: Option<String> = connection
                    .hget(self.device_key(&device, "reports"), seq)
                    .await?;
                if let Some(json) = json {
                    let stored = StoredReport::from_json(json.as_bytes())?;
                    // The index also names attempts that stored nothing
                    // under their number (a conflict, a refusal).
                    if stored.signal_id == signal_id {
                        found.push(stored);
                    }
                }
            }
            Ok(found)
        })
    }

    fn report_at<'a>(
        &'a self,
        device_id: &'a str,
        seq: u64,
    ) -> StoreFuture<'a, Option<StoredReport>> {
        Box::pin(async move {
            let mut connection = self.connection.clone();
            let json: Option<String> = connection
                .hget(self.device_key(device_id, "reports"), seq)
                .await?;
            json.map(|json| StoredReport::from_json(json.as_bytes()))
                .transpose()
        })
    }

    fn unclaimed_fills<'a>(
        &'a self,
        after: Option<&'a [u8]>,
        limit: usize,
    ) -> StoreFuture<'a, Vec<FeedFill>> {
        Box::pin(async move {
            let mut connection = self.connection.clone();
            // "(" makes the start exclusive (Redis 6.2 and later).
            let start = match after {
                Some(mark) => format!("({}", String::from_utf8_lossy(mark)),
                None => "-".to_owned(),
            };
            let reply: redis::streams::StreamRangeReply = connection
                .xrange_count(self.fill_feed_key(), start, "+", limit)
                .await?;
            Ok(reply
                .ids
                .into_iter()
                .map(|entry| {
                    let field = |name: &str| entry.get::<String>(name);
                    let number = |name: &str| field(name)?.parse::<u64>().ok();
                    let read = || {
                        Some(FeedFill {
                            device_id: field("device_id")?,
                            seq: number("seq")?,
                            stored_at_ms: number("stored_at_ms")?,
                            // Absent in entries written before the feed
                            // carried them.
                            signal_id: field("signal_id").and_then(|t| t.parse().ok()),
                            volume: field("volume").and_then(|t| t.parse().ok()),
                            reverses_ticket: number("reverses_ticket"),
                            mark: Vec::new(),
                        })
                    };
                    let mut fill = read().unwrap_or_else(|| {
                        tracing::error!(entry = %entry.id, "a fill feed entry is damaged; skipping it");
                        FeedFill::damaged()
                    });
                    fill.mark = entry.id.clone().into_bytes();
                    fill
                })
                .collect())
        })
    }

    fn claim_fills<'a>(&'a self, fills: &'a [FeedFill]) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            if fills.is_empty() {
                return Ok(());
            }
            let ids: Vec<String> = fills
                .iter()
                .map(|fill| String::from_utf8_lossy(&fill.mark).into_owned())
                .collect();
            let mut connection = self.connection.clone();
            let _: u64 = connection.xdel(self.fill_feed_key(), &ids).await?;
            Ok(())
        })
    }
}

fn unanswered() -> ReportStoreError {
    ReportStoreError::Redis(redis::RedisError::from((
        redis::ErrorKind::ResponseError,
        "Redis answered a run of reports with no answer, or too many",
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reports::ReportKind;

    fn fields_pushed(report: &StoredReport) -> usize {
        let mut cmd = redis::Cmd::new();
        push_stream_fields(&mut cmd, report);
        cmd.args_iter().count()
    }

    #[test]
    fn the_stream_field_count_sent_before_the_fields_is_how_many_follow() {
        let bare = StoredReport {
            device_id: "dv_A".into(),
            seq: 1,
            signal_id: SignalId([1; 16]),
            kind: ReportKind::Received,
            at_ms: 1,
            stored_at_ms: 2,
            ticket: None,
            price: None,
            volume: None,
            error_code: None,
            error_text: None,
        };
        let full = StoredReport {
            ticket: Some(7),
            price: Some("1.5".parse().unwrap()),
            volume: Some("0.1".parse().unwrap()),
            error_code: Some(10_019),
            error_text: Some("no money".into()),
            ..bare.clone()
        };
        for report in [&bare, &full] {
            assert_eq!(stream_field_count(report), fields_pushed(report));
        }
        assert_eq!(stream_field_count(&full), 22);
    }
}
