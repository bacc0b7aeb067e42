//! pg-poller's handler: one scheduled run → per table, one poll in one snapshot: the versions changed since the
//! recorded cursor landed as changes (in `(updated_at, key)` order), versions outside any walk quarantined once,
//! deletes found by the periodic key comparison, then the next cursor state recorded create-only.
//!
//! Safe to run twice, late and concurrently: a version is identified by `(table, key, updated_at)`, so one landed
//! twice (a run that died before recording, two runs at once) is one row in bronze; two runs that start from the
//! same state cannot both record the next one, and the one that loses records nothing.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::DateTime;
use fleetlake_aws::quarantine::{QuarantineParts, QuarantineWriter, DEFAULT_PART_BYTES};
use fleetlake_aws::s3::{PutOutcome, S3Store};
use fleetlake_aws::Error as S3Error;
use fleetlake_core::cdc::Op;
use fleetlake_core::fault::{Classify, Fault};
use fleetlake_core::lake::landing_key_named;
use fleetlake_core::poll::{
    advance, change_line, delete_ts_ms, key_row, key_text, object_name, quarantine, record_version, row_object,
    KnownKeys, PollContext, PollSource, PollState, PollTable, MAX_KEYS_SINCE,
};
use fleetlake_runner::Invocation;
use serde_json::{json, Value};
use tracing::{error, info, warn};

use crate::config::{Auth, CaSource, Config, Tls};
use crate::pg::{self, PgError, Poll};
use crate::store::{GzLines, StateError, StateStore};
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};

/// The stage name in logs, metrics and quarantine keys.
pub(crate) const STAGE: &str = fleetlake_core::poll::STAGE;

/// A walk stops early, and records how far it came, when less than this is left of the invocation.
const TIME_MARGIN: Duration = Duration::from_secs(60);

/// Most versions outside the walk reported per run (the rest on later runs).
const MAX_OUTSIDE: usize = 10_000;

/// What stays across invocations.
pub(crate) struct Deps {
    pub(crate) config: Config,
    store: S3Store,
    secrets: aws_sdk_secretsmanager::Client,
    /// The function's own AWS credentials, for RDS IAM authentication tokens.
    aws_credentials: Option<SharedCredentialsProvider>,
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    quarantine: QuarantineWriter,
}

impl std::fmt::Debug for Deps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deps").field("config", &self.config).field("tls", &self.tls.is_some()).finish_non_exhaustive()
    }
}

/// A failed run.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PollError {
    #[error(transparent)]
    Pg(#[from] PgError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    S3(#[from] S3Error),
    #[error("tables failed: {message}")]
    Tables { message: String, retry: bool },
}

impl Classify for PollError {
    fn fault(&self) -> Fault {
        match self {
            PollError::Pg(e) if e.is_permanent() => Fault::Permanent,
            PollError::State(StateError::Corrupt { .. }) => Fault::Permanent,
            PollError::Tables { retry: false, .. } => Fault::Permanent,
            _ => Fault::Retryable,
        }
    }
}

impl Deps {
    /// The dependencies; the CA bundle is read here, once (a file, or an S3 object).
    pub(crate) async fn new(
        config: Config,
        store: S3Store,
        secrets: aws_sdk_secretsmanager::Client,
        aws_credentials: Option<SharedCredentialsProvider>,
    ) -> Result<Self, PgError> {
        let tls = match &config.tls {
            Tls::VerifyFull(CaSource::File(path)) => {
                let origin = path.display().to_string();
                let pem = std::fs::read(path)
                    .map_err(|e| PgError::CaBundle { path: origin.clone(), message: e.to_string() })?;
                Some(pg::tls_connector(&pem, &origin)?)
            }
            Tls::VerifyFull(CaSource::S3 { bucket, key }) => {
                let origin = format!("s3://{bucket}/{key}");
                let pem = S3Store::new(store.client().clone(), bucket.as_str())
                    .get_bytes(key)
                    .await
                    .map_err(|e| PgError::CaBundle { path: origin.clone(), message: e.to_string() })?;
                Some(pg::tls_connector(&pem, &origin)?)
            }
            Tls::Disable => None,
        };
        let quarantine = QuarantineWriter::new(store.clone(), config.lake.quarantine_prefix.clone(), STAGE);
        Ok(Self { config, store, secrets, aws_credentials, tls, quarantine })
    }

