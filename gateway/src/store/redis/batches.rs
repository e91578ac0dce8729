//! Group commit on Redis: the reports of every session written together.
//!
//! A session writes its device's reports in runs (every report already
//! read from the device, at once), and a run is a few commands (fill feed
//! entries, the ingest script, the signals' index entries). Sent as a
//! pipeline each, runs cost a request of the shared connection (a queue
//! entry, an answer channel, a wake-up of its driver) and Redis a read and
//! a reply of its own. Here writers queue their commands and one task sends
//! what has gathered as one pipeline. A batch closes when nothing more is
//! waiting, or at [`BATCH_MAX`] runs: it never waits for more. While
//! [`IN_FLIGHT`] batches are on their way, runs gather for the next, so
//! batches grow with the load and a lone report on a quiet gateway goes at
//! once.
//!
//! Each run still gets its own answers. The script answers its own
//! failures (one device's damaged key) instead of raising them, so they do
//! not fail the pipeline. A batch Redis refuses because its script cache
//! was lost (a restart) is sent again once the script is loaded; one that
//! fails otherwise (a damaged feed or index key) is sent again run by
//! run, so a failure is only its own run's. Sending again is
//! harmless: the script's `HSETNX` is the exactly-once gate (a report the
//! failed batch stored is answered as already stored, and confirmed the
//! same), and a feed or index entry written twice is read once.
//!
//! The queue needs no bound of its own: a session waits for its write's
//! answer before it writes again, or gives up waiting (Redis silent) and
//! writes it again later; a run whose writer gave up is dropped unsent
//! when the next batch is gathered. So a session has one run waiting, and
//! a few more only while Redis holds every batch on its way unanswered.

use futures_util::stream::{FuturesUnordered, StreamExt};
use redis::{Cmd, RedisResult};
use tokio::sync::{mpsc, oneshot};

use super::RedisConnection;
use super::reports::INGEST_SCRIPT;

/// The most runs (each of one or more reports of one device) one pipeline
/// carries.
pub(super) const BATCH_MAX: usize = 256;

/// How many batches may be on their way to Redis at once.
pub(super) const IN_FLIGHT: usize = 4;

/// The ingest script's answer: the outcome, the device's watermark, and the
/// report already stored under the number (JSON), if any.
pub(super) type ScriptAnswer = (i8, u64, Option<String>);

/// The commands of one run of a device's reports. The answer is the
/// script's; the entries' answers only say they were written.
pub(super) struct ReportCommands {
    /// The fill feed's entries, for fills: before the script, which may
    /// confirm them.
    pub(super) feed: Vec<Cmd>,
    /// `EVALSHA` of [`INGEST_SCRIPT`].
    pub(super) script: Cmd,
    /// The signals' index entries.
    pub(super) index: Vec<Cmd>,
}

struct Queued {
    commands: ReportCommands,
    answer: oneshot::Sender<RedisResult<Vec<ScriptAnswer>>>,
}

/// The writers' end of the batching task; the task ends once every handle
/// is dropped and what was queued is sent.
#[derive(Clone)]
pub(super) struct ReportBatches {
    queue: mpsc::UnboundedSender<Queued>,
}

impl ReportBatches {
    /// Starts the batching task on the current runtime.
    pub(super) fn start(connection: RedisConnection) -> Self {
        let (queue, waiting) = mpsc::unbounded_channel();
        tokio::spawn(run(waiting, connection));
        Self { queue }
    }

    /// Sends a run's commands with the next batch; the script's answers.
    pub(super) async fn write(&self, commands: ReportCommands) -> RedisResult<Vec<ScriptAnswer>> {
        let (answer, answered) = oneshot::channel();
        self.queue
            .send(Queued { commands, answer })
            .map_err(|_| stopped())?;
        answered.await.map_err(|_| stopped())?
    }
}

fn stopped() -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::IoError,
        "the report writer stopped (the gateway is shutting down)",
    ))
}

async fn run(mut waiting: mpsc::UnboundedReceiver<Queued>, connection: RedisConnection) {
    let mut sending = FuturesUnordered::new();
    loop {
        tokio::select! {
            biased;
            // Answers first: each frees a place for the next batch.
            Some(()) = sending.next(), if !sending.is_empty() => {}
            first = waiting.recv(), if sending.len() < IN_FLIGHT => {
                let Some(first) = first else { break };
                let mut batch = Vec::with_capacity(waiting.len().min(BATCH_MAX - 1) + 1);
                // Nobody waits for an abandoned run's answer, and its writer
                // sends it again: not sent, so a Redis back from an outage
                // is not flooded with what was given up on.
                let wanted = |queued: &Queued| !queued.answer.is_closed();
                batch.extend(Some(first).filter(wanted));
                while batch.len() < BATCH_MAX {
                    match waiting.try_recv() {
                        Ok(queued) if wanted(&queued) => batch.push(queued),
                        Ok(_abandoned) => {}
                        Err(_) => break,
                    }
                }
                if !batch.is_empty() {
                    sending.push(send(batch, connection.clone()));
                }
            }
        }
    }
    while sending.next().await.is_some() {}
}

