//! The sink loop in process, on a paused clock: the real pipeline and the
//! real webhook sender, with a scripted Discord behind the sender's transport.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use discord::embed::WebhookMessage;
use discord::ratelimit::{Limiter, LimiterConfig, RateLimitHeaders};
use discord::webhook::ExecuteOutcome;
use discord::webhook_url::WebhookUrl;
use ops::health::{Health, Heartbeat};
use ops::Shutdown;
use tokio::time::Instant;

use super::{Drain, HandOver, Pipeline, PipelineConfig, Wall, SEND_SLACK};
use crate::atomic_file::{StateFile, StateObserver};
use crate::checkpoint::{Checkpoint, CheckpointStore};
use crate::deliver::dlq::Dlq;
use crate::deliver::webhook::{Transport, WebhookSender, RETRY_BACKOFF};
use crate::deliver::DeliveryObserver;
use crate::delivered::DeliveredLog;
use crate::queue::{QueueTx, Record};
use crate::render::{CostTable, Filters, RenderConfig, Renderer, RunInfo};
use crate::state::backlog::Kept;
use crate::state::RunStore;
use crate::tail::FileIdentity;
use crate::transcript::{Event, EventKind, LinePos, Source};

/// What the scripted Discord answers to one request.
#[derive(Debug, Clone, Copy)]
enum Answer {
    Ok,
    ServerError,
    RateLimited(Duration),
    Rejected,
    /// Takes the message and never answers (the watcher is killed meanwhile).
    TakeAndHang,
}

#[derive(Default)]
struct Script {
    answers: VecDeque<Answer>,
    /// Every request that reached Discord, in order.
    received: Vec<String>,
    /// Of those, the ones Discord stored.
    stored: Vec<String>,
    latency: Duration,
    /// Until then every request fails with a 503 (an outage).
    down_until: Option<Instant>,
    /// Requests in flight now, and the most there ever were.
    in_flight: usize,
    max_in_flight: usize,
}

/// Counts a request in flight until it is answered or dropped (a drain cut).
struct InFlight(Arc<Mutex<Script>>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.lock().unwrap().in_flight -= 1;
    }
}

/// A Discord that answers from a script (then `Ok`), after `latency`.
#[derive(Clone, Default)]
struct Scripted(Arc<Mutex<Script>>);

impl Scripted {
    fn new(answers: &[Answer], latency: Duration) -> Self {
        Self(Arc::new(Mutex::new(Script {
            answers: answers.iter().copied().collect(),
            latency,
            ..Script::default()
        })))
    }

    fn down_until(&self, until: Instant) {
        self.0.lock().unwrap().down_until = Some(until);
    }

    fn stored(&self) -> Vec<String> {
        self.0.lock().unwrap().stored.clone()
    }

    fn max_in_flight(&self) -> usize {
        self.0.lock().unwrap().max_in_flight
    }

    fn received(&self) -> usize {
        self.0.lock().unwrap().received.len()
    }
}

impl Transport for Scripted {
    async fn execute(&self, _url: &WebhookUrl, msg: &WebhookMessage) -> ExecuteOutcome {
        let body = serde_json::to_string(msg).unwrap();
        let (answer, latency) = {
            let mut s = self.0.lock().unwrap();
            s.in_flight += 1;
            s.max_in_flight = s.max_in_flight.max(s.in_flight);
            s.received.push(body.clone());
            let answer = if s.down_until.is_some_and(|t| Instant::now() < t) {
                Answer::ServerError
            } else {
                s.answers.pop_front().unwrap_or(Answer::Ok)
            };
            if matches!(answer, Answer::Ok | Answer::TakeAndHang) {
                s.stored.push(body);
            }
            (answer, s.latency)
        };
        let _in_flight = InFlight(self.0.clone());
        tokio::time::sleep(latency).await;
        match answer {
            Answer::Ok => ExecuteOutcome::Delivered {
                message_id: None,
                headers: RateLimitHeaders::default(),
            },
            Answer::ServerError => ExecuteOutcome::ServerError {
                status: 503,
                headers: RateLimitHeaders::default(),
            },
            Answer::RateLimited(retry_after) => ExecuteOutcome::RateLimited {
                retry_after,
                scope: None,
                global: false,
            },
            Answer::Rejected => ExecuteOutcome::Rejected {
                status: 400,
                body: r#"{"code":50035}"#.into(),
            },
            Answer::TakeAndHang => std::future::pending().await,
        }
    }
}

/// Counts what the sink loop reports.
#[derive(Default)]
struct Counts {
    retries: AtomicU64,
    rate_limited: AtomicU64,
    dead_lettered: AtomicU64,
    sent: AtomicU64,
    replayed: AtomicU64,
    /// What a request takes, for the drain's plan.
    latency: Duration,
    /// A slow disk: the next checkpoint write takes this long (real time,
    /// the sink loop's thread blocked in it).
    stall_next_write: Mutex<Option<Duration>>,
    /// Set while that write stalls.
    stalling: AtomicBool,
}

