//! `meshpassctl`: the management API from the command line (see README.md).
//!
//! Exit codes: 0 ok, 1 other error, 2 usage or unreadable input, 3 not found,
//! 4 conflict or stale write, 5 invalid input, 6 not authenticated or not allowed,
//! 7 server unreachable or unavailable.

mod client;
mod keys;
mod render;
mod revocations;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use reqwest::Method;
use serde_json::{json, Value};

use client::{Client, CtlError};
use render::{print, text, Column, Output};

#[derive(Parser)]
#[command(
    name = "meshpassctl",
    version,
    about = "Manage meshpass mappings, scopes, revocations, keys and audit through the management API"
)]
struct Cli {
    /// Management API base URL.
    #[arg(
        long,
        global = true,
        env = "MESHPASS_SERVER",
        default_value = "http://127.0.0.1:8081"
    )]
    server: String,
    /// File holding the bearer token (else MESHPASS_TOKEN).
    #[arg(long, global = true)]
    token_file: Option<PathBuf>,
    /// Output format.
    #[arg(long, short = 'o', global = true, value_enum, default_value = "table")]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Mappings: who may exchange for which resource.
    #[command(subcommand)]
    Mappings(Mappings),
    /// Scope → claims rows.
    #[command(subcommand)]
    Scopes(Scopes),
    /// Prints every mapping and scope as one document (YAML unless -o json).
    Export,
    /// Makes the server hold a document (all or nothing).
    Import {
        /// The document (YAML or JSON; - for stdin).
        #[arg(long, short = 'f')]
        file: PathBuf,
        /// Only show what would change.
        #[arg(long)]
        dry_run: bool,
        /// Also delete what the document lacks.
        #[arg(long)]
        prune: bool,
    },
    /// Signing keys.
    #[command(subcommand)]
    Keys(keys::Keys),
    /// Exchanges by mapping and outcome, and the busiest subjects (of the replica that
    /// answers).
    Stats,
    /// The audit log.
    #[command(subcommand)]
    Audit(Audit),
    /// Revocations of subjects, callers and single tokens.
    #[command(subcommand)]
    Revocations(revocations::Revocations),
    /// Asks the service whether a participant token is active (RFC 7662).
    Introspect {
        /// File holding the token (- for stdin).
        #[arg(long, short = 'f')]
        file: PathBuf,
    },
    /// Prints a shell completion script.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand)]
enum Mappings {
    /// Lists mappings.
    List {
        /// Only mappings whose pattern is this, or matches this SPIFFE ID.
        #[arg(long)]
        subject: Option<String>,
        /// Only this resource.
        #[arg(long)]
        resource: Option<String>,
        /// Only this participant.
        #[arg(long)]
        participant: Option<String>,
    },
    /// Shows one mapping.
    Get {
        /// Its name.
        name: String,
        /// Print only its ETag (for a later --if-match).
        #[arg(long)]
        etag: bool,
    },
    /// Creates or replaces the mappings of a file (one, a list, or {mappings: [...]}).
    Apply {
        /// YAML or JSON; - for stdin.
        #[arg(long, short = 'f')]
        file: PathBuf,
        /// Replace only if the mapping still has this ETag (one mapping in the file);
        /// a stale one exits 4.
        #[arg(long)]
        if_match: Option<String>,
    },
    /// Deletes a mapping.
    Delete {
        /// Its name.
        name: String,
        /// Delete only if it still has this ETag; a stale one exits 4.
        #[arg(long)]
        if_match: Option<String>,
    },
}

#[derive(Subcommand)]
enum Scopes {
    /// Lists scope rows.
    List {
        /// Only this resource.
        #[arg(long)]
        resource: Option<String>,
    },
    /// Shows one scope row.
    Get {
        /// The resource.
        resource: String,
        /// The scope.
        scope: String,
        /// Print only its ETag (for a later --if-match).
        #[arg(long)]
        etag: bool,
    },
    /// Creates or replaces the scope rows of a file (one, a list, or {scopes: [...]}).
    Apply {
        /// YAML or JSON; - for stdin.
        #[arg(long, short = 'f')]
        file: PathBuf,
        /// Replace only if the row still has this ETag (one row in the file); a stale
        /// one exits 4.
        #[arg(long)]
        if_match: Option<String>,
    },
    /// Deletes a scope row.
    Delete {
        /// The resource.
        resource: String,
        /// The scope.
        scope: String,
        /// Delete only if it still has this ETag; a stale one exits 4.
        #[arg(long)]
        if_match: Option<String>,
    },
}

