//! `keys status|rotate|retire` (role `keys` for the writes) and `stats` (role `read`).

use clap::Subcommand;
use reqwest::Method;
use serde_json::json;

use crate::client::{Client, CtlError};
use crate::render::{print, text, Column, Output};
use crate::shape;

#[derive(Subcommand)]
pub enum Keys {
    /// Shows the key versions: published, signing, since when.
    Status,
    /// Rotates the transit key (the new version signs after the publish lead).
    Rotate,
    /// Stops publishing the versions below `--below` (refused while a token they signed
    /// can still be live, or when `--below` would retire the signing version).
    Retire {
        /// The oldest version to keep publishing.
        #[arg(long)]
        below: u64,
    },
}

const KEY_COLUMNS: &[Column] = &[
    ("VERSION", |v| text(&v["version"])),
    ("KID", |v| text(&v["kid"])),
    ("PUBLISHED", |v| text(&v["published"])),
    ("SIGNING", |v| text(&v["signing"])),
    ("PUBLISHED_SINCE", |v| text(&v["published_since"])),
    ("SIGNS_FROM", |v| text(&v["signs_from"])),
];
const OUTCOME_COLUMNS: &[Column] = &[
    ("MAPPING", |v| text(&v["mapping"])),
    ("OUTCOME", |v| text(&v["outcome"])),
    ("COUNT", |v| text(&v["count"])),
];
const SUBJECT_COLUMNS: &[Column] = &[
    ("SUBJECT", |v| text(&v["subject"])),
    ("PER_SECOND", |v| {
        v["per_second"]
            .as_f64()
            .map_or_else(|| text(&v["per_second"]), |r| format!("{r:.2}"))
    }),
];

/// Runs a `keys` command and prints the key status the server answers.
pub async fn run(c: &Client, out: Output, cmd: Keys) -> Result<(), CtlError> {
    let k = match cmd {
        Keys::Status => c.get(&["api", "v1", "keys"], &[]).await?,
        Keys::Rotate => {
            let url = c.url(&["api", "v1", "keys", "rotate"], &[])?;
            c.send(Method::POST, url, None, None).await?.body
        }
        Keys::Retire { below } => {
            let url = c.url(&["api", "v1", "keys", "retire"], &[])?;
            let body = json!({ "below": below }).to_string().into_bytes();
            c.send(Method::POST, url, Some(("application/json", body)), None)
                .await?
                .body
        }
    };
    let versions = shape::KEY_STATUS.check(&k)?["versions"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    print(out, &k, versions, KEY_COLUMNS)
}

/// `stats`: exchanges by mapping and outcome since the replica started, and the
/// fastest subjects of about the last minute (of the replica that answers).
pub async fn stats(c: &Client, out: Output) -> Result<(), CtlError> {
    let s = c.get(&["api", "v1", "stats"], &[]).await?;
    shape::STATS.check(&s)?;
    let rows = |k: &str| s[k].as_array().cloned().unwrap_or_default();
    if out != Output::Table {
        return print(out, &s, &[], &[]);
    }
    print(out, &s, &rows("by_mapping"), OUTCOME_COLUMNS)?;
    crate::say!();
    print(out, &s, &rows("top_subjects"), SUBJECT_COLUMNS)?;
    if s["untracked"].as_u64().is_some_and(|n| n > 0) {
        crate::say!(
            "(and {} exchanges of untracked subjects)",
            text(&s["untracked"])
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn the_subject_rate_has_two_decimals() {
        let row = json!({"subject": "spiffe://td/ns/a/sa/b", "per_second": 1.23456});
        assert_eq!((SUBJECT_COLUMNS[1].1)(&row), "1.23");
        let v: Value = json!({"per_second": null});
        assert_eq!((SUBJECT_COLUMNS[1].1)(&v), "-");
    }
}