impl StateObserver for Counts {
    fn write_failed(&self, _: StateFile, e: &dyn std::fmt::Display) {
        panic!("state write failed: {e}");
    }
    fn written(&self, file: StateFile) {
        if file != StateFile::Checkpoint {
            return;
        }
        let stall = self.stall_next_write.lock().unwrap().take();
        if let Some(stall) = stall {
            self.stalling.store(true, Ordering::SeqCst);
            std::thread::sleep(stall);
            self.stalling.store(false, Ordering::SeqCst);
        }
    }
}

impl DeliveryObserver for Counts {
    fn sent(&self, _: usize, _: usize) {
        self.sent.fetch_add(1, Ordering::SeqCst);
    }
    fn rate_limited(&self, _: &'static str) {
        self.rate_limited.fetch_add(1, Ordering::SeqCst);
    }
    fn retry(&self, _: &'static str) {
        self.retries.fetch_add(1, Ordering::SeqCst);
    }
    fn dead_lettered(&self, _: &'static str, _: &str, _: u64) {
        self.dead_lettered.fetch_add(1, Ordering::SeqCst);
    }
    fn acked(&self, _: Duration) {}
    fn truncated(&self, _: &'static str) {}
    fn reprovisioned(&self) {}
    fn dlq_replayed(&self) {
        self.replayed.fetch_add(1, Ordering::SeqCst);
    }
    fn latency_estimate(&self) -> Duration {
        self.latency
    }
}

const LINE: u64 = 100;
const MAX_ELAPSED: Duration = Duration::from_secs(60);

/// Line `i` of the transcript: one prompt carrying `marker-{i:02}`.
fn record(i: u64) -> Record {
    Record {
        pos: LinePos {
            file: Arc::from("/t/s.jsonl"),
            start: i * LINE,
            end: (i + 1) * LINE,
        },
        identity: FileIdentity::default(),
        events: vec![Event {
            source: Source::Main,
            uuid: Some(format!("u{i}")),
            timestamp: Some("2026-11-30T10:00:00.000Z".into()),
            kind: EventKind::UserPrompt {
                text: format!("marker-{i:02}"),
                images: 0,
            },
        }],
        read_at: Instant::now(),
        bytes: LINE as usize,
    }
}

fn renderer() -> Renderer {
    Renderer::new(RenderConfig {
        parity: false,
        filters: Filters::default(),
        costs: CostTable::builtin(),
        run: RunInfo::default(),
        inline_output_chars: 1000,
    })
}

fn run_store(dir: &Path) -> RunStore {
    let store = CheckpointStore::open(dir).unwrap();
    let checkpoint = store.load().unwrap().unwrap_or_default();
    let (delivered, _) = DeliveredLog::open(dir, 1000).unwrap();
    RunStore::on_disk(store, delivered, checkpoint)
}

fn checkpoint(dir: &Path) -> Checkpoint {
    CheckpointStore::open(dir)
        .unwrap()
        .load()
        .unwrap()
        .unwrap_or_default()
}

/// A Discord answering each request after `latency`, and an observer whose
/// latency estimate says as much.
fn slow_discord(latency: Duration) -> (Arc<Counts>, Scripted) {
    let observer = Arc::new(Counts {
        latency,
        ..Counts::default()
    });
    (observer, Scripted::new(&[], latency))
}

/// The real sink loop over the real sender, posting to `discord`.
fn pipeline(
    dir: &Path,
    discord: &Scripted,
    observer: &Arc<Counts>,
    batch_size: usize,
) -> Pipeline<WebhookSender<Scripted>> {
    pipeline_with(
        dir,
        discord,
        observer,
        batch_size,
        Pace {
            channel_messages_per_minute: None,
            max_elapsed: MAX_ELAPSED,
        },
        Health::new("test").heartbeat("pipeline", LIVENESS_SILENCE),
    )
}

/// The watcher's liveness bound: how long its pipeline may go without a beat
/// (`app.rs` registers the heartbeat with this silence).
const LIVENESS_SILENCE: Duration = Duration::from_secs(30);

/// The sender's pace: the per-channel window and `DELIVERY_MAX_ELAPSED`.
struct Pace {
    channel_messages_per_minute: Option<u32>,
    max_elapsed: Duration,
}

/// [`pipeline`] at `pace`, beating `heartbeat`.
fn pipeline_with(
    dir: &Path,
    discord: &Scripted,
    observer: &Arc<Counts>,
    batch_size: usize,
    pace: Pace,
    heartbeat: Heartbeat,
) -> Pipeline<WebhookSender<Scripted>> {
    let observer: Arc<dyn DeliveryObserver> = observer.clone();
    let sender = WebhookSender::with_parts(
        discord.clone(),
        Limiter::new(LimiterConfig {
            channel_messages_per_minute: pace.channel_messages_per_minute,
            ..LimiterConfig::default()
        }),
        WebhookUrl::parse("http://discord.invalid/api/webhooks/1/token").unwrap(),
        None,
        RETRY_BACKOFF,
        pace.max_elapsed,
        Dlq::open(dir, 1 << 20).unwrap(),
        observer.clone(),
    );
    Pipeline::new(
        PipelineConfig {
            batch_size,
            send_bound: pace.max_elapsed + SEND_SLACK,
            idle_complete_after: None,
            wall: Wall::Now,
        },
        renderer(),
        run_store(dir),
        sender,
        observer,
        heartbeat,
    )
}

async fn feed(tx: &QueueTx, lines: std::ops::Range<u64>) {
    for i in lines {
        tx.send(record(i)).await.unwrap();
    }
}

/// How often each marker of `0..n` arrived among `messages`.
fn deliveries(messages: &[String], n: u64) -> Vec<usize> {
    (0..n)
        .map(|i| {
            let m = format!("marker-{i:02}");
            messages.iter().filter(|b| b.contains(&m)).count()
        })
        .collect()
}

async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    tokio::time::timeout(Duration::from_secs(600), async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}

/// The promise behind the checkpoint: a watcher killed after Discord took a
/// message but before the checkpoint recorded it re-sends that one batch on
/// restart, no more, and loses nothing.
#[tokio::test(start_paused = true)]
async fn killed_between_send_and_save_re_sends_at_most_one_batch() {
    const LINES: u64 = 12;
    const BATCH: usize = 2;
    let dir = tempfile::tempdir().unwrap();
    let observer = Arc::new(Counts::default());
    // The fourth message reaches Discord; its answer never comes back.
    let first = Scripted::new(
        &[Answer::Ok, Answer::Ok, Answer::Ok, Answer::TakeAndHang],
        Duration::from_millis(50),
    );
    let (tx, rx) = crate::queue::bounded(64, 1 << 20);
    feed(&tx, 0..LINES).await;
    let p = pipeline(dir.path(), &first, &observer, BATCH);
    let run = tokio::spawn(p.run(rx, Drain::new(Shutdown::new(), Duration::from_secs(5))));
    until("the fourth message", || first.received() == 4).await;
    run.abort(); // killed
    assert!(run.await.unwrap_err().is_cancelled());

    let saved = checkpoint(dir.path());
    let offset = saved.files["/t/s.jsonl"].offset;
    let before_kill = deliveries(&first.stored(), LINES);
    // Never past a line Discord has not acknowledged...
    for i in 0..offset / LINE {
        assert_eq!(
            before_kill[i as usize], 1,
            "line {i} is behind the checkpoint"
        );
    }
    assert!(saved.totals.header_posted);

    // The restart resumes at the checkpoint, as ingest does.
    let second = Scripted::new(&[], Duration::from_millis(50));
    let (tx, rx) = crate::queue::bounded(64, 1 << 20);
    feed(&tx, offset / LINE..LINES).await;
    drop(tx);
    let p = pipeline(dir.path(), &second, &observer, BATCH);
    p.run(rx, Drain::new(Shutdown::new(), Duration::from_secs(5)))
        .await;

    let mut all = first.stored();
    all.extend(second.stored());
    let counts = deliveries(&all, LINES);
    assert!(counts.iter().all(|&c| c >= 1), "nothing lost: {counts:?}");
    let resent: usize = counts.iter().map(|c| c - 1).sum();
    assert!(
        (1..=BATCH).contains(&resent),
        "re-sent the batch in flight, at most: {counts:?}"
    );
    let headers = all.iter().filter(|m| m.contains("Run started")).count();
    assert_eq!(headers, 1, "the header is not posted again");
    assert!(all.last().unwrap().contains("Run complete"));
    assert!(checkpoint(dir.path()).summary_posted);
}

/// 503s are retried with backoff and a 429 is waited out, not counted as a
/// failure: every line arrives once, in order, and nothing is dead-lettered.
#[tokio::test(start_paused = true)]
async fn server_errors_are_retried_and_a_429_is_waited_out() {
    let dir = tempfile::tempdir().unwrap();
    let observer = Arc::new(Counts::default());
    let discord = Scripted::new(
        &[
            Answer::ServerError,
            Answer::ServerError,
            Answer::RateLimited(Duration::from_secs(7)),
        ],
        Duration::from_millis(20),
    );
    let (tx, rx) = crate::queue::bounded(64, 1 << 20);
    feed(&tx, 0..3).await;
    drop(tx);
    let start = Instant::now();
    pipeline(dir.path(), &discord, &observer, 10)
        .run(rx, Drain::new(Shutdown::new(), Duration::from_secs(5)))
        .await;
    assert!(
        Instant::now() - start >= Duration::from_secs(7),
        "the 429's wait was honoured"
    );
    assert_eq!(observer.retries.load(Ordering::SeqCst), 2);
    assert_eq!(observer.rate_limited.load(Ordering::SeqCst), 1);
    assert_eq!(observer.dead_lettered.load(Ordering::SeqCst), 0);
    let stored = discord.stored();
    assert_eq!(deliveries(&stored, 3), [1, 1, 1]);
    assert!(stored.last().unwrap().contains("Run complete"));
    assert_eq!(checkpoint(dir.path()).files["/t/s.jsonl"].offset, 3 * LINE);
    assert!(Dlq::open(dir.path(), 1 << 20)
        .unwrap()
        .entries()
        .unwrap()
        .is_empty());
}

/// A 400 is Discord's final word: the message goes to the DLQ at once (no
/// retry) and the checkpoint moves past it, so the loop does not wedge.
#[tokio::test(start_paused = true)]
async fn a_rejected_message_is_dead_lettered_and_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let observer = Arc::new(Counts::default());
    let discord = Scripted::new(&[Answer::Rejected], Duration::from_millis(20));
    let (tx, rx) = crate::queue::bounded(64, 1 << 20);
    feed(&tx, 0..4).await;
    drop(tx);
    pipeline(dir.path(), &discord, &observer, 10)
        .run(rx, Drain::new(Shutdown::new(), Duration::from_secs(5)))
        .await;
    assert_eq!(observer.retries.load(Ordering::SeqCst), 0);
    assert_eq!(observer.dead_lettered.load(Ordering::SeqCst), 1);
    assert_eq!(
        Dlq::open(dir.path(), 1 << 20)
            .unwrap()
            .entries()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(checkpoint(dir.path()).files["/t/s.jsonl"].offset, 4 * LINE);
}

/// Shutdown with a backlog and a slow Discord: the backlog is cut so that the
/// summary still goes out, all within the budget; what was not sent is kept
/// for the next run.
#[tokio::test(start_paused = true)]
async fn the_summary_goes_out_within_the_shutdown_budget() {
    const LINES: u64 = 40;
    const BUDGET: Duration = Duration::from_secs(5);
    let dir = tempfile::tempdir().unwrap();
    let (observer, discord) = slow_discord(Duration::from_millis(400));
    let (tx, rx) = crate::queue::bounded(64, 1 << 20);
    feed(&tx, 0..LINES).await;
    let shutdown = Shutdown::new();
    let drain = Drain::new(shutdown.clone(), BUDGET);
    let run = tokio::spawn(pipeline(dir.path(), &discord, &observer, 1).run(rx, drain));
    until("the first messages", || discord.received() >= 3).await;
    let signal = Instant::now();
    shutdown.trigger();
    drop(tx); // ingest stops
    run.await.unwrap();
    let took = Instant::now() - signal;
    assert!(took <= BUDGET, "drained in {took:?}, budget {BUDGET:?}");
    let stored = discord.stored();
    assert!(
        stored.last().unwrap().contains("Run complete"),
        "summary last"
    );
    let cp = checkpoint(dir.path());
    assert!(cp.summary_posted);
    let counts = deliveries(&stored, LINES);
    assert!(
        counts.contains(&0),
        "the backlog was cut, not all sent live"
    );
    // What was not sent live is kept for the next start, in order.
    let kept = crate::state::backlog::Backlog::new(dir.path())
        .load()
        .unwrap();
    let kept: Vec<String> = kept
        .iter()
        .map(|k| serde_json::to_string(&k.payload).unwrap())
        .collect();
    let kept_counts = deliveries(&kept, LINES);
    for i in 0..LINES as usize {
        assert!(counts[i] + kept_counts[i] >= 1, "line {i} lost");
    }
}

/// issue 18: an outage longer than `DELIVERY_MAX_ELAPSED` dead-letters what
/// was being sent; once Discord is back, the loop retries the entries by
/// itself, oldest first, and the DLQ ends empty. Nobody runs a command.
#[tokio::test(start_paused = true)]
async fn the_dlq_drains_itself_once_the_outage_is_over() {
    let dir = tempfile::tempdir().unwrap();
    let observer = Arc::new(Counts::default());
    let discord = Scripted::new(&[], Duration::from_millis(20));
    // Down long enough for two messages to exhaust their 60 s each.
    discord.down_until(Instant::now() + MAX_ELAPSED * 2 + Duration::from_secs(30));
    let (tx, rx) = crate::queue::bounded(64, 1 << 20);
    feed(&tx, 0..3).await;
    let run = tokio::spawn(
        pipeline(dir.path(), &discord, &observer, 1)
            .run(rx, Drain::new(Shutdown::new(), Duration::from_secs(5))),
    );
    let dlq = Dlq::open(dir.path(), 1 << 20).unwrap();
    until("two dead letters, then all redelivered", || {
        observer.dead_lettered.load(Ordering::SeqCst) >= 2
            && dlq.entries().unwrap().is_empty()
            && deliveries(&discord.stored(), 3) == [1, 1, 1]
    })
    .await;
    assert_eq!(observer.dead_lettered.load(Ordering::SeqCst), 2);
    assert_eq!(observer.replayed.load(Ordering::SeqCst), 2);
    let stored = discord.stored();
    let header = stored
        .iter()
        .position(|m| m.contains("Run started"))
        .unwrap();
    let first = stored.iter().position(|m| m.contains("marker-00")).unwrap();
    assert!(header < first, "dead letters keep their order: {stored:?}");
    drop(tx);
    run.await.unwrap();
    assert!(discord.stored().last().unwrap().contains("Run complete"));
}

/// A shutdown with more backlog than the budget can deliver: what a busy
/// last minute leaves.
struct BusyEnd {
    dir: tempfile::TempDir,
    discord: Scripted,
    observer: Arc<Counts>,
    took: Duration,
}

const BUSY_LINES: u64 = 40;
const BUSY_BUDGET: Duration = Duration::from_secs(5);

async fn busy_end(handed: Option<Arc<Mutex<Vec<Kept>>>>) -> BusyEnd {
    let dir = tempfile::tempdir().unwrap();
    // An earlier outage left a dead letter worth retrying, and a 400.
    let mut dlq = Dlq::open(dir.path(), 1 << 20).unwrap();
    for (text, reason) in [
        (
            "dead-retry",
            crate::deliver::dlq::DlqReason::RetriesExhausted,
        ),
        ("dead-400", crate::deliver::dlq::DlqReason::Rejected),
    ] {
        let msg = WebhookMessage {
            content: Some(text.into()),
            ..WebhookMessage::default()
        };
        let entry = crate::deliver::dlq::DlqEntry::new(
            &msg,
            reason,
            "x".into(),
            1,
            std::time::SystemTime::now(),
        );
        dlq.append(&entry).unwrap();
    }
    let (observer, discord) = slow_discord(Duration::from_millis(400));
    let (tx, rx) = crate::queue::bounded(64, 1 << 20);
    feed(&tx, 0..BUSY_LINES).await;
    let shutdown = Shutdown::new();
    let drain = Drain::new(shutdown.clone(), BUSY_BUDGET);
    let mut p = pipeline(dir.path(), &discord, &observer, 1);
    if let Some(handed) = handed {
        p = p.hand_off_to(Box::new(move |over: HandOver| {
            let handed = handed.clone();
            Box::pin(async move {
                handed.lock().unwrap().extend(over.kept);
                Ok(())
            })
        }));
    }
    let run = tokio::spawn(p.run(rx, drain));
    until("the first messages", || discord.received() >= 3).await;
    let signal = Instant::now();
    shutdown.trigger();
    drop(tx);
    run.await.unwrap();
    BusyEnd {
        took: Instant::now() - signal,
        dir,
        discord,
        observer,
    }
}

/// issue 18: at shutdown the watcher stops sending when the backlog's share
/// is spent (never two requests on the webhook) and hands the rest to
/// bot-bridge, summary last, in seq order; the checkpoint passes all of it.
#[tokio::test(start_paused = true)]
async fn a_shutdown_hands_the_rest_to_bot_bridge_with_the_summary_last() {
    let handed = Arc::new(Mutex::new(Vec::new()));
    let end = busy_end(Some(handed.clone())).await;
    assert!(end.took <= BUSY_BUDGET, "{:?}", end.took);
    assert_eq!(end.discord.max_in_flight(), 1, "one request at a time");
    let handed = handed.lock().unwrap().clone();
    assert!(!handed.is_empty());
    // The dead letter worth retrying went first; the 400 stays for a person.
    let first = serde_json::to_string(&handed[0].payload).unwrap();
    assert!(first.contains("dead-retry"), "{first}");
    let left = Dlq::open(end.dir.path(), 1 << 20)
        .unwrap()
        .entries()
        .unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(
        left[0].1.as_ref().unwrap().payload.content.as_deref(),
        Some("dead-400")
    );
    assert!(handed.windows(2).all(|w| w[0].seq < w[1].seq));
    let last = serde_json::to_string(&handed.last().unwrap().payload).unwrap();
    assert!(last.contains("Run complete"), "summary last: {last}");
    let live = end.discord.stored();
    assert!(
        live.iter().all(|m| !m.contains("Run complete")),
        "no second summary"
    );
    let mut all = live;
    all.extend(
        handed
            .iter()
            .map(|k| serde_json::to_string(&k.payload).unwrap()),
    );
    let counts = deliveries(&all, BUSY_LINES);
    assert!(counts.iter().all(|&c| c >= 1), "nothing lost: {counts:?}");
    assert!(
        counts.iter().map(|c| c - 1).sum::<usize>() <= 1,
        "{counts:?}"
    );
    let cp = checkpoint(end.dir.path());
    assert_eq!(cp.files["/t/s.jsonl"].offset, BUSY_LINES * LINE);
    assert!(cp.summary_posted);
    assert!(
        cp.totals.next_seq > handed.last().unwrap().seq,
        "seq persisted"
    );
}

/// Without bot-bridge (a static webhook, or bot-bridge unreachable) the rest
/// is kept in `STATE_DIR/backlog.jsonl` and the summary posted as before; a
/// watcher started on the same state delivers the backlog first.
#[tokio::test(start_paused = true)]
async fn without_bot_bridge_the_rest_is_kept_and_a_restart_delivers_it_first() {
    let end = busy_end(None).await;
    assert!(end.took <= BUSY_BUDGET, "{:?}", end.took);
    assert_eq!(end.discord.max_in_flight(), 1);
    let kept = crate::state::backlog::Backlog::new(end.dir.path())
        .load()
        .unwrap();
    assert!(!kept.is_empty());
    let cp = checkpoint(end.dir.path());
    assert_eq!(cp.files["/t/s.jsonl"].offset, BUSY_LINES * LINE);
    assert!(end
        .discord
        .stored()
        .last()
        .unwrap()
        .contains("Run complete"));

    let restarted = Scripted::new(&[], Duration::from_millis(20));
    let (tx, rx) = crate::queue::bounded(64, 1 << 20);
    drop(tx);
    pipeline(end.dir.path(), &restarted, &end.observer, 1)
        .run(rx, Drain::new(Shutdown::new(), BUSY_BUDGET))
        .await;
    let mut all = end.discord.stored();
    all.extend(restarted.stored());
    let counts = deliveries(&all, BUSY_LINES);
    assert!(counts.iter().all(|&c| c >= 1), "nothing lost: {counts:?}");
    assert!(
        counts.iter().map(|c| c - 1).sum::<usize>() <= 1,
        "{counts:?}"
    );
    assert!(crate::state::backlog::Backlog::new(end.dir.path())
        .load()
        .unwrap()
        .is_empty());
}

/// issue 18: ingest reads every file to its end at shutdown, through a queue
/// smaller than what is left; the sink takes all of it (until ingest closes
/// the queue) before it hands the rest over, so nothing read is dropped.
/// (Before, the hand-over took only what was in the queue at that moment.)
#[tokio::test(start_paused = true)]
async fn the_hand_over_waits_for_ingest_to_read_to_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let (observer, discord) = slow_discord(Duration::from_millis(400));
    // Far smaller than the backlog: ingest waits on it.
    let (tx, rx) = crate::queue::bounded(4, 1 << 20);
    let handed = Arc::new(Mutex::new(Vec::new()));
    let shutdown = Shutdown::new();
    let drain = Drain::new(shutdown.clone(), BUSY_BUDGET);
    let p = pipeline(dir.path(), &discord, &observer, 1).hand_off_to(Box::new({
        let handed = handed.clone();
        move |over: HandOver| {
            let handed = handed.clone();
            Box::pin(async move {
                handed.lock().unwrap().extend(over.kept);
                Ok(())
            })
        }
    }));
    let run = tokio::spawn(p.run(rx, drain));
    // Ingest: reads the whole transcript, then closes the queue.
    let ingest = tokio::spawn(async move { feed(&tx, 0..BUSY_LINES).await });
    until("the first messages", || discord.received() >= 3).await;
    let signal = Instant::now();
    shutdown.trigger();
    run.await.unwrap();
    ingest.await.unwrap();
    assert!(Instant::now() - signal <= BUSY_BUDGET);
    assert_eq!(discord.max_in_flight(), 1);
    let handed = handed.lock().unwrap().clone();
    let mut all = discord.stored();
    all.extend(
        handed
            .iter()
            .map(|k| serde_json::to_string(&k.payload).unwrap()),
    );
    let counts = deliveries(&all, BUSY_LINES);
    assert!(counts.iter().all(|&c| c >= 1), "nothing lost: {counts:?}");
    assert!(
        counts.iter().map(|c| c - 1).sum::<usize>() <= 1,
        "{counts:?}"
    );
    let last = serde_json::to_string(&handed.last().unwrap().payload).unwrap();
    assert!(last.contains("Run complete"), "summary last: {last}");
    assert_eq!(
        checkpoint(dir.path()).files["/t/s.jsonl"].offset,
        BUSY_LINES * LINE
    );
}