    /// The user and password of this run's connections: the secret's, or the IAM user with a new token.
    async fn credentials(&self) -> Result<pg::Credentials, PgError> {
        match &self.config.auth {
            Auth::Secret(secret_id) => pg::credentials(&self.secrets, secret_id).await,
            Auth::Iam { user, region } => {
                let err = |message: String| PgError::IamToken { user: user.clone(), message };
                let provider = self.aws_credentials.as_ref().ok_or_else(|| err("no AWS credentials".to_owned()))?;
                let aws = provider.provide_credentials().await.map_err(|e| err(e.to_string()))?;
                // Config::from_env requires PG_HOST with IAM authentication.
                let host = self.config.host.clone().unwrap_or_default();
                let port = self.config.port.unwrap_or(pg::DEFAULT_PORT);
                let token = pg::iam_token(&host, port, user, region, aws, std::time::SystemTime::now())?;
                Ok(pg::Credentials { username: user.clone(), password: token, host: None, port: None, dbname: None })
            }
        }
    }

    /// One run: every table, each in its own snapshot. A table that fails does not stop the others; the run then
    /// fails (retryable when any failure is) so the schedule's alarm sees it.
    pub(crate) async fn poll(&self, invocation: Arc<Invocation>) -> Result<Value, PollError> {
        let creds = self.credentials().await?;
        let mut client = pg::connect(&self.config, &creds, self.tls.as_ref()).await?;
        let mut reports = Vec::new();
        let mut failures: Vec<(String, PollError)> = Vec::new();
        for table in &self.config.tables {
            if client.is_closed() {
                // New credentials: an IAM token is accepted for new connections for 15 minutes only.
                let creds = self.credentials().await?;
                client = pg::connect(&self.config, &creds, self.tls.as_ref()).await?;
            }
            match self.poll_table(&mut client, table, &invocation).await {
                Ok(report) => reports.push(report),
                Err(e) => {
                    let message = fleetlake_runner::error_chain(&e);
                    error!(table = %table.table, error = %message, "poll failed; nothing of it was recorded");
                    invocation.add("tables_failed", 1);
                    failures.push((table.table.clone(), e));
                }
            }
        }
        match failures.len() {
            0 => Ok(json!({ "tables": reports })),
            1 => Err(failures
                .into_iter()
                .next()
                .map(|(_, e)| e)
                .unwrap_or(PollError::Tables { message: String::new(), retry: true })),
            _ => Err(PollError::Tables {
                retry: failures.iter().any(|(_, e)| e.fault() == Fault::Retryable),
                message: failures
                    .iter()
                    .map(|(t, e)| format!("{t}: {}", fleetlake_runner::error_chain(e)))
                    .collect::<Vec<_>>()
                    .join("; "),
            }),
        }
    }

