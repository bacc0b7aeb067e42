//! A throwaway PostgreSQL cluster per test: `initdb` in a temporary folder, its own port, TLS on with a CA made for
//! it, password authentication over TCP; run as the `postgres` user when the test runs as root (PostgreSQL refuses
//! to run as root). Killed and removed when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use crate::{start_server, unique_name};

/// The superuser's name and password in every test cluster.
pub const PG_ADMIN: (&str, &str) = ("fleet", "fleet-admin-pw");

/// A running cluster.
#[derive(Debug)]
pub struct Postgres {
    child: Child,
    dir: PathBuf,
    /// TCP port on 127.0.0.1.
    pub port: u16,
    /// The CA that signed the server's certificate (PEM).
    pub ca_file: PathBuf,
    /// Another CA, which signed nothing of this server's (PEM): a client trusting only it must refuse the server.
    pub other_ca_file: PathBuf,
}

/// The folder of PostgreSQL's programs (`pg_config --bindir`).
pub fn pg_bindir() -> PathBuf {
    let out = Command::new("pg_config").arg("--bindir").output().expect("pg_config (Debian's postgresql package)");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `program` run as the `postgres` user when this process is root (setpriv execs in place: the child is the
/// program itself, so killing it kills the server).
fn as_owner(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=postgres", "--regid=postgres", "--init-groups", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// A CA (`<name>.crt`, `<name>.key`) in `dir`.
fn make_ca(dir: &Path, name: &str) {
    run(Command::new("openssl")
        .current_dir(dir)
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .args(["-keyout", &format!("{name}.key"), "-out", &format!("{name}.crt")])
        .args(["-subj", &format!("/CN=fleetlake test {name}")])
        .args(["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"]));
}

impl Postgres {
    /// Starts a cluster and waits until it accepts connections.
    pub async fn start() -> Postgres {
        let bin = pg_bindir();
        let dir = std::env::temp_dir().join(unique_name("fleetlake-pg"));
        std::fs::create_dir_all(&dir).expect("create the cluster's folder");
        /// Removes the cluster's folder unless the start went through (then the cluster's own drop does).
        struct Folder(Option<PathBuf>);
        impl Drop for Folder {
            fn drop(&mut self) {
                if let Some(dir) = &self.0 {
                    let _ = std::fs::remove_dir_all(dir);
                }
            }
        }
        let mut folder = Folder(Some(dir.clone()));
        // Certificates: a CA, a server certificate for 127.0.0.1 and localhost signed by it, and an unrelated CA.
        make_ca(&dir, "ca");
        make_ca(&dir, "other-ca");
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
        )
        .expect("write server.ext");
        run(Command::new("openssl").current_dir(&dir).args([
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ]));
        run(Command::new("openssl").current_dir(&dir).args([
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            "server.crt",
            "-extfile",
            "server.ext",
        ]));
        std::fs::write(dir.join("pw"), PG_ADMIN.1).expect("write the password file");
        if is_root() {
            run(Command::new("chown").args(["-R", "postgres:postgres"]).arg(&dir));
        }
        run(Command::new("chmod").arg("600").arg(dir.join("server.key")));
        run(as_owner(&bin.join("initdb"))
            .arg("-D")
            .arg(dir.join("data"))
            .args(["-U", PG_ADMIN.0, "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync", "-E", "UTF8"])
            .arg(format!("--pwfile={}", dir.join("pw").display())));
        let conf = format!(
            "listen_addresses = '127.0.0.1'\nunix_socket_directories = '{dir}'\nssl = on\n\
             ssl_cert_file = '{dir}/server.crt'\nssl_key_file = '{dir}/server.key'\nfsync = off\n\
             synchronous_commit = off\nfull_page_writes = off\nmax_connections = 40\nshared_buffers = 64MB\n",
            dir = dir.display()
        );
        let mut file = std::fs::read_to_string(dir.join("data/postgresql.conf")).expect("read postgresql.conf");
        file.push_str(&conf);
        std::fs::write(dir.join("data/postgresql.conf"), file).expect("write postgresql.conf");
        let (child, port) = start_server(
            "postgres",
            Duration::from_secs(60),
            |port| {
                let mut cmd = as_owner(&bin.join("postgres"));
                cmd.arg("-D").arg(dir.join("data")).args(["-p", &port.to_string()]);
                cmd
            },
            |port| async move {
                connect(port, PG_ADMIN.0, PG_ADMIN.1, "postgres").await.map(drop).map_err(|e| e.to_string())
            },
        )
        .await;
        folder.0 = None;
        Postgres { child, port, ca_file: dir.join("ca.crt"), other_ca_file: dir.join("other-ca.crt"), dir }
    }

    /// A connection as the superuser to `db` (without TLS: the test's own).
    pub async fn admin(&self, db: &str) -> tokio_postgres::Client {
        connect(self.port, PG_ADMIN.0, PG_ADMIN.1, db).await.expect("connect as the superuser")
    }

    /// A connection as `user` to `db`.
    pub async fn connect(&self, user: &str, password: &str, db: &str) -> tokio_postgres::Client {
        connect(self.port, user, password, db).await.expect("connect")
    }
}

/// A connection to the cluster on `port` (without TLS: the test's own).
async fn connect(
    port: u16,
    user: &str,
    password: &str,
    db: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(port)
        .user(user)
        .password(password)
        .dbname(db)
        .connect(tokio_postgres::NoTls)
        .await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