/// The channel's recent sends go with the hand-off, oldest first, so
/// bot-bridge continues the channel's pace instead of starting a window of
/// its own (which met Discord's per-channel limit with 429s).
#[tokio::test(start_paused = true)]
async fn the_hand_over_carries_the_channels_recent_sends() {
    let dir = tempfile::tempdir().unwrap();
    let (observer, discord) = slow_discord(Duration::from_millis(400));
    let (tx, rx) = crate::queue::bounded(64, 1 << 20);
    feed(&tx, 0..BUSY_LINES).await;
    let paced = Arc::new(Mutex::new(None));
    let shutdown = Shutdown::new();
    let drain = Drain::new(shutdown.clone(), BUSY_BUDGET);
    let pace = Pace {
        channel_messages_per_minute: Some(30),
        max_elapsed: MAX_ELAPSED,
    };
    let heartbeat = Health::new("test").heartbeat("pipeline", LIVENESS_SILENCE);
    let p =
        pipeline_with(dir.path(), &discord, &observer, 1, pace, heartbeat).hand_off_to(Box::new({
            let paced = paced.clone();
            move |over: HandOver| {
                let paced = paced.clone();
                Box::pin(async move {
                    *paced.lock().unwrap() = Some(over.channel_sends);
                    Ok(())
                })
            }
        }));
    let run = tokio::spawn(p.run(rx, drain));
    until("the first messages", || discord.received() >= 3).await;
    shutdown.trigger();
    drop(tx);
    run.await.unwrap();
    let paced = paced.lock().unwrap().clone().expect("handed over");
    // Every message Discord took (the window is a minute, the session far
    // shorter), the cut one included, oldest first.
    assert_eq!(paced.len(), discord.received(), "{paced:?}");
    assert!(paced.windows(2).all(|w| w[0] >= w[1]), "{paced:?}");
    assert!(
        paced.iter().all(|a| *a < Duration::from_secs(60)),
        "{paced:?}"
    );
}