    async fn poll_table(
        &self,
        client: &mut tokio_postgres::Client,
        table: &PollTable,
        invocation: &Invocation,
    ) -> Result<Value, PollError> {
        let cfg = &self.config;
        let states = StateStore::new(self.store.clone(), &cfg.state_prefix, &table.table);
        let prev = states.latest(&table.table).await?;
        let run = format!("r{:016x}", fastrand::u64(..));
        let overlap_us = i64::try_from(cfg.overlap.as_micros()).unwrap_or(i64::MAX);
        let (poll, times) = Poll::begin(client, table, cfg).await?;
        let ctx = PollContext { snapshot_us: times.now_us, window: cfg.lake.event_window };
        let dt = DateTime::from_timestamp_micros(times.now_us).unwrap_or_default().date_naive();
        let mut next = prev.clone();
        next.seq = prev.seq + 1;
        next.run.clone_from(&run);
        next.polled_at = Some(ctx.ingested_at());
        let mut out = Output::new(self, table, &next, dt);
        let mut known = Known { keys: None, states: &states };
        let mut quarantined = QuarantineParts::new(
            &self.quarantine,
            dt,
            format!("poll-{}-{:016}-{run}", table.table, next.seq),
            DEFAULT_PART_BYTES,
        );
        let mut n = Counts::default();

        // The walk.
        let start = prev.walk_start(overlap_us);
        // Versions before this are never read again once the cursor moves (see `advance`): not kept in memory.
        let remember_from = times.bound_us().saturating_sub(overlap_us);
        let mut pages = poll.walk(&start, ctx.walk_to_us(), cfg.page_rows).await?;
        let mut cut = None;
        let mut last = None;
        while let Some(rows) = poll.next_page(&mut pages).await? {
            for row in rows {
                n.read += 1;
                let version = (row.updated_at_us, row.key.clone());
                last = Some(version.clone());
                if prev.remembered.contains(&version) {
                    n.skipped += 1;
                    continue;
                }
                let key = key_text(&row.key);
                let object_key = out.object_key();
                let landed = match row_object(&row.row_json) {
                    Ok(map) => {
                        let op = if row.soft_deleted {
                            Op::Delete
                        } else if known.alive(&next, &key).await? {
                            Op::Update
                        } else {
                            Op::Create
                        };
                        change_line(table.spec, op, row.updated_at_us.div_euclid(1000), map, &object_key, &ctx)
                            .map(|line| (op, line))
                    }
                    Err(reason) => Err(reason),
                };
                match landed {
                    Ok((op, line)) => {
                        out.push(&line).await?;
                        record_version(&mut next, &row.key, &key, row.updated_at_us, Some(op), remember_from);
                        n.landed += 1;
                        if op == Op::Delete {
                            n.deletes += 1;
                        }
                    }
                    Err(reason) => {
                        let source = PollSource {
                            table: &table.table,
                            key: &row.key,
                            updated_at: pg::timestamp_text(row.updated_at_us),
                            poll: out.name(),
                        };
                        quarantined.push(quarantine(reason, &source, Some(row.row_json)));
                        quarantined.flush_if_full().await?;
                        record_version(&mut next, &row.key, &key, row.updated_at_us, None, remember_from);
                        n.quarantined += 1;
                    }
                }
            }
            if invocation.deadline().saturating_duration_since(Instant::now()) < TIME_MARGIN {
                warn!(table = %table.table, read = n.read, "the invocation is running out of time: the walk stops here and resumes from it");
                cut = last.clone();
                break;
            }
        }
        drop(pages);

        // Versions no walk reads: reported once each.
        let mut still_outside = std::collections::BTreeSet::new();
        let mut pages = poll.outside(ctx.walk_to_us(), cfg.page_rows).await?;
        'outside: while let Some(rows) = poll.next_page(&mut pages).await? {
            for (key, updated_at, row) in rows {
                if still_outside.len() >= MAX_OUTSIDE {
                    warn!(table = %table.table, "more than {MAX_OUTSIDE} versions outside the walk; the rest are reported later");
                    break 'outside;
                }
                let id = (key_text(&key), updated_at.clone());
                if !prev.quarantined_outside.contains(&id) {
                    let reason = format!(
                        "{}: {updated_at} is not a time from the year 1 to {} h after the poll; the version is never walked",
                        cfg.updated_at,
                        ctx.window.max_ahead_s / 3600
                    );
                    let source = PollSource { table: &table.table, key: &key, updated_at, poll: out.name() };
                    quarantined.push(quarantine(reason, &source, Some(row)));
                    quarantined.flush_if_full().await?;
                    n.quarantined += 1;
                }
                still_outside.insert(id);
            }
        }
        drop(pages);
        next.quarantined_outside = still_outside;