#[derive(Subcommand)]
enum Audit {
    /// Shows the newest events (and keeps following with --follow).
    Tail {
        /// How many (1 to 1000, the API's page size).
        #[arg(long, short = 'n', default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
        lines: u32,
        /// Keep polling for new events.
        #[arg(long)]
        follow: bool,
    },
}

const MAPPING_COLUMNS: &[Column] = &[
    ("NAME", |v| text(&v["name"])),
    ("SUBJECT", |v| text(&v["subject"])),
    ("RESOURCE", |v| text(&v["resource"])),
    ("PARTICIPANT", |v| text(&v["participant"])),
    ("SCOPES", |v| text(&v["scopes"])),
    ("TTL", |v| text(&v["ttl_secs"])),
];
const SCOPE_COLUMNS: &[Column] = &[
    ("RESOURCE", |v| text(&v["resource"])),
    ("SCOPE", |v| text(&v["scope"])),
    ("CLAIMS", |v| v["claims"].to_string()),
];
const AUDIT_COLUMNS: &[Column] = &[
    ("ID", |v| text(&v["id"])),
    ("AT", |v| text(&v["at"])),
    ("ACTOR", |v| text(&v["actor"])),
    ("ACTION", |v| text(&v["action"])),
    ("TARGET", |v| text(&v["target"])),
    ("REASON", |v| text(&v["reason"])),
];
const DIFF_COLUMNS: &[Column] = &[("CHANGE", |v| text(&v[0])), ("TARGET", |v| text(&v[1]))];

/// The largest request body the management API reads.
const MAX_DOCUMENT_BYTES: usize = 8 * 1024 * 1024;

fn token(file: Option<&Path>) -> Result<String, CtlError> {
    let t = match file {
        Some(p) => std::fs::read_to_string(p)
            .map_err(|e| CtlError::Usage(format!("--token-file {}: {e}", p.display())))?,
        None => std::env::var("MESHPASS_TOKEN")
            .map_err(|_| CtlError::Usage("no token: use --token-file or MESHPASS_TOKEN".into()))?,
    };
    let t = t.trim().to_string();
    if t.is_empty() {
        return Err(CtlError::Usage("the token is empty".into()));
    }
    Ok(t)
}

pub(crate) fn read_input(file: &Path) -> Result<Vec<u8>, CtlError> {
    let mut buf = Vec::new();
    let r = if file == Path::new("-") {
        std::io::stdin().read_to_end(&mut buf).map(|_| ())
    } else {
        std::fs::read(file).map(|b| buf = b)
    };
    r.map_err(|e| CtlError::Usage(format!("{}: {e}", file.display())))?;
    Ok(buf)
}

/// The entries of a file: one object, a list, or a document's `key` list.
fn entries(file: &Path, key: &str) -> Result<Vec<Value>, CtlError> {
    let raw = read_input(file)?;
    // JSON as JSON (YAML's parser refuses some valid JSON, e.g. surrogate-pair escapes).
    let v: Value = serde_json::from_slice(&raw)
        .or_else(|_| serde_yaml::from_slice(&raw))
        .map_err(|e| CtlError::Usage(format!("{}: not YAML or JSON: {e}", file.display())))?;
    Ok(match v {
        Value::Array(a) => a,
        Value::Object(ref o) if o.contains_key(key) => o[key]
            .as_array()
            .cloned()
            .ok_or_else(|| CtlError::Usage(format!("{}: `{key}` is not a list", file.display())))?,
        other => vec![other],
    })
}

/// The `If-Match` of an apply: only for a file of exactly one entry (one ETag names one
/// version of one entity).
fn one_for_if_match(tag: Option<&str>, n: usize, what: &str) -> Result<Option<String>, CtlError> {
    if tag.is_some() && n != 1 {
        return Err(CtlError::Usage(format!(
            "--if-match needs exactly one {what} in the file, not {n}"
        )));
    }
    Ok(client::if_match(tag))
}