/// What a kubelet probing `/livez` once a second saw: how many samples it
/// took, and when (from the start) each failing one was.
#[derive(Default)]
struct Probes {
    samples: usize,
    failed: Vec<Duration>,
}

/// Runs `p` over `rx` to its end while a kubelet probes `health`'s liveness
/// once a second: how long the run took and what the probes saw.
async fn run_probed(
    p: Pipeline<WebhookSender<Scripted>>,
    rx: crate::queue::QueueRx,
    health: Health,
) -> (Duration, Probes) {
    let (probes, probing) = probe_liveness(health, Duration::from_secs(1));
    let start = Instant::now();
    p.run(rx, Drain::new(Shutdown::new(), Duration::from_secs(5)))
        .await;
    let took = Instant::now() - start;
    probing.abort();
    let seen = std::mem::take(&mut *probes.lock().unwrap());
    (took, seen)
}

/// Probes `health`'s liveness every `every` until aborted.
fn probe_liveness(
    health: Health,
    every: Duration,
) -> (Arc<Mutex<Probes>>, tokio::task::JoinHandle<()>) {
    let probes = Arc::new(Mutex::new(Probes::default()));
    let task = tokio::spawn({
        let probes = probes.clone();
        async move {
            let start = Instant::now();
            loop {
                tokio::time::sleep(every).await;
                let (alive, _) = health.live();
                let mut p = probes.lock().unwrap();
                p.samples += 1;
                if !alive {
                    p.failed.push(start.elapsed());
                }
            }
        }
    });
    (probes, task)
}

