//! PostgreSQL for tests: throw-away databases on the machine's server (127.0.0.1:5432,
//! trust auth), and private servers ([`PostgresServer`]: `initdb` in a temp dir, a
//! reserved port) that a fault test may stop, start and restart without cutting anyone
//! else's connections.

use crate::process::ChildGuard;
use crate::random_hex;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// Where the admin connection goes; overridable for other machines.
fn pg_host() -> String {
    std::env::var("MESHPASS_PG_HOST").unwrap_or_else(|_| "127.0.0.1".into())
}
fn pg_port() -> String {
    std::env::var("MESHPASS_PG_PORT").unwrap_or_else(|_| "5432".into())
}
fn pg_user() -> String {
    std::env::var("MESHPASS_PG_USER").unwrap_or_else(|_| "postgres".into())
}

/// Where `psql` connects: the machine's server or a [`PostgresServer`].
#[derive(Clone, Debug)]
struct Target {
    psql: PathBuf,
    host: String,
    port: String,
    user: String,
}

impl Target {
    /// The machine's server (`MESHPASS_PG_*`), through `psql` on `PATH`.
    fn shared() -> Target {
        Target {
            psql: PathBuf::from("psql"),
            host: pg_host(),
            port: pg_port(),
            user: pg_user(),
        }
    }
}

/// The PostgreSQL server of the test machine (`MESHPASS_PG_HOST`/`_PORT`/`_USER`,
/// default `127.0.0.1:5432`, user `postgres`, trust auth), driven with the `psql` CLI.
/// Shared by every suite on the machine: never stop or restart it from a test (a fault
/// test starts its own [`PostgresServer`]).
pub struct Postgres;

impl Postgres {
    /// Creates a uniquely named, empty database; dropped (`WITH (FORCE)`) on drop.
    /// Waits up to 30 s for a server that is (re)starting; panics when `psql` is missing
    /// or the server stays unreachable.
    pub fn fresh_database() -> PgDb {
        create_database(&Target::shared(), Duration::from_secs(30), false)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Runs one SQL statement on the `postgres` database (panics on failure).
    pub fn psql_admin(sql: &str) -> String {
        psql(&Target::shared(), "postgres", sql).unwrap_or_else(|e| panic!("{e}"))
    }
}

/// Creates a uniquely named database on `target`'s server (`private`: a
/// [`PostgresServer`]'s), waiting up to `wait` for a server that is (re)starting; a
/// missing `psql` fails at once.
fn create_database(target: &Target, wait: Duration, private: bool) -> Result<PgDb, String> {
    let name = format!("meshpass_t_{}_{}", std::process::id(), random_hex(6));
    let sql = format!("CREATE DATABASE \"{name}\"");
    let deadline = std::time::Instant::now() + wait;
    loop {
        match psql(target, "postgres", &sql) {
            Ok(_) => {
                return Ok(PgDb {
                    name,
                    target: target.clone(),
                    private,
                })
            }
            Err(e) if restarting(&e) && std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(250));
            }
            Err(e) => return Err(e),
        }
    }
}

/// How [`psql`]'s error starts when the client itself could not be run.
const NOT_RUNNABLE: &str = "cannot run ";

/// Whether a `psql` error says the server is down or coming up rather than refusing.
/// ("No such file or directory" is psql's word for a missing server socket; the same
/// words about the psql binary itself are no restart to wait for.)
fn restarting(e: &str) -> bool {
    !e.starts_with(NOT_RUNNABLE)
        && [
            "Connection refused",
            "starting up",
            "shutting down",
            "No such file or directory",
        ]
        .iter()
        .any(|m| e.contains(m))
}

