//! The PostgreSQL side: credentials from Secrets Manager or an RDS IAM authentication token, a TLS connection
//! (rustls), and one poll of one table in
//! one read-only `REPEATABLE READ` transaction, so every statement of the poll sees the same snapshot. Rows are
//! read through server-side cursors (portals) a page at a time: memory is bounded by a page, not by the table.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fleetlake_core::poll::{PollTable, PolledRow, MIN_WALK_US};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use serde::Deserialize;
use tokio_postgres::{Client, IsolationLevel, Row, Transaction};
use tracing::{info, warn};

use crate::config::{Config, Tls};

/// A failure of the database side, split by whether the run could succeed if retried.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PgError {
    /// The secret could not be read (`format`: it was read and is not in the RDS format).
    #[error("reading the database secret {secret}: {message}")]
    Secret { secret: String, message: String, format: bool },
    /// The CA bundle could not be read.
    #[error("reading the CA bundle {path}: {message}")]
    CaBundle { path: String, message: String },
    /// Connecting (TCP, TLS, authentication) failed.
    #[error("connecting to PostgreSQL at {host}:{port} as {user}: {source}")]
    Connect {
        host: String,
        port: u16,
        user: String,
        #[source]
        source: tokio_postgres::Error,
    },
    /// A statement failed (a lost connection, a timeout, a missing table or column).
    #[error("{what} of {table}: {source}")]
    Query {
        what: &'static str,
        table: String,
        #[source]
        source: tokio_postgres::Error,
    },
    /// The role cannot see other sessions' transactions, so the cursor could pass a transaction still open.
    #[error(
        "the role {user} cannot see other sessions' transaction start times: grant it pg_read_all_stats (GRANT pg_read_all_stats TO {user}) so the cursor never passes an open transaction"
    )]
    NoStats { user: String },
    /// The role may not read the table.
    #[error("the role {user} may not SELECT from {table}: GRANT SELECT ON {table} TO {user}")]
    NoSelect { user: String, table: String },
    /// The table lacks a column the poll needs.
    #[error("{table} has no column {column}")]
    MissingColumn { table: String, column: String },
    /// No RDS IAM authentication token could be made (the function's AWS credentials could not be had).
    #[error("making an RDS IAM authentication token for {user}: {message}")]
    IamToken { user: String, message: String },
}

impl PgError {
    /// Whether running again cannot help: a missing privilege, table, column or operator (SQLSTATE classes 42 and
    /// 3F), a secret in another format, a role that cannot see open transactions, an unreadable CA bundle.
    pub(crate) fn is_permanent(&self) -> bool {
        match self {
            PgError::NoStats { .. }
            | PgError::NoSelect { .. }
            | PgError::MissingColumn { .. }
            | PgError::CaBundle { .. } => true,
            PgError::Secret { format, .. } => *format,
            PgError::Query { source, .. } => {
                source.code().is_some_and(|c| c.code().starts_with("42") || c.code().starts_with("3F"))
            }
            PgError::Connect { .. } | PgError::IamToken { .. } => false,
        }
    }
}

/// Credentials and address, from the secret and the variables that override it.
#[derive(Clone, Deserialize)]
pub(crate) struct Credentials {
    pub(crate) username: String,
    pub(crate) password: String,
    #[serde(default)]
    pub(crate) host: Option<String>,
    #[serde(default, deserialize_with = "port_number_or_text")]
    pub(crate) port: Option<u16>,
    #[serde(default)]
    pub(crate) dbname: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("dbname", &self.dbname)
            .finish_non_exhaustive()
    }
}

/// RDS secrets hold the port as a number; hand-made ones often as text.
fn port_number_or_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u16>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Port {
        Number(u16),
        Text(String),
    }
    match Option::<Port>::deserialize(d)? {
        None => Ok(None),
        Some(Port::Number(n)) => Ok(Some(n)),
        Some(Port::Text(t)) => t.parse().map(Some).map_err(serde::de::Error::custom),
    }
}

/// PostgreSQL's port when neither `PG_PORT` nor the secret names one.
pub(crate) const DEFAULT_PORT: u16 = 5432;