        // Deletes: every known key the table no longer holds, when the comparison is due, after a complete walk,
        // and while the invocation has time (a comparison that runs short is dropped whole and tried again).
        let due = next.keys_due(times.now_us, i64::try_from(cfg.key_check.as_micros()).unwrap_or(i64::MAX));
        let mut compared = false;
        if due && cut.is_none() {
            let mut alive = known.take_all(&next).await?;
            let mut snapshot = GzLines::new();
            let mut pages = poll.keys(cfg.page_rows).await?;
            let mut complete = true;
            while let Some(keys) = poll.next_page(&mut pages).await? {
                for (parts, updated_at_us) in keys {
                    let key = key_text(&parts);
                    alive.remove(&key);
                    snapshot.push_key(&key, updated_at_us).map_err(S3Error::Encode)?;
                    n.keys_listed += 1;
                }
                if invocation.deadline().saturating_duration_since(Instant::now()) < TIME_MARGIN {
                    warn!(table = %table.table, listed = n.keys_listed, "the invocation is running out of time: the key comparison is left for a later run");
                    invocation.add("key_comparisons_cut", 1);
                    complete = false;
                    break;
                }
            }
            drop(pages);
            if complete {
                let mut gone: Vec<(String, i64)> = alive.into_iter().collect();
                gone.sort();
                for (key, last_us) in gone {
                    let parts: Vec<String> = serde_json::from_str(&key).unwrap_or_default();
                    let object_key = out.object_key();
                    let ts_ms = delete_ts_ms(&next, last_us);
                    match change_line(table.spec, Op::Delete, ts_ms, key_row(table, &parts), &object_key, &ctx) {
                        Ok(line) => {
                            out.push(&line).await?;
                            n.landed += 1;
                            n.deletes += 1;
                        }
                        Err(reason) => {
                            let source = PollSource {
                                table: &table.table,
                                key: &parts,
                                updated_at: String::new(),
                                poll: out.name(),
                            };
                            quarantined.push(quarantine(reason, &source, None));
                            n.quarantined += 1;
                        }
                    }
                }
                states.record_keys(&mut next, snapshot).await?;
                next.keys_compared_us = Some(times.now_us);
                compared = true;
            }
        }
        poll.finish().await?;

        // A state that would carry too many keys folds them into a snapshot of its own.
        if next.keys_since.len() + next.deleted_since.len() > MAX_KEYS_SINCE {
            let mut sorted: Vec<(String, i64)> = known.all(&next).await?.into_iter().collect();
            sorted.sort();
            let mut snapshot = GzLines::new();
            for (key, us) in &sorted {
                snapshot.push_key(key, *us).map_err(S3Error::Encode)?;
            }
            states.record_keys(&mut next, snapshot).await?;
        }

        let objects = out.finish().await?;
        let quarantine_lines = quarantined.finish().await?;
        advance(&mut next, times.bound_us(), cut.clone(), overlap_us);
        let lag_s = times.now_us.saturating_sub(times.bound_us()) / 1_000_000;
        invocation.add("rows_read", n.read);
        invocation.add("changes_landed", n.landed);
        invocation.add("deletes_landed", n.deletes);
        invocation.add("versions_skipped", n.skipped);
        invocation.add("rows_quarantined", n.quarantined);
        invocation.add("objects_written", objects.len() as u64);
        invocation.add("keys_listed", n.keys_listed);
        invocation.property(&format!("cursor_lag_s.{}", table.table), lag_s);

        // Nothing new: nothing written at all (the cursor moves on the next run that lands something).
        let unchanged = n.landed == 0
            && quarantine_lines == 0
            && !compared
            && next.quarantined_outside == prev.quarantined_outside
            && cut.is_none();
        let recorded = if unchanged { false } else { states.record(&next).await? };
        if !unchanged && !recorded {
            warn!(table = %table.table, seq = next.seq, "another run recorded this state first; this run's changes are duplicates bronze drops");
            invocation.add("runs_superseded", 1);
        }
        if recorded {
            states.prune(&next, cfg.keep_states).await;
        }
        let report = json!({
            "table": table.table,
            "seq": if recorded { next.seq } else { prev.seq },
            "recorded": recorded,
            "superseded": !unchanged && !recorded,
            "rows_read": n.read,
            "changes_landed": n.landed,
            "deletes_landed": n.deletes,
            "versions_skipped": n.skipped,
            "quarantined": n.quarantined,
            "keys_compared": compared,
            "keys_listed": n.keys_listed,
            "walk_cut_short": cut.is_some(),
            "objects": objects,
            "cursor": next.cursor,
            "cursor_lag_s": lag_s,
        });
        info!(table = %table.table, report = %report, "polled");
        Ok(report)
    }
}