fn psql(target: &Target, db: &str, sql: &str) -> Result<String, String> {
    let out = Command::new(&target.psql)
        .args([
            "-h",
            &target.host,
            "-p",
            &target.port,
            "-U",
            &target.user,
            "-d",
            db,
        ])
        .args(["-v", "ON_ERROR_STOP=1", "-X", "-q", "-t", "-A", "-c", sql])
        .env_remove("PGPASSWORD")
        .output()
        .map_err(|e| {
            format!(
                "{NOT_RUNNABLE}{} (is the PostgreSQL client installed? make setup installs it): {e}",
                target.psql.display()
            )
        })?;
    if !out.status.success() {
        return Err(format!(
            "psql on {}:{} db {db} failed for `{sql}`: {}",
            target.host,
            target.port,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A database created for one test, dropped on drop.
pub struct PgDb {
    name: String,
    target: Target,
    /// On a [`PostgresServer`]: nothing to drop once that server is gone.
    private: bool,
}

impl PgDb {
    /// The database name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `postgres://USER@HOST:PORT/NAME`.
    pub fn url(&self) -> String {
        format!(
            "postgres://{}@{}:{}/{}",
            self.target.user, self.target.host, self.target.port, self.name
        )
    }

    /// `HOST:PORT` of the server (what a [`crate::CutRelay`] in front of it relays to).
    pub fn host_port(&self) -> String {
        format!("{}:{}", self.target.host, self.target.port)
    }

    /// [`PgDb::url`] through a relay on loopback port `port`.
    pub fn url_via(&self, port: u16) -> String {
        format!(
            "postgres://{}@127.0.0.1:{port}/{}",
            self.target.user, self.name
        )
    }

    /// Runs SQL in this database with `psql` (unaligned, tuples only); panics on error.
    pub fn psql(&self, sql: &str) -> String {
        psql(&self.target, &self.name, sql).unwrap_or_else(|e| panic!("{e}"))
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
        match psql(&self.target, "postgres", &sql) {
            Ok(_) => {}
            // A private server stopped or dropped first took the database with it.
            Err(e) if self.private && restarting(&e) => {}
            Err(e) => eprintln!("[testkit] could not drop database {}: {e}", self.name),
        }
    }
}

/// How long a private server may take to accept connections, and to shut down.
const SERVER_TIMEOUT: Duration = Duration::from_secs(60);

/// The PostgreSQL server binaries: `MESHPASS_PG_BIN_DIR`, else the newest
/// `/usr/lib/postgresql/VERSION/bin` holding `initdb` and `postgres` (Debian's layout;
/// `make setup` installs the `postgresql` package when there is none).
pub fn postgres_bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("MESHPASS_PG_BIN_DIR").filter(|v| !v.is_empty()) {
        return PathBuf::from(dir);
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            (bin.join("initdb").is_file() && bin.join("postgres").is_file())
                .then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin).unwrap_or_else(|| {
        panic!(
            "no PostgreSQL server binaries (initdb, postgres) under /usr/lib/postgresql/*/bin: \
             run `make setup` (installs Debian's `postgresql`) or set MESHPASS_PG_BIN_DIR"
        )
    })
}

/// The effective user id of this process (from `/proc/self/status`).
fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// `(uid, gid)` of `user`, with `id` (so NSS users work too).
fn user_ids(user: &str) -> Result<(u32, u32), String> {
    let id = |flag: &str| -> Result<u32, String> {
        let out = Command::new("id")
            .args([flag, user])
            .output()
            .map_err(|e| format!("cannot run id: {e}"))?;
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .map_err(|_| String::from_utf8_lossy(&out.stderr).trim().to_string())
    };
    Ok((id("-u")?, id("-g")?))
}

/// Who runs `initdb` and `postgres`: this process's user, or, as root (which both
/// refuse), the unprivileged `MESHPASS_PG_RUN_AS` user (default `postgres`, which
/// Debian's `postgresql-common` creates).
fn server_user() -> Option<(String, u32, u32)> {
    if effective_uid() != Some(0) {
        return None;
    }
    let name = std::env::var("MESHPASS_PG_RUN_AS")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "postgres".into());
    let (uid, gid) = user_ids(&name).unwrap_or_else(|e| {
        panic!(
            "running as root: initdb and postgres refuse root, so the private server runs as \
             the unprivileged user `{name}`, which does not exist ({e}); install Debian's \
             postgresql (creates `postgres`) or set MESHPASS_PG_RUN_AS"
        )
    });
    assert!(
        uid != 0,
        "MESHPASS_PG_RUN_AS={name} is root: postgres refuses to run as root"
    );
    Some((name, uid, gid))
}

/// A private PostgreSQL server for one test: a cluster made by `initdb` in a temp dir
/// (superuser `postgres`, trust auth), `postgres` on 127.0.0.1 and a reserved port,
/// its Unix socket in that dir. Nothing else connects to it, so a test may stop, start
/// and restart it (the machine's server, which other suites use, is never touched).
/// Ready only when the child itself listens on the port and `SELECT 1` answers through
/// it. Stopped (fast shutdown) and deleted on drop.
pub struct PostgresServer {
    port: u16,
    bin_dir: PathBuf,
    run_as: Option<(u32, u32)>,
    child: Option<ChildGuard>,
    // Dropped after `child` is stopped: the cluster, the socket and the log.
    dir: tempfile::TempDir,
}

impl PostgresServer {
    /// Creates the cluster and starts the server on a [`crate::free_port`]. Panics (with
    /// the `initdb` output or the server log) when the binaries are missing or the server
    /// does not come up.
    pub fn start() -> PostgresServer {
        let bin_dir = postgres_bin_dir();
        let user = server_user();
        let dir = tempfile::Builder::new()
            .prefix("meshpass-postgres-")
            .tempdir()
            .expect("cannot create a temp dir for a private PostgreSQL");
        std::fs::create_dir(dir.path().join("socket")).expect("cannot create the socket dir");
        if let Some((name, uid, gid)) = &user {
            for p in [dir.path().to_path_buf(), dir.path().join("socket")] {
                std::os::unix::fs::chown(&p, Some(*uid), Some(*gid))
                    .unwrap_or_else(|e| panic!("cannot hand {} to user {name}: {e}", p.display()));
            }
        }
        let run_as = user.as_ref().map(|(_, uid, gid)| (*uid, *gid));
        let mut initdb = Command::new(bin_dir.join("initdb"));
        initdb
            .arg("-D")
            .arg(dir.path().join("data"))
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "--no-locale",
                "-E",
                "UTF8",
            ])
            // The cluster lives as long as the test: no fsync of the fresh files.
            .arg("--no-sync")
            .current_dir(dir.path());
        if let Some((uid, gid)) = run_as {
            initdb.uid(uid).gid(gid);
        }
        let out = initdb
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}/initdb: {e}", bin_dir.display()));
        assert!(
            out.status.success(),
            "initdb in {} failed ({}{}): {}{}",
            dir.path().display(),
            out.status,
            user.as_ref()
                .map(|(n, _, _)| format!(", as user {n}: the temp dir must be reachable by it"))
                .unwrap_or_default(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut server = PostgresServer {
            port: crate::free_port(),
            bin_dir,
            run_as,
            child: None,
            dir,
        };
        server.start_again();
        server
    }

    /// Starts the server again on the same port and cluster (every database, table and
    /// row kept). No-op when it runs.
    pub fn start_again(&mut self) {
        if self.is_running() {
            return;
        }
        // A server that died by itself: reap it first.
        if let Some(mut dead) = self.child.take() {
            dead.stop();
        }
        let mut cmd = Command::new(self.bin_dir.join("postgres"));
        cmd.arg("-D")
            .arg(self.data_dir())
            .args(["-p", &self.port.to_string()])
            .arg("-k")
            .arg(self.dir.path().join("socket"))
            .args(["-c", "listen_addresses=127.0.0.1"])
            .current_dir(self.dir.path());
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid);
        }
        let log = self.dir.path().join("postgres.log");
        let mut child = ChildGuard::spawn_logging_to("postgres", cmd, &log);
        let (pid, port, target) = (child.pid(), self.port, self.target());
        child.wait_ready(
            &format!("listening on 127.0.0.1:{port} and answering SELECT 1"),
            SERVER_TIMEOUT,
            || {
                crate::pid_listens_on(pid, port)
                    && psql(&target, "postgres", "SELECT 1").as_deref() == Ok("1")
            },
        );
        self.child = Some(child);
    }

    /// Stops the server as `pg_ctl stop -m fast` does (SIGINT to the postmaster: open
    /// transactions roll back, clients are disconnected, a shutdown checkpoint is
    /// written) and returns once it has exited and the port has no listener.
    /// Idempotent.
    pub fn stop(&mut self) {
        if let Err(e) = self.shut_down() {
            panic!("{e}");
        }
    }

    fn shut_down(&mut self) -> Result<(), String> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = child.pid();
        let _ = Command::new("kill")
            .args(["-INT", &pid.to_string()])
            .status();
        let exited = crate::wait_until(SERVER_TIMEOUT, Duration::from_millis(20), || {
            child.exited().is_some()
        });
        if !exited {
            eprintln!(
                "[testkit] postgres (pid {pid}) ignored a fast shutdown for {SERVER_TIMEOUT:?}; killing it"
            );
        }
        // Reaps it. A fast shutdown ends every child before the postmaster exits; the
        // children run in sessions of their own (postgres calls setsid), so after a
        // SIGKILL they go by themselves when they notice the postmaster is gone.
        child.stop();
        if !crate::wait_port_released(self.port, Duration::from_secs(10)) {
            return Err(format!(
                "port {} still has a listener after postgres stopped",
                self.port
            ));
        }
        Ok(())
    }

    /// [`PostgresServer::stop`] then [`PostgresServer::start_again`]: a few hundred
    /// milliseconds during which connections are refused; open connections are cut.
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }

    /// Whether the server runs.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(ChildGuard::is_running)
    }

    /// The postmaster's pid (0 while stopped).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(ChildGuard::pid).unwrap_or(0)
    }

    /// The port (kept across stop and start).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The cluster's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// `postgres://postgres@127.0.0.1:PORT/DB`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates a uniquely named, empty database on this server; dropped on drop (when
    /// the server still runs: otherwise it goes with the cluster).
    pub fn fresh_database(&self) -> PgDb {
        create_database(&self.target(), Duration::ZERO, true).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Runs SQL in database `db` with `psql` (unaligned, tuples only); panics on error.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        self.try_psql(db, sql).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`PostgresServer::psql`], returning the error (a stopped server refuses).
    pub fn try_psql(&self, db: &str, sql: &str) -> Result<String, String> {
        psql(&self.target(), db, sql)
    }

    /// The last `max_lines` lines of the server's log (kept across restarts).
    pub fn log_tail(&self, max_lines: usize) -> String {
        crate::log_tail(&self.dir.path().join("postgres.log"), max_lines)
    }

    fn target(&self) -> Target {
        let psql = self.bin_dir.join("psql");
        Target {
            psql: if psql.is_file() {
                psql
            } else {
                PathBuf::from("psql")
            },
            host: "127.0.0.1".into(),
            port: self.port.to_string(),
            user: "postgres".into(),
        }
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        if let Err(e) = self.shut_down() {
            eprintln!("[testkit] {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A machine without the PostgreSQL client: spawning `psql` fails with "No such file
    /// or directory", the words psql uses for a missing server socket, so the test
    /// waited 30 s for a server "restarting" before saying the client is missing.
    #[test]
    fn a_missing_psql_is_reported_at_once_not_waited_for_as_a_restarting_server() {
        let target = Target {
            psql: PathBuf::from("/nonexistent/meshpass-test/psql"),
            ..Target::shared()
        };
        let started = std::time::Instant::now();
        let err = create_database(&target, Duration::from_secs(30), false)
            .err()
            .expect("a missing psql created a database");
        assert!(err.contains("is the PostgreSQL client installed?"), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "waited {:?} for a psql that does not exist",
            started.elapsed()
        );
    }

    #[test]
    fn fresh_database_is_usable_and_dropped_afterwards() {
        let name;
        {
            let db = Postgres::fresh_database();
            name = db.name().to_string();
            assert!(db.url().ends_with(&format!("/{name}")));
            db.psql("CREATE TABLE t (x int); INSERT INTO t VALUES (41), (1)");
            assert_eq!(db.psql("SELECT sum(x) FROM t"), "42");
        }
        let left = Postgres::psql_admin(&format!(
            "SELECT count(*) FROM pg_database WHERE datname = '{name}'"
        ));
        assert_eq!(left, "0");
    }

    /// Processes (alive or zombie) whose parent is `ppid`.
    fn children_of(ppid: u32) -> Vec<u32> {
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .ok()
                    .and_then(|s| {
                        let f: Vec<String> = s
                            .rsplit_once(')')?
                            .1
                            .split_whitespace()
                            .map(String::from)
                            .collect();
                        f.get(1)?.parse::<u32>().ok()
                    })
                    == Some(ppid)
            })
            .collect()
    }

    #[test]
    fn private_server_is_the_one_answering_on_its_own_port_with_trust_auth() {
        let pg = PostgresServer::start();
        let port = pg.port();
        assert_ne!(port.to_string(), pg_port(), "not the machine's server port");
        assert!(crate::pid_listens_on(pg.pid(), port));
        // The server that answers is this cluster (not the machine's), as `postgres`.
        assert_eq!(
            pg.psql("postgres", "SHOW data_directory"),
            pg.data_dir().to_string_lossy()
        );
        assert_eq!(pg.psql("postgres", "SELECT current_user"), "postgres");
        assert_eq!(pg.psql("postgres", "SHOW listen_addresses"), "127.0.0.1");
        let db = pg.fresh_database();
        assert_eq!(db.url(), pg.url(db.name()));
        db.psql("CREATE TABLE t (x int); INSERT INTO t VALUES (41), (1)");
        assert_eq!(db.psql("SELECT sum(x) FROM t"), "42");
        let name = db.name().to_string();
        drop(db);
        assert_eq!(
            pg.psql(
                "postgres",
                &format!("SELECT count(*) FROM pg_database WHERE datname = '{name}'")
            ),
            "0"
        );
    }

    #[test]
    fn private_server_keeps_its_data_across_restart_and_stop_start_on_the_same_port() {
        let mut pg = PostgresServer::start();
        let port = pg.port();
        let db = pg.fresh_database();
        db.psql("CREATE TABLE kept (k text); INSERT INTO kept VALUES ('mapping')");
        let first = pg.pid();
        pg.restart();
        assert!(pg.is_running());
        assert_ne!(pg.pid(), first, "restart() did not restart");
        assert_eq!(pg.port(), port);
        assert!(crate::pid_listens_on(pg.pid(), port));
        assert_eq!(db.psql("SELECT k FROM kept"), "mapping");
        db.psql("INSERT INTO kept VALUES ('second')");

        pg.stop();
        assert!(!pg.is_running());
        assert_eq!(pg.pid(), 0);
        assert!(crate::wait_port_released(port, Duration::from_secs(1)));
        let refused = pg.try_psql(db.name(), "SELECT 1").unwrap_err();
        assert!(restarting(&refused), "{refused}");
        pg.start_again();
        assert!(crate::pid_listens_on(pg.pid(), port));
        assert_eq!(
            db.psql("SELECT string_agg(k, ',' ORDER BY k) FROM kept"),
            "mapping,second"
        );
        // A clean (fast) shutdown each time: no crash recovery on start.
        let log = pg.log_tail(200);
        assert!(!log.contains("was interrupted"), "{log}");
        assert!(!log.contains("automatic recovery"), "{log}");
    }

    #[test]
    fn private_server_is_stopped_and_its_cluster_deleted_on_drop() {
        let pg = PostgresServer::start();
        let (pid, port, data) = (pg.pid(), pg.port(), pg.data_dir());
        // The postmaster's helpers (checkpointer, WAL writer...) run in sessions of
        // their own (postgres calls setsid), out of reach of a signal to its group.
        assert_eq!(pg.psql("postgres", "SELECT 1"), "1");
        let helpers = children_of(pid);
        assert!(!helpers.is_empty());
        drop(pg);
        for p in helpers.iter().chain([&pid]) {
            assert!(
                !std::path::Path::new(&format!("/proc/{p}")).exists(),
                "postgres process {p} outlived the server (helpers {helpers:?})"
            );
        }
        assert!(crate::wait_port_released(port, Duration::from_secs(1)));
        assert!(!data.exists(), "{} left behind", data.display());
    }
}