async fn run(cli: Cli) -> Result<(), CtlError> {
    if let Command::Completions { shell } = cli.command {
        clap_complete::generate(
            shell,
            &mut Cli::command(),
            "meshpassctl",
            &mut std::io::stdout(),
        );
        return Ok(());
    }
    let c = Client::new(&cli.server, token(cli.token_file.as_deref())?)?;
    let out = cli.output;
    match cli.command {
        Command::Mappings(m) => mappings(&c, out, m).await,
        Command::Scopes(s) => scopes(&c, out, s).await,
        Command::Export => {
            let doc = c.get(&["api", "v1", "export"], &[]).await?;
            let as_yaml = if out == Output::Json {
                Output::Json
            } else {
                Output::Yaml
            };
            print(as_yaml, &doc, &[], &[])
        }
        Command::Import {
            file,
            dry_run,
            prune,
        } => {
            let body = read_input(&file)?;
            // Said before sending: the service refuses it from Content-Length and may
            // close the connection mid-upload, which would read as an outage.
            if body.len() > MAX_DOCUMENT_BYTES {
                return Err(CtlError::Other(format!(
                    "too_large: {} is {} bytes, over the 8 MiB the API reads",
                    file.display(),
                    body.len()
                )));
            }
            let content_type = if serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_ok() {
                "application/json"
            } else {
                "application/yaml"
            };
            let q = vec![
                ("dry_run", dry_run.to_string()),
                ("prune", prune.to_string()),
            ];
            let url = c.url(&["api", "v1", "import"], &q)?;
            let diff = c
                .send(Method::POST, url, Some((content_type, body)), None)
                .await?
                .body;
            let mut rows = Vec::new();
            for (kind, label) in [
                ("added", "add"),
                ("changed", "change"),
                (
                    "removed",
                    if prune { "remove" } else { "keep (no --prune)" },
                ),
            ] {
                for t in diff[kind].as_array().into_iter().flatten() {
                    rows.push(json!([label, t]));
                }
            }
            print(out, &diff, &rows, DIFF_COLUMNS)?;
            if out == Output::Table {
                let verb = if diff["applied"] == json!(true) {
                    "applied"
                } else if dry_run {
                    "dry run: nothing applied"
                } else {
                    "nothing to apply"
                };
                crate::say!("{verb} ({} unchanged)", text(&diff["unchanged"]));
            }
            Ok(())
        }
        Command::Keys(k) => keys::run(&c, out, k).await,
        Command::Stats => keys::stats(&c, out).await,
        Command::Audit(Audit::Tail { lines, follow }) => audit_tail(&c, out, lines, follow).await,
        Command::Revocations(r) => revocations::run(&c, out, r).await,
        Command::Introspect { file } => revocations::introspect(&c, out, file).await,
        Command::Completions { .. } => Ok(()),
    }
}

async fn mappings(c: &Client, out: Output, cmd: Mappings) -> Result<(), CtlError> {
    match cmd {
        Mappings::List {
            subject,
            resource,
            participant,
        } => {
            let mut q = Vec::new();
            for (k, v) in [
                ("subject", subject),
                ("resource", resource),
                ("participant", participant),
            ] {
                if let Some(v) = v {
                    q.push((k, v));
                }
            }
            let items = c.list_all(&["api", "v1", "mappings"], &q).await?;
            print(out, &Value::Array(items.clone()), &items, MAPPING_COLUMNS)
        }
        Mappings::Get { name, etag } => {
            let url = c.url(&["api", "v1", "mappings", &name], &[])?;
            let a = c.send(Method::GET, url, None, None).await?;
            if etag {
                crate::say!("{}", client::etag_of(a.etag, &format!("mapping {name}"))?);
                return Ok(());
            }
            print(out, &a.body, std::slice::from_ref(&a.body), MAPPING_COLUMNS)
        }
        Mappings::Apply { file, if_match } => {
            let all = entries(&file, "mappings")?;
            let tag = one_for_if_match(if_match.as_deref(), all.len(), "mapping")?;
            for m in all {
                let name = m["name"]
                    .as_str()
                    .ok_or_else(|| CtlError::Usage("a mapping without a name".into()))?;
                let url = c.url(&["api", "v1", "mappings", name], &[])?;
                let body = serde_json::to_vec(&m).map_err(|e| CtlError::Other(e.to_string()))?;
                let a = c
                    .send(
                        Method::PUT,
                        url,
                        Some(("application/json", body)),
                        tag.as_deref(),
                    )
                    .await?;
                crate::say!(
                    "mapping {name} {}",
                    if a.status.as_u16() == 201 {
                        "created"
                    } else {
                        "configured"
                    }
                );
            }
            Ok(())
        }
        Mappings::Delete { name, if_match } => {
            let url = c.url(&["api", "v1", "mappings", &name], &[])?;
            let tag = client::if_match(if_match.as_deref());
            c.send(Method::DELETE, url, None, tag.as_deref()).await?;
            crate::say!("mapping {name} deleted");
            Ok(())
        }
    }
}