/// How long an RDS IAM authentication token is accepted for a new connection (RDS's limit: 15 minutes).
const IAM_TOKEN_LIFETIME: Duration = Duration::from_secs(900);

/// An RDS IAM authentication token for `user` at `host:port`: the password of an IAM-authenticated connection
/// (TLS required). It is a SigV4 presigned request of the `rds-db` service's `connect` action, signed with the
/// function's credentials at `at`, without its `https://` scheme. No call is made: RDS checks it when the
/// connection authenticates, against the role's `rds-db:connect` grant.
pub(crate) fn iam_token(
    host: &str,
    port: u16,
    user: &str,
    region: &str,
    credentials: aws_credential_types::Credentials,
    at: SystemTime,
) -> Result<String, PgError> {
    use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SignatureLocation, SigningSettings};
    let err = |message: String| PgError::IamToken { user: user.to_owned(), message };
    let address = format!("{host}:{port}/?Action=connect&DBUser={}", sigv4_encode(user));
    let identity = aws_smithy_runtime_api::client::identity::Identity::from(credentials);
    let mut settings = SigningSettings::default();
    settings.signature_location = SignatureLocation::QueryParams;
    settings.expires_in = Some(IAM_TOKEN_LIFETIME);
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("rds-db")
        .time(at)
        .settings(settings)
        .build()
        .map_err(|e| err(e.to_string()))?
        .into();
    let url = format!("https://{address}");
    let request = SignableRequest::new("GET", url.as_str(), std::iter::empty(), SignableBody::Bytes(&[]))
        .map_err(|e| err(e.to_string()))?;
    let (instructions, _) = sign(request, &params).map_err(|e| err(e.to_string()))?.into_parts();
    let mut token = address;
    for (name, value) in instructions.params() {
        token.push('&');
        token.push_str(name);
        token.push('=');
        token.push_str(&sigv4_encode(value));
    }
    Ok(token)
}

/// Percent-encoding as SigV4 canonicalises a query: every byte but `A-Z a-z 0-9 - _ . ~`.
fn sigv4_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Reads the secret (`SecretString` JSON in the RDS format).
pub(crate) async fn credentials(
    secrets: &aws_sdk_secretsmanager::Client,
    secret_id: &str,
) -> Result<Credentials, PgError> {
    let err = |message: String, format: bool| PgError::Secret { secret: secret_id.to_owned(), message, format };
    let out = secrets
        .get_secret_value()
        .secret_id(secret_id)
        .send()
        .await
        .map_err(|e| err(aws_sdk_secretsmanager::Error::from(e).to_string(), false))?;
    let text = out.secret_string().ok_or_else(|| err("the secret has no SecretString".to_owned(), true))?;
    serde_json::from_str(text)
        .map_err(|e| err(format!("not the RDS secret format ({{username, password, …}}): {e}"), true))
}