/// issue 16: a 429 whose `retry_after` (90 s) is three times the liveness
/// bound is a wait, not a wedge: `/livez` holds on every sample through it,
/// and the message goes once the wait is over. (Without the send's declared
/// bound in `send_batch`, liveness fails 30 s into the wait.)
#[tokio::test(start_paused = true)]
async fn liveness_holds_through_a_rate_limit_wait_longer_than_its_bound() {
    const RETRY_AFTER: Duration = Duration::from_secs(90);
    let dir = tempfile::tempdir().unwrap();
    let observer = Arc::new(Counts::default());
    let discord = Scripted::new(
        &[Answer::RateLimited(RETRY_AFTER)],
        Duration::from_millis(20),
    );
    let (tx, rx) = crate::queue::bounded(64, 1 << 20);
    feed(&tx, 0..3).await;
    drop(tx);
    let health = Health::new("test");
    let p = pipeline_with(
        dir.path(),
        &discord,
        &observer,
        10,
        Pace {
            channel_messages_per_minute: None,
            // The default: the 90 s wait is honoured, not dead-lettered.
            max_elapsed: Duration::from_secs(600),
        },
        health.heartbeat("pipeline", LIVENESS_SILENCE),
    );
    let (took, probes) = run_probed(p, rx, health).await;
    assert!(took >= RETRY_AFTER, "the 429's wait was honoured: {took:?}");
    assert!(probes.samples >= 90, "{} samples", probes.samples);
    assert!(
        probes.failed.is_empty(),
        "/livez failed at {:?} into a {RETRY_AFTER:?} rate-limit wait",
        probes.failed
    );
    assert_eq!(observer.rate_limited.load(Ordering::SeqCst), 1);
    assert_eq!(observer.dead_lettered.load(Ordering::SeqCst), 0);
    assert_eq!(deliveries(&discord.stored(), 3), [1, 1, 1]);
}

