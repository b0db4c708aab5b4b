//! `meshpassctl`: the management API from the command line (see README.md).
//!
//! Exit codes: 0 ok, 1 other error (an unexpected answer among them), 2 usage or
//! unreadable input, 3 not found, 4 conflict or stale write, 5 invalid input, 6 not
//! authenticated or not allowed, 7 server unreachable, silent or unavailable.

mod client;
mod document;
mod keys;
mod render;
mod revocations;
mod shape;

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
    /// PEM CA bundle the https server's certificate is verified against (instead of
    /// the built-in web roots).
    #[arg(long, global = true, env = "MESHPASS_CACERT")]
    cacert: Option<PathBuf>,
    /// PEM client certificate (chain) presented to an https server (with --key): the
    /// identity a management token is bound to when the API terminates TLS itself.
    #[arg(long, global = true, env = "MESHPASS_CERT")]
    cert: Option<PathBuf>,
    /// PEM private key of --cert.
    #[arg(long, global = true, env = "MESHPASS_KEY")]
    key: Option<PathBuf>,
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

/// The bytes of `file` (`-`: stdin), at most the 8 MiB the API reads: reading stops
/// past it, so a stream that does not end (a pipe still open, `/dev/zero`) is refused
/// instead of filling memory. Said before sending: the service refuses a larger body
/// from `Content-Length` and may close the connection mid-upload, which would read as
/// an outage.
pub(crate) fn read_input(file: &Path) -> Result<Vec<u8>, CtlError> {
    let mut buf = Vec::new();
    let bound = u64::try_from(MAX_DOCUMENT_BYTES)
        .unwrap_or(u64::MAX)
        .saturating_add(1);
    let r = if file == Path::new("-") {
        std::io::stdin().take(bound).read_to_end(&mut buf)
    } else {
        std::fs::File::open(file).and_then(|f| f.take(bound).read_to_end(&mut buf))
    };
    r.map_err(|e| CtlError::Usage(format!("{}: {e}", file.display())))?;
    if buf.len() > MAX_DOCUMENT_BYTES {
        return Err(CtlError::Other(format!(
            "too_large: {} is over the 8 MiB the API reads",
            file.display()
        )));
    }
    Ok(buf)
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
    let tls = client::TlsFiles {
        cacert: cli.cacert.clone(),
        cert: cli.cert.clone(),
        key: cli.key.clone(),
    };
    let c = Client::new(&cli.server, token(cli.token_file.as_deref())?, &tls)?;
    let out = cli.output;
    match cli.command {
        Command::Mappings(m) => mappings(&c, out, m).await,
        Command::Scopes(s) => scopes(&c, out, s).await,
        Command::Export => {
            let doc = c.get(&["api", "v1", "export"], &[]).await?;
            shape::POLICY.check(&doc)?;
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
            shape::IMPORT_DIFF.check(&diff)?;
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
            shape::names(&a.body, "mapping", &[("name", &name)])?;
            if etag {
                crate::say!("{}", client::etag_of(a.etag, &format!("mapping {name}"))?);
                return Ok(());
            }
            print(out, &a.body, std::slice::from_ref(&a.body), MAPPING_COLUMNS)
        }
        Mappings::Apply { file, if_match } => {
            let all = document::entries(&file, "mappings")?;
            let tag = one_for_if_match(if_match.as_deref(), all.len(), "mapping")?;
            apply(c, &file, &all, "mapping", &["name"], tag.as_deref()).await
        }
        Mappings::Delete { name, if_match } => {
            let url = c.url(&["api", "v1", "mappings", &name], &[])?;
            let tag = client::if_match(if_match.as_deref());
            shape::deleted(&c.send(Method::DELETE, url, None, tag.as_deref()).await?)?;
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
            shape::names(
                &a.body,
                "scope row",
                &[("resource", &resource), ("scope", &scope)],
            )?;
            if etag {
                let what = format!("scope {resource} {scope}");
                crate::say!("{}", client::etag_of(a.etag, &what)?);
                return Ok(());
            }
            print(out, &a.body, std::slice::from_ref(&a.body), SCOPE_COLUMNS)
        }
        Scopes::Apply { file, if_match } => {
            let all = document::entries(&file, "scopes")?;
            let tag = one_for_if_match(if_match.as_deref(), all.len(), "scope row")?;
            apply(
                c,
                &file,
                &all,
                "scope",
                &["resource", "scope"],
                tag.as_deref(),
            )
            .await
        }
        Scopes::Delete {
            resource,
            scope,
            if_match,
        } => {
            let url = c.url(&["api", "v1", "scopes", &resource, &scope], &[])?;
            let tag = client::if_match(if_match.as_deref());
            shape::deleted(&c.send(Method::DELETE, url, None, tag.as_deref()).await?)?;
            crate::say!("scope {resource} {scope} deleted");
            Ok(())
        }
    }
}