/// A TLS connector trusting only the certificates of the PEM CA bundle `pem` (the RDS bundle in production),
/// read from `origin` (named in errors).
pub(crate) fn tls_connector(pem: &[u8], origin: &str) -> Result<tokio_postgres_rustls::MakeRustlsConnect, PgError> {
    let err = |message: String| PgError::CaBundle { path: origin.to_owned(), message };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        roots.add(cert.map_err(|e| err(e.to_string()))?).map_err(|e| err(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(err("holds no certificate".to_owned()));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| err(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// Connects with the session settings every poll relies on: UTC, ISO dates, a statement timeout, and a name the
/// database's operators can see in `pg_stat_activity`.
pub(crate) async fn connect(
    config: &Config,
    creds: &Credentials,
    tls: Option<&tokio_postgres_rustls::MakeRustlsConnect>,
) -> Result<Client, PgError> {
    let host = config.host.clone().or_else(|| creds.host.clone()).unwrap_or_else(|| "localhost".to_owned());
    let port = config.port.or(creds.port).unwrap_or(DEFAULT_PORT);
    let mut pg = tokio_postgres::Config::new();
    pg.host(&host)
        .port(port)
        .user(&creds.username)
        .password(&creds.password)
        .application_name("fleetlake-pg-poller")
        .connect_timeout(config.connect_timeout);
    if let Some(db) = config.database.as_ref().or(creds.dbname.as_ref()) {
        pg.dbname(db);
    }
    let connect_err = |source| PgError::Connect { host: host.clone(), port, user: creds.username.clone(), source };
    let client = match (tls, &config.tls) {
        (Some(tls), _) => {
            pg.ssl_mode(tokio_postgres::config::SslMode::Require);
            let (client, connection) = pg.connect(tls.clone()).await.map_err(connect_err)?;
            spawn_connection(connection);
            client
        }
        (None, Tls::Disable) => {
            pg.ssl_mode(tokio_postgres::config::SslMode::Disable);
            let (client, connection) = pg.connect(tokio_postgres::NoTls).await.map_err(connect_err)?;
            spawn_connection(connection);
            client
        }
        (None, Tls::VerifyFull(_)) => unreachable!("a verify-full configuration always builds its connector"),
    };
    let timeout_ms = config.statement_timeout.as_millis().min(i32::MAX as u128);
    let setup = format!(
        "SET TIME ZONE 'UTC'; SET DateStyle = 'ISO, YMD'; SET statement_timeout = {timeout_ms}; \
         SET idle_in_transaction_session_timeout = {timeout_ms}"
    );
    client.batch_execute(&setup).await.map_err(connect_err)?;
    info!(host = %host, port, "connected to PostgreSQL");
    Ok(client)
}

fn spawn_connection<S, T>(connection: tokio_postgres::Connection<S, T>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            warn!(error = %e, "PostgreSQL connection ended with an error");
        }
    });
}

/// What the poll knows of time, µs since the epoch.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SnapshotTimes {
    /// The snapshot's `now()`.
    pub(crate) now_us: i64,
    /// When the open transactions were read, just before the snapshot was taken.
    pub(crate) seen_at_us: i64,
    /// The start of the oldest transaction open then (another session's, or a prepared one).
    pub(crate) oldest_open_us: Option<i64>,
}

impl SnapshotTimes {
    /// How far the cursor may move: every version with an earlier `updated_at` was committed before the
    /// snapshot, if `updated_at` is never older than its transaction's start.
    pub(crate) fn bound_us(&self) -> i64 {
        let bound = self.seen_at_us.min(self.now_us);
        self.oldest_open_us.map_or(bound, |o| o.min(bound))
    }
}

/// The shape of one polled table as the database holds it.
#[derive(Debug, Clone)]
pub(crate) struct TableShape {
    /// The soft-delete column and whether it is boolean, when the table has one.
    soft_delete: Option<(String, bool)>,
}

/// One poll of one table: a read-only `REPEATABLE READ` transaction.
pub(crate) struct Poll<'a> {
    tx: Transaction<'a>,
    table: &'a PollTable,
    updated_at: &'a str,
    shape: TableShape,
}

impl std::fmt::Debug for Poll<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Poll").field("table", &self.table.table).finish_non_exhaustive()
    }
}

/// `'0001-01-01 …'` style literal of µs since the epoch, as `timestamptz` text PostgreSQL parses exactly.
pub(crate) fn timestamp_text(us: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_micros(us)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%S%.6f+00:00")
        .to_string()
}