/// Sends `batch` and answers each of its writers.
async fn send(batch: Vec<Queued>, mut connection: RedisConnection) {
    let (runs, answers): (Vec<ReportCommands>, Vec<_>) = batch
        .into_iter()
        .map(|queued| (queued.commands, queued.answer))
        .unzip();
    // The commands move into the pipeline: a report's are copied only if
    // the batch fails and its runs are sent again alone.
    let shapes: Vec<(usize, usize)> = runs
        .iter()
        .map(|run| (run.feed.len(), run.index.len()))
        .collect();
    let pipe = pipeline(runs);
    match query(&pipe, &shapes, &mut connection).await {
        Ok(answered) => {
            for (answer, answered) in answers.into_iter().zip(answered) {
                let _ = answer.send(Ok(answered));
            }
        }
        Err(e) if answers.len() == 1 => {
            if let Some(answer) = answers.into_iter().next() {
                let _ = answer.send(Err(e));
            }
        }
        // Each on its own, so each gets its own outcome.
        Err(_) => {
            let mut commands = pipe.cmd_iter().cloned();
            let alone = answers
                .into_iter()
                .zip(shapes)
                .filter_map(|(answer, (feed, index))| {
                    let feed = commands.by_ref().take(feed).collect();
                    // Always there (the shapes are the pipeline's); were it not,
                    // the dropped answer tells the writer its write failed.
                    let script = commands.next()?;
                    let index = commands.by_ref().take(index).collect();
                    let run = ReportCommands {
                        feed,
                        script,
                        index,
                    };
                    let mut connection = connection.clone();
                    let shape = [(run.feed.len(), run.index.len())];
                    Some(async move {
                        let answered = query(&pipeline([run]), &shape, &mut connection)
                            .await
                            .map(|answered| answered.into_iter().next().unwrap_or_default());
                        let _ = answer.send(answered);
                    })
                });
            futures_util::future::join_all(alone).await;
        }
    }
}

/// One pipeline of `runs`' commands: each run's script answered, its
/// entries' answers ignored.
fn pipeline(runs: impl IntoIterator<Item = ReportCommands>) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    for run in runs {
        for entry in run.feed {
            pipe.add_command(entry).ignore();
        }
        pipe.add_command(run.script);
        for entry in run.index {
            pipe.add_command(entry).ignore();
        }
    }
    pipe
}

/// Sends `pipe`, whose runs have the `shapes` (feed entries, index
/// entries); the scripts' answers, in order.
async fn query(
    pipe: &redis::Pipeline,
    shapes: &[(usize, usize)],
    connection: &mut RedisConnection,
) -> RedisResult<Vec<Vec<ScriptAnswer>>> {
    if let RedisConnection::Cluster(_) = connection {
        return query_cluster(pipe, shapes, connection).await;
    }
    match pipe.query_async(connection).await {
        // Redis restarted (or its scripts were flushed): load the script
        // and send the batch again.
        Err(e) if e.kind() == redis::ErrorKind::NoScriptError => {
            let _: String = INGEST_SCRIPT
                .prepare_invoke()
                .load_async(connection)
                .await?;
            pipe.query_async(connection).await
        }
        answered => answered,
    }
}

/// [`query`] on a Redis Cluster, where a pipeline stays within one slot and
/// a run's commands touch three kinds of key (the fill feed, the device's,
/// the signals'): the batch goes in two steps, each one pipeline per slot.
/// First every entry beside the scripts, the fill feed's and the signals'
/// index's: both are harmless written ahead (the feed's reader is
/// idempotent, `for_signal` skips an index entry whose number holds no
/// report of its signal), and both must be there before a script confirms
/// its reports, since the device never sends a confirmed report again.
/// Then the scripts.
async fn query_cluster(
    pipe: &redis::Pipeline,
    shapes: &[(usize, usize)],
    connection: &mut RedisConnection,
) -> RedisResult<Vec<Vec<ScriptAnswer>>> {
    let (mut entries, mut scripts) = (Vec::new(), Vec::new());
    let mut commands = pipe.cmd_iter();
    for &(feed_len, index_len) in shapes {
        entries.extend(commands.by_ref().take(feed_len));
        scripts.extend(commands.next());
        entries.extend(commands.by_ref().take(index_len));
    }
    connection.send_by_slot(&entries).await?;
    let answered = connection
        .send_script_calls_by_slot(&INGEST_SCRIPT, &scripts)
        .await?;
    answered
        .iter()
        .map(redis::from_redis_value::<Vec<ScriptAnswer>>)
        .collect()
}
