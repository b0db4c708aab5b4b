//! `meshpassctl revocations list|get|add|lift` and `meshpassctl introspect`.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Args, Subcommand, ValueEnum};
use reqwest::Method;
use serde_json::{json, Value};

use crate::client::{Client, CtlError};
use crate::render::{print, text, Column, Output};
use crate::shape;

/// What a revocation applies to (`--target` of `list`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Target {
    /// Subjects of exchanges.
    Subject,
    /// Callers of /token.
    Caller,
    /// Single participant tokens.
    Jti,
}

impl Target {
    fn as_str(self) -> &'static str {
        match self {
            Target::Subject => "subject",
            Target::Caller => "caller",
            Target::Jti => "jti",
        }
    }
}

/// Exactly one of the three things to revoke.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct What {
    /// A subject: SPIFFE ID or pattern (spiffe://td/ns/a/*).
    #[arg(long)]
    subject: Option<String>,
    /// A caller of /token: SPIFFE ID or pattern.
    #[arg(long)]
    caller: Option<String>,
    /// One participant token, by its jti.
    #[arg(long)]
    jti: Option<String>,
}

/// `meshpassctl revocations ...`.
#[derive(Debug, Subcommand)]
pub enum Revocations {
    /// Lists the active revocations.
    List {
        /// Only this kind.
        #[arg(long, value_enum)]
        target: Option<Target>,
    },
    /// Shows one revocation.
    Get {
        /// Its id (rv-...).
        id: String,
    },
    /// Revokes a subject, a caller or a token: enforced by the service at once.
    Add {
        #[command(flatten)]
        what: What,
        /// Why (shown in the refusals), at most 256 characters.
        #[arg(long)]
        reason: String,
        /// When it lapses: unix seconds, or +N followed by s, m, h or d.
        #[arg(long)]
        until: Option<String>,
    },
    /// Lifts a revocation.
    Lift {
        /// Its id (rv-...).
        id: String,
    },
}

const COLUMNS: &[Column] = &[
    ("ID", |v| text(&v["id"])),
    ("TARGET", |v| text(&v["target"])),
    ("MATCH", |v| text(&v["match"])),
    ("UNTIL", |v| text(&v["until"])),
    ("CREATED_BY", |v| text(&v["created_by"])),
    ("REASON", |v| text(&v["reason"])),
];

const INTROSPECTION_COLUMNS: &[Column] = &[
    ("ACTIVE", |v| text(&v["active"])),
    ("SUB", |v| text(&v["sub"])),
    ("AUD", |v| text(&v["aud"])),
    ("SCOPE", |v| text(&v["scope"])),
    ("EXP", |v| text(&v["exp"])),
    ("JTI", |v| text(&v["jti"])),
];

/// `--until`: unix seconds or `+N[smhd]` from now.
fn until(s: &str) -> Result<u64, CtlError> {
    let bad = || CtlError::Usage(format!("--until {s:?}: unix seconds or +N[s|m|h|d]"));
    let Some(rel) = s.strip_prefix('+') else {
        return s.parse().map_err(|_| bad());
    };
    // By suffix, not by byte: `+5µ` must be a usage error, not a split inside a char.
    let (n, mult) = [("s", 1), ("m", 60), ("h", 3600), ("d", 86_400)]
        .into_iter()
        .find_map(|(unit, mult)| rel.strip_suffix(unit).map(|n| (n, mult)))
        .unwrap_or((rel, 1));
    let n: u64 = n.parse().map_err(|_| bad())?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    n.checked_mul(mult)
        .and_then(|d| now.checked_add(d))
        .ok_or_else(bad)
}

/// Runs a `revocations` command.
pub async fn run(c: &Client, out: Output, cmd: Revocations) -> Result<(), CtlError> {
    match cmd {
        Revocations::List { target } => {
            let q: Vec<(&str, String)> = target
                .map(|t| ("target", t.as_str().to_string()))
                .into_iter()
                .collect();
            let list = c.get(&["api", "v1", "revocations"], &q).await?;
            print(out, &list, shape::items(&list)?, COLUMNS)
        }
        Revocations::Get { id } => {
            let r = c.get(&["api", "v1", "revocations", &id], &[]).await?;
            shape::names(&r, "revocation", &[("id", &id)])?;
            print(out, &r, std::slice::from_ref(&r), COLUMNS)
        }
        Revocations::Add {
            what,
            reason,
            until: end,
        } => {
            let (target, matches) = match (what.subject, what.caller, what.jti) {
                (Some(s), _, _) => ("subject", s),
                (_, Some(c), _) => ("caller", c),
                (_, _, Some(j)) => ("jti", j),
                _ => return Err(CtlError::Usage("one of --subject, --caller, --jti".into())),
            };
            let end = end.as_deref().map(until).transpose()?;
            let body = json!({"target": target, "match": matches, "reason": reason, "until": end});
            let body = serde_json::to_vec(&body).map_err(|e| CtlError::Other(e.to_string()))?;
            let url = c.url(&["api", "v1", "revocations"], &[])?;
            let r = c
                .send(Method::POST, url, Some(("application/json", body)), None)
                .await?
                .body;
            shape::REVOCATION.check(&r)?;
            match out {
                Output::Table => {
                    crate::say!("revocation {} created", text(&r["id"]));
                    Ok(())
                }
                _ => print(out, &r, &[], COLUMNS),
            }
        }
        Revocations::Lift { id } => {
            let url = c.url(&["api", "v1", "revocations", &id], &[])?;
            shape::deleted(&c.send(Method::DELETE, url, None, None).await?)?;
            crate::say!("revocation {id} lifted");
            Ok(())
        }
    }
}

/// `meshpassctl introspect -f FILE`: the token is read from a file or stdin, never
/// from the command line (which other users of the machine can see).
pub async fn introspect(c: &Client, out: Output, file: PathBuf) -> Result<(), CtlError> {
    let raw = crate::read_input(&file)?;
    let token = String::from_utf8(raw)
        .map_err(|_| CtlError::Usage(format!("{}: not text", file.display())))?;
    let body = form_urlencoded::Serializer::new(String::new())
        .append_pair("token", token.trim())
        .finish();
    let url = c.url(&["api", "v1", "introspect"], &[])?;
    let info: Value = c
        .send(
            Method::POST,
            url,
            Some(("application/x-www-form-urlencoded", body.into_bytes())),
            None,
        )
        .await?
        .body;
    shape::INTROSPECTION.check(&info)?;
    print(
        out,
        &info,
        std::slice::from_ref(&info),
        INTROSPECTION_COLUMNS,
    )
}