impl<'a> Poll<'a> {
    /// Starts the transaction, takes the snapshot and reads the table's shape.
    pub(crate) async fn begin(
        client: &'a mut Client,
        table: &'a PollTable,
        config: &'a Config,
    ) -> Result<(Poll<'a>, SnapshotTimes), PgError> {
        let q = |what: &'static str| {
            let table = table.table.clone();
            move |source| PgError::Query { what, table, source }
        };
        // Before the snapshot: the time, and the start of the oldest transaction of this database still open in
        // another session (a prepared one counts from its PREPARE, the latest its start can be known). Read
        // first, so a transaction that commits between this read and the snapshot is one the snapshot sees, and
        // every transaction the snapshot cannot see either started after `seen_at` or is among those counted.
        // Background workers and other databases' sessions cannot write this table's rows.
        let row = client
            .query_one(
                "SELECT floor(extract(epoch FROM clock_timestamp()) * 1000000)::int8, \
                        floor(extract(epoch FROM least( \
                          (SELECT min(xact_start) FROM pg_stat_activity \
                            WHERE xact_start IS NOT NULL AND pid <> pg_backend_pid() \
                              AND datname = current_database() AND backend_type = 'client backend'), \
                          (SELECT min(prepared) FROM pg_prepared_xacts WHERE database = current_database()) \
                        )) * 1000000)::int8, \
                        (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) \
                          OR pg_has_role(current_user, 'pg_read_all_stats', 'MEMBER'), \
                        current_user::text, \
                        has_table_privilege(current_user, $1::text, 'SELECT')",
                &[&table.table],
            )
            .await
            .map_err(q("reading the open transactions"))?;
        let (seen_at_us, oldest_open_us): (i64, Option<i64>) = (row.get(0), row.get(1));
        let user: String = row.get(3);
        if !row.get::<_, Option<bool>>(2).unwrap_or(false) {
            return Err(PgError::NoStats { user });
        }
        if !row.get::<_, Option<bool>>(4).unwrap_or(false) {
            return Err(PgError::NoSelect { user, table: table.table.clone() });
        }
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(q("starting the poll's transaction"))?;
        // The first statement takes the snapshot.
        let row = tx
            .query_one("SELECT floor(extract(epoch FROM now()) * 1000000)::int8", &[])
            .await
            .map_err(q("taking the snapshot"))?;
        let times = SnapshotTimes { now_us: row.get(0), seen_at_us, oldest_open_us };
        let (schema, name) = table.table.split_once('.').unwrap_or(("public", &table.table));
        let columns = tx
            .query(
                "SELECT column_name::text, data_type::text FROM information_schema.columns \
                  WHERE table_schema = $1 AND table_name = $2",
                &[&schema, &name],
            )
            .await
            .map_err(q("reading the columns"))?;
        let column = |c: &str| columns.iter().find(|r| r.get::<_, String>(0) == c).map(|r| r.get::<_, String>(1));
        for c in table.key_columns().iter().copied().chain([config.updated_at.as_str()]) {
            if column(c).is_none() {
                return Err(PgError::MissingColumn { table: table.table.clone(), column: c.to_owned() });
            }
        }
        let soft_delete = column(&config.soft_delete).map(|t| (config.soft_delete.clone(), t == "boolean"));
        let shape = TableShape { soft_delete };
        Ok((Poll { tx, table, updated_at: &config.updated_at, shape }, times))
    }

    /// The key columns as text in byte order: how the walk and the key listing order rows.
    fn key_exprs(&self) -> Vec<String> {
        self.table.key_columns().iter().map(|k| format!("t.{k}::text COLLATE \"C\"")).collect()
    }

    fn soft_deleted_expr(&self) -> String {
        match &self.shape.soft_delete {
            Some((c, true)) => format!("coalesce(t.{c}, false)"),
            Some((c, false)) => format!("t.{c} IS NOT NULL"),
            None => "false".to_owned(),
        }
    }

    /// The walk: every version from `start` (inclusive, in `(updated_at, key)` order; an empty key is "every key at
    /// that time") with `updated_at <= to_us`, in that order, read a page at a time with [`Poll::next_page`].
    pub(crate) async fn walk(
        &self,
        start: &(i64, Vec<String>),
        to_us: i64,
        page: usize,
    ) -> Result<Pages<PolledRow>, PgError> {
        let u = self.updated_at;
        let keys = self.key_exprs();
        let from = if start.1.is_empty() {
            format!("t.{u} >= $1::text::timestamptz")
        } else {
            let params: Vec<String> = (0..keys.len()).map(|i| format!("${}::text COLLATE \"C\"", i + 3)).collect();
            format!("(t.{u}, {}) >= ($1::text::timestamptz, {})", keys.join(", "), params.join(", "))
        };
        let sql = format!(
            "SELECT {keys}, floor(extract(epoch FROM t.{u}) * 1000000)::int8, row_to_json(t)::text, {soft} \
               FROM {table} t \
              WHERE {from} AND t.{u} <= $2::text::timestamptz \
              ORDER BY t.{u}, {keys}",
            keys = keys.join(", "),
            soft = self.soft_deleted_expr(),
            table = self.table.table,
        );
        let bounds = [timestamp_text(start.0.max(MIN_WALK_US)), timestamp_text(to_us)];
        let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![&bounds[0], &bounds[1]];
        if !start.1.is_empty() {
            params.extend(start.1.iter().map(|k| k as &(dyn tokio_postgres::types::ToSql + Sync)));
        }
        self.open(&sql, &params, page, "walking", |row| {
            let n = row.len() - 3;
            PolledRow {
                key: (0..n).map(|i| row.get::<_, Option<String>>(i).unwrap_or_default()).collect(),
                updated_at_us: row.get(n),
                row_json: row.get(n + 1),
                soft_deleted: row.get::<_, Option<bool>>(n + 2).unwrap_or(false),
            }
        })
        .await
    }

    /// Versions outside any walk: `updated_at` null, before the year 1 (BC, `-infinity`) or after `to_us`
    /// (`infinity`, a clock far ahead): `(key, updated_at as text, row JSON)`, read a page at a time.
    pub(crate) async fn outside(
        &self,
        to_us: i64,
        page: usize,
    ) -> Result<Pages<(Vec<String>, String, String)>, PgError> {
        let u = self.updated_at;
        let keys = self.key_exprs();
        let sql = format!(
            "SELECT {keys}, t.{u}::text, row_to_json(t)::text FROM {table} t \
              WHERE t.{u} IS NULL OR t.{u} < $1::text::timestamptz OR t.{u} > $2::text::timestamptz \
              ORDER BY {keys}",
            keys = keys.join(", "),
            table = self.table.table,
        );
        let bounds = [timestamp_text(MIN_WALK_US), timestamp_text(to_us)];
        self.open(&sql, &[&bounds[0], &bounds[1]], page, "reading versions outside the walk", |row| {
            let n = row.len() - 2;
            let key = (0..n).map(|i| row.get::<_, Option<String>>(i).unwrap_or_default()).collect();
            (key, row.get::<_, Option<String>>(n).unwrap_or_else(|| "null".to_owned()), row.get(n + 1))
        })
        .await
    }

    /// Every key of a row that is not soft-deleted, in byte order, with its `updated_at` (µs; 0 when it is not a
    /// finite time), read a page at a time with [`Poll::next_page`].
    pub(crate) async fn keys(&self, page: usize) -> Result<Pages<(Vec<String>, i64)>, PgError> {
        let u = self.updated_at;
        let keys = self.key_exprs();
        let sql = format!(
            "SELECT {keys}, CASE WHEN isfinite(t.{u}) THEN floor(extract(epoch FROM t.{u}) * 1000000)::int8 END \
               FROM {table} t WHERE NOT ({soft}) ORDER BY {keys}",
            keys = keys.join(", "),
            soft = self.soft_deleted_expr(),
            table = self.table.table,
        );
        self.open(&sql, &[], page, "listing the keys", |row| {
            let n = row.len() - 1;
            let key = (0..n).map(|i| row.get::<_, Option<String>>(i).unwrap_or_default()).collect();
            (key, row.get::<_, Option<i64>>(n).unwrap_or(0))
        })
        .await
    }

    /// Opens a portal (a server-side cursor) on `sql`.
    async fn open<T>(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
        page: usize,
        what: &'static str,
        map: fn(&Row) -> T,
    ) -> Result<Pages<T>, PgError> {
        let err = |source| PgError::Query { what, table: self.table.table.clone(), source };
        let statement = self.tx.prepare(sql).await.map_err(err)?;
        let portal = self.tx.bind(&statement, params).await.map_err(err)?;
        Ok(Pages { portal, page: i32::try_from(page).unwrap_or(i32::MAX), what, map, done: false })
    }

    /// The next page of `pages`; `None` once every row was read.
    pub(crate) async fn next_page<T>(&self, pages: &mut Pages<T>) -> Result<Option<Vec<T>>, PgError> {
        if pages.done {
            return Ok(None);
        }
        let rows = self.tx.query_portal(&pages.portal, pages.page).await.map_err(|source| PgError::Query {
            what: pages.what,
            table: self.table.table.clone(),
            source,
        })?;
        pages.done = rows.len() < usize::try_from(pages.page).unwrap_or(usize::MAX);
        Ok((!rows.is_empty()).then(|| rows.iter().map(pages.map).collect()))
    }

    /// Ends the read-only transaction.
    pub(crate) async fn finish(self) -> Result<(), PgError> {
        let table = self.table.table.clone();
        self.tx.commit().await.map_err(|source| PgError::Query { what: "ending the poll's transaction", table, source })
    }
}