#[derive(Debug, Default)]
struct Counts {
    read: u64,
    landed: u64,
    deletes: u64,
    skipped: u64,
    quarantined: u64,
    keys_listed: u64,
}

/// The keys known from the last snapshot, read when first needed.
struct Known<'a> {
    keys: Option<KnownKeys>,
    states: &'a StateStore,
}

impl Known<'_> {
    async fn load(&mut self, state: &PollState) -> Result<&KnownKeys, StateError> {
        if self.keys.is_none() {
            let snapshot = match &state.key_snapshot {
                Some(key) => self.states.read_keys(key).await?,
                None => HashMap::new(),
            };
            self.keys = Some(KnownKeys { snapshot });
        }
        Ok(self.keys.get_or_insert_with(KnownKeys::default))
    }

    /// Whether `key` was landed before and not deleted since (`u` rather than `c`).
    async fn alive(&mut self, state: &PollState, key: &str) -> Result<bool, StateError> {
        if state.keys_since.contains_key(key) {
            return Ok(true);
        }
        if state.deleted_since.contains(key) || state.key_snapshot.is_none() {
            return Ok(false);
        }
        Ok(self.load(state).await?.alive(state, key))
    }

    /// Every key known alive, with the last `updated_at` known of it.
    async fn all(&mut self, state: &PollState) -> Result<HashMap<String, i64>, StateError> {
        Ok(self.load(state).await?.all(state))
    }

    /// [`Known::all`], handing over the snapshot's keys instead of copying them (nothing asks afterwards).
    async fn take_all(&mut self, state: &PollState) -> Result<HashMap<String, i64>, StateError> {
        self.load(state).await?;
        Ok(self.keys.take().unwrap_or_default().into_all(state))
    }
}

/// The landed objects of one table's run, `object_rows` lines each.
struct Output<'a> {
    deps: &'a Deps,
    table: &'a PollTable,
    seq: u64,
    run: String,
    dt: chrono::NaiveDate,
    part: u32,
    lines: GzLines,
    written: Vec<String>,
}

impl<'a> Output<'a> {
    fn new(deps: &'a Deps, table: &'a PollTable, next: &PollState, dt: chrono::NaiveDate) -> Self {
        Self {
            deps,
            table,
            seq: next.seq,
            run: next.run.clone(),
            dt,
            part: 0,
            lines: GzLines::new(),
            written: Vec::new(),
        }
    }

    fn name(&self) -> String {
        object_name(&self.table.table, self.seq, &self.run, self.part).to_string()
    }

    fn object_key(&self) -> String {
        landing_key_named(&self.deps.config.lake.landing_prefix, &self.table.dataset, self.dt, &self.name())
    }

    async fn push(&mut self, line: &[u8]) -> Result<(), S3Error> {
        self.lines.push(line).map_err(S3Error::Encode)?;
        if self.lines.lines >= self.deps.config.object_rows {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), S3Error> {
        if self.lines.lines == 0 {
            return Ok(());
        }
        let key = self.object_key();
        let body = std::mem::replace(&mut self.lines, GzLines::new()).finish().map_err(S3Error::Encode)?;
        // The run's own name: an object already there is another run's, which cannot be.
        match self.deps.store.put_if_absent(&key, body, "application/gzip").await? {
            PutOutcome::Created => {}
            PutOutcome::AlreadyExists => warn!(key = %key, "a landed object of this run's name was already there"),
        }
        info!(key = %key, "landed");
        self.written.push(key);
        self.part += 1;
        Ok(())
    }

    async fn finish(mut self) -> Result<Vec<String>, S3Error> {
        self.flush().await?;
        Ok(self.written)
    }
}