/// `PUT`s each entry of `file` to `/api/v1/{what}s/{key...}`, the key being the entry's
/// `key` fields. Every entry is checked first: a file with one that cannot be sent
/// writes nothing.
async fn apply(
    c: &Client,
    file: &Path,
    all: &[Value],
    what: &str,
    key: &[&str],
    tag: Option<&str>,
) -> Result<(), CtlError> {
    let collection = format!("{what}s");
    let mut planned = Vec::with_capacity(all.len());
    for (i, entry) in all.iter().enumerate() {
        let bad = |why: &dyn std::fmt::Display| {
            CtlError::Usage(format!(
                "{}: entry {} of {}: {why} (nothing applied)",
                file.display(),
                i + 1,
                all.len()
            ))
        };
        if !entry.is_object() {
            return Err(bad(&format_args!("not a {what}")));
        }
        let mut values = Vec::with_capacity(key.len());
        for field in key {
            let v = match &entry[*field] {
                Value::String(v) => v.as_str(),
                Value::Null => return Err(bad(&format_args!("a {what} without `{field}`"))),
                // YAML reads `name: 2024` as a number.
                other => {
                    return Err(bad(&format_args!(
                        "`{field}` is {}, not a string (quote it)",
                        shape::kind(other)
                    )))
                }
            };
            values.push(v);
        }
        // Two entries for one key would be written one over the other, the first lost.
        if planned
            .iter()
            .any(|(earlier, _, _): &(Vec<&str>, _, _)| *earlier == values)
        {
            return Err(bad(&format_args!(
                "names {what} {} a second time",
                values.join(" ")
            )));
        }
        let mut segments = vec!["api", "v1", collection.as_str()];
        segments.extend(&values);
        let url = c.url(&segments, &[]).map_err(|e| bad(&e))?;
        let body = serde_json::to_vec(entry).map_err(|e| CtlError::Other(e.to_string()))?;
        planned.push((values, url, body));
    }
    for (values, url, body) in planned {
        let a = c
            .send(Method::PUT, url, Some(("application/json", body)), tag)
            .await?;
        let named: Vec<(&str, &str)> = key.iter().copied().zip(values.iter().copied()).collect();
        shape::names(&a.body, what, &named)?;
        let done = if a.status == reqwest::StatusCode::CREATED {
            "created"
        } else {
            "configured"
        };
        crate::render::write_progress(format_args!("{what} {} {done}\n", values.join(" ")));
    }
    Ok(())
}

/// `audit tail`: the newest `lines` events; with `follow`, a stream of events in one
/// form throughout (table rows, one JSON line each, or one YAML document each), polled
/// every 2 s.
async fn audit_tail(c: &Client, out: Output, lines: u32, follow: bool) -> Result<(), CtlError> {
    let page = c
        .get(&["api", "v1", "audit"], &[("limit", lines.to_string())])
        .await?;
    let items = shape::items(&page)?;
    if !follow {
        return print(out, &page, items, AUDIT_COLUMNS);
    }
    if out == Output::Table {
        print(out, &page, items, AUDIT_COLUMNS)?;
    } else {
        for e in items {
            render::print_streamed(out, e, AUDIT_COLUMNS)?;
        }
    }
    let mut last = page["last_id"].as_i64();
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        let q = vec![
            ("limit", "1000".to_string()),
            ("after", last.unwrap_or(0).to_string()),
        ];
        let page = c.get(&["api", "v1", "audit"], &q).await?;
        for e in shape::items(&page)? {
            render::print_streamed(out, e, AUDIT_COLUMNS)?;
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