/// issue 16: waiting for the channel's window (here one message a minute,
/// each wait twice the liveness bound) keeps the loop alive on every sample.
/// (Without the permit wait's declared bound in `deliver_one`, liveness
/// fails 30 s into the first window.)
#[tokio::test(start_paused = true)]
async fn liveness_holds_through_channel_window_waits() {
    const LINES: u64 = 3;
    let dir = tempfile::tempdir().unwrap();
    let observer = Arc::new(Counts::default());
    let discord = Scripted::new(&[], Duration::from_millis(20));
    let (tx, rx) = crate::queue::bounded(64, 1 << 20);
    feed(&tx, 0..LINES).await;
    drop(tx);
    let health = Health::new("test");
    let p = pipeline_with(
        dir.path(),
        &discord,
        &observer,
        1,
        Pace {
            channel_messages_per_minute: Some(1),
            max_elapsed: Duration::from_secs(600),
        },
        health.heartbeat("pipeline", LIVENESS_SILENCE),
    );
    let (took, probes) = run_probed(p, rx, health).await;
    // The header, three lines and the summary: four waits of a window.
    let stored = discord.stored();
    assert_eq!(stored.len(), LINES as usize + 2, "{stored:?}");
    assert!(
        took >= Duration::from_secs(4 * 59),
        "every message waited for its window: {took:?}"
    );
    assert!(probes.samples >= 4 * 59, "{} samples", probes.samples);
    assert!(
        probes.failed.is_empty(),
        "/livez failed at {:?} while waiting for the channel window",
        probes.failed
    );
    assert_eq!(observer.dead_lettered.load(Ordering::SeqCst), 0);
    assert_eq!(deliveries(&stored, LINES), [1, 1, 1]);
}