async fn scopes(c: &Client, out: Output, cmd: Scopes) -> Result<(), CtlError> {
    match cmd {
        Scopes::List { resource } => {
            let q: Vec<(&str, String)> = resource.map(|r| ("resource", r)).into_iter().collect();
            let items = c.list_all(&["api", "v1", "scopes"], &q).await?;
            print(out, &Value::Array(items.clone()), &items, SCOPE_COLUMNS)
        }
        Scopes::Get {
            resource,
            scope,
            etag,
        } => {
            let url = c.url(&["api", "v1", "scopes", &resource, &scope], &[])?;
            let a = c.send(Method::GET, url, None, None).await?;
            if etag {
                let what = format!("scope {resource} {scope}");
                crate::say!("{}", client::etag_of(a.etag, &what)?);
                return Ok(());
            }
            print(out, &a.body, std::slice::from_ref(&a.body), SCOPE_COLUMNS)
        }
        Scopes::Apply { file, if_match } => {
            let all = entries(&file, "scopes")?;
            let tag = one_for_if_match(if_match.as_deref(), all.len(), "scope row")?;
            for s in all {
                let (Some(r), Some(sc)) = (s["resource"].as_str(), s["scope"].as_str()) else {
                    return Err(CtlError::Usage(
                        "a scope row without resource or scope".into(),
                    ));
                };
                let url = c.url(&["api", "v1", "scopes", r, sc], &[])?;
                let body = serde_json::to_vec(&s).map_err(|e| CtlError::Other(e.to_string()))?;
                let a = c
                    .send(
                        Method::PUT,
                        url,
                        Some(("application/json", body)),
                        tag.as_deref(),
                    )
                    .await?;
                crate::say!(
                    "scope {r} {sc} {}",
                    if a.status.as_u16() == 201 {
                        "created"
                    } else {
                        "configured"
                    }
                );
            }
            Ok(())
        }
        Scopes::Delete {
            resource,
            scope,
            if_match,
        } => {
            let url = c.url(&["api", "v1", "scopes", &resource, &scope], &[])?;
            let tag = client::if_match(if_match.as_deref());
            c.send(Method::DELETE, url, None, tag.as_deref()).await?;
            crate::say!("scope {resource} {scope} deleted");
            Ok(())
        }
    }
}

async fn audit_tail(c: &Client, out: Output, lines: u32, follow: bool) -> Result<(), CtlError> {
    let page = c
        .get(&["api", "v1", "audit"], &[("limit", lines.to_string())])
        .await?;
    let items = client::page_items(&page)?.clone();
    print(out, &page, &items, AUDIT_COLUMNS)?;
    let mut last = page["last_id"].as_i64();
    if !follow {
        return Ok(());
    }
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        let mut q = vec![("limit", "1000".to_string())];
        q.push(("after", last.unwrap_or(0).to_string()));
        let page = c.get(&["api", "v1", "audit"], &q).await?;
        for e in client::page_items(&page)? {
            match out {
                Output::Table => crate::say!(
                    "{}",
                    AUDIT_COLUMNS
                        .iter()
                        .map(|(_, f)| f(e))
                        .collect::<Vec<_>>()
                        .join("  ")
                ),
                _ => crate::say!("{e}"),
            }
        }
        last = page["last_id"].as_i64().or(last);
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("meshpassctl: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meshpassctl: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn audit_tail_takes_1_to_1000_lines_as_the_api_does() {
        let parse = |n: &str| Cli::try_parse_from(["meshpassctl", "audit", "tail", "-n", n]);
        assert!(parse("1").is_ok());
        assert!(parse("1000").is_ok());
        for bad in ["0", "1001"] {
            let e = parse(bad).err().unwrap();
            assert_eq!(e.kind(), clap::error::ErrorKind::ValueValidation, "{bad}");
        }
    }
}
