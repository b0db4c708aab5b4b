//! Throw-away databases on the machine's PostgreSQL (127.0.0.1:5432, trust auth).

use crate::random_hex;
use std::process::Command;

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

/// The PostgreSQL server of the test machine (`MESHPASS_PG_HOST`/`_PORT`/`_USER`,
/// default `127.0.0.1:5432`, user `postgres`, trust auth), driven with the `psql` CLI.
pub struct Postgres;

impl Postgres {
    /// Creates a uniquely named, empty database; dropped (`WITH (FORCE)`) on drop.
    /// Waits up to 30 s for a server that is restarting (a fault test of another suite
    /// on the same machine restarts the shared cluster); panics when `psql` is missing
    /// or the server stays unreachable.
    pub fn fresh_database() -> PgDb {
        let name = format!("meshpass_t_{}_{}", std::process::id(), random_hex(6));
        let sql = format!("CREATE DATABASE \"{name}\"");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            match psql("postgres", &sql) {
                Ok(_) => return PgDb { name },
                Err(e) if restarting(&e) && std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(250));
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    /// Runs one SQL statement on the `postgres` database (panics on failure).
    pub fn psql_admin(sql: &str) -> String {
        psql("postgres", sql).unwrap_or_else(|e| panic!("{e}"))
    }
}

/// Whether a `psql` error says the server is down or coming up rather than refusing.
fn restarting(e: &str) -> bool {
    [
        "Connection refused",
        "starting up",
        "shutting down",
        "No such file or directory",
    ]
    .iter()
    .any(|m| e.contains(m))
}

fn psql(db: &str, sql: &str) -> Result<String, String> {
    let out = Command::new("psql")
        .args([
            "-h",
            &pg_host(),
            "-p",
            &pg_port(),
            "-U",
            &pg_user(),
            "-d",
            db,
        ])
        .args(["-v", "ON_ERROR_STOP=1", "-X", "-q", "-t", "-A", "-c", sql])
        .env_remove("PGPASSWORD")
        .output()
        .map_err(|e| format!("cannot run psql (is the PostgreSQL client installed?): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "psql on {}:{} db {db} failed for `{sql}`: {}",
            pg_host(),
            pg_port(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A database created for one test, dropped on drop.
pub struct PgDb {
    name: String,
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
            pg_user(),
            pg_host(),
            pg_port(),
            self.name
        )
    }

    /// Runs SQL in this database with `psql` (unaligned, tuples only); panics on error.
    pub fn psql(&self, sql: &str) -> String {
        psql(&self.name, sql).unwrap_or_else(|e| panic!("{e}"))
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
        if let Err(e) = psql("postgres", &sql) {
            eprintln!("[testkit] could not drop database {}: {e}", self.name);
        }
    }
}

/// The machine's shared PostgreSQL cluster, driven with `pg_ctlcluster VERSION main`
/// (the newest version under `/etc/postgresql`). Dropping the guard makes sure the
/// cluster is running again, whatever happened in between.
pub struct SharedCluster {
    version: String,
}

impl SharedCluster {
    /// The guard; panics when no cluster is installed.
    pub fn new() -> SharedCluster {
        let version = std::fs::read_dir("/etc/postgresql")
            .expect("no /etc/postgresql: is PostgreSQL installed?")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .max()
            .expect("no cluster under /etc/postgresql");
        SharedCluster { version }
    }

    fn ctl(&self, action: &str) -> Result<(), String> {
        let out = Command::new("pg_ctlcluster")
            .args(["--skip-systemctl-redirect", &self.version, "main", action])
            .output()
            .map_err(|e| format!("cannot run pg_ctlcluster: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "pg_ctlcluster {action}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(())
    }

    /// Restarts the cluster (stop + start; a few seconds of downtime). Panics when
    /// `pg_ctlcluster` fails.
    pub fn restart(&self) {
        self.ctl("restart").unwrap_or_else(|e| panic!("{e}"));
    }

    /// Whether the cluster runs.
    pub fn is_running(&self) -> bool {
        self.ctl("status").is_ok()
    }
}

impl Default for SharedCluster {
    fn default() -> Self {
        SharedCluster::new()
    }
}

impl Drop for SharedCluster {
    fn drop(&mut self) {
        if !self.is_running() {
            let _ = self.ctl("start");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