/// issue 16: a slow disk is not a stuck loop. A checkpoint write that blocks
/// for six times the heartbeat's silence (real time: the write is
/// synchronous) keeps the loop alive through the write's declared bound
/// (`DISK_BOUND`), and liveness is still answered meanwhile by a task on the
/// runtime's other thread, as the ops server's `/livez` is. Without the bound
/// in `save`, liveness fails half a second into the stall; with the write
/// made on the worker itself (before `off_the_runtime`), no other task ran
/// during the stall at all (0 samples): the timers stood still.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn liveness_holds_while_a_checkpoint_write_stalls() {
    const SILENCE: Duration = Duration::from_millis(500);
    const STALL: Duration = Duration::from_secs(3);
    let dir = tempfile::tempdir().unwrap();
    let observer = Arc::new(Counts::default());
    *observer.stall_next_write.lock().unwrap() = Some(STALL);
    let discord = Scripted::new(&[], Duration::from_millis(1));
    let (tx, rx) = crate::queue::bounded(64, 1 << 20);
    feed(&tx, 0..3).await;
    let health = Health::new("test");
    let p = pipeline_with(
        dir.path(),
        &discord,
        &observer,
        10,
        Pace {
            channel_messages_per_minute: None,
            max_elapsed: MAX_ELAPSED,
        },
        health.heartbeat("pipeline", SILENCE),
    );
    // Probes liveness every 20 ms while the write stalls (the loop idles
    // between records with no beat for longer than this test's short
    // silence; only the stall is under test), until the stall is over.
    let probe = tokio::spawn({
        let observer = observer.clone();
        async move {
            let mut samples = 0usize;
            let mut failed = Vec::new();
            let mut stalled: Option<Instant> = None;
            loop {
                let stalling = observer.stalling.load(Ordering::SeqCst);
                let stall_over = observer.stall_next_write.lock().unwrap().is_none();
                if stalling {
                    let since = *stalled.get_or_insert_with(Instant::now);
                    samples += 1;
                    if !health.live().0 {
                        failed.push(since.elapsed());
                    }
                } else if stall_over {
                    return (samples, failed);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    let run = tokio::spawn(p.run(rx, Drain::new(Shutdown::new(), Duration::from_secs(5))));
    let (samples, failed) = tokio::time::timeout(STALL * 10, probe)
        .await
        .expect("the checkpoint write stalled and ended")
        .unwrap();
    drop(tx);
    run.await.unwrap();
    assert!(
        samples >= 50,
        "liveness was answered during the {STALL:?} stall: {samples} samples"
    );
    assert!(
        failed.is_empty(),
        "/livez failed at {:?} into a {STALL:?} checkpoint write",
        failed.first()
    );
    assert_eq!(deliveries(&discord.stored(), 3), [1, 1, 1]);
}