/// A statement read through a portal, a page at a time.
pub(crate) struct Pages<T> {
    portal: tokio_postgres::Portal,
    page: i32,
    what: &'static str,
    map: fn(&Row) -> T,
    done: bool,
}

impl<T> std::fmt::Debug for Pages<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pages").field("what", &self.what).field("done", &self.done).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    /// The token botocore (the AWS SDK for Python, a signer written independently of the Rust one) makes for the
    /// same request, credentials and time.
    fn botocore_token(host: &str, port: u16, user: &str, region: &str, key: &str, secret: &str, token: &str) -> String {
        let script = r#"
import datetime, sys
from unittest import mock
import botocore.session
host, port, user, region, key, secret, token, at = sys.argv[1:]
fixed = datetime.datetime.fromtimestamp(int(at), datetime.timezone.utc)
class Frozen(datetime.datetime):
    @classmethod
    def utcnow(cls):
        return fixed.replace(tzinfo=None)
    @classmethod
    def now(cls, tz=None):
        return fixed if tz else fixed.replace(tzinfo=None)
client = botocore.session.Session().create_client("rds", region_name=region, aws_access_key_id=key,
                                                   aws_secret_access_key=secret, aws_session_token=token or None)
with mock.patch.object(datetime, "datetime", Frozen):
    print(client.generate_db_auth_token(host, int(port), user, region))
"#;
        let out = std::process::Command::new(fleetlake_testkit::venv_bin("python"))
            .args(["-c", script, host, &port.to_string(), user, region, key, secret, token, "1764892800"])
            .output()
            .expect("run the venv's python (make venv)");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// A token as the address and its query parameters, in order of name.
    fn parts(token: &str) -> (String, Vec<String>) {
        let (address, query) = token.split_once("/?").expect("a token is an address and a query");
        let mut params: Vec<String> = query.split('&').map(str::to_owned).collect();
        params.sort();
        (address.to_owned(), params)
    }

    #[test]
    fn an_iam_token_is_the_signed_connect_request_botocore_makes() {
        let at = UNIX_EPOCH + Duration::from_secs(1_764_892_800);
        let (host, region, key, secret) = (
            "fleet.c9akciq32.eu-west-1.rds.amazonaws.com",
            "eu-west-1",
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        );
        for (user, session) in [("fleetlake_poller", ""), ("poller-2", "IQoJb3JpZ2luX2VjEFAaCXVzLWVhc3QtMSJHMEUCIQ+/=")]
        {
            let creds = aws_credential_types::Credentials::new(
                key,
                secret,
                (!session.is_empty()).then(|| session.to_owned()),
                None,
                "test",
            );
            let ours = iam_token(host, 5432, user, region, creds, at).unwrap();
            let theirs = botocore_token(host, 5432, user, region, key, secret, session);
            assert_eq!(parts(&ours), parts(&theirs), "ours {ours}\ntheirs {theirs}");
            assert!(ours.starts_with(&format!("{host}:5432/?Action=connect&DBUser={user}&")), "{ours}");
            assert!(ours.contains("X-Amz-Expires=900"), "{ours}");
            assert_eq!(ours.contains("X-Amz-Security-Token="), !session.is_empty(), "{ours}");
        }
        // Another time, another signature: a token is not reusable beyond its 15 minutes.
        let creds = aws_credential_types::Credentials::new(key, secret, None, None, "test");
        let later = iam_token(host, 5432, "fleetlake_poller", region, creds, at + Duration::from_secs(60)).unwrap();
        let creds = aws_credential_types::Credentials::new(key, secret, None, None, "test");
        assert_ne!(later, iam_token(host, 5432, "fleetlake_poller", region, creds, at).unwrap());
    }
}
