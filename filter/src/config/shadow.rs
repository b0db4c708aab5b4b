//! Rules that can never be selected: "first match wins" and bypass routes are checked
//! before any rule, so a rule another covers entirely, or one under a bypass prefix,
//! is dead configuration whose requests silently get another rule (or no token). A
//! bypass prefix of `/` shadows everything: authentication off.

use super::error::{err, ConfigError};
use super::types::{Bypass, Rule};

/// Refuses the first rule an earlier rule or a bypass prefix shadows, naming it.
pub(super) fn check(rules: &[Rule], bypass: &[Bypass]) -> Result<(), ConfigError> {
    // Every request bypassed, beside issuers and an exchange that then never run: as
    // `noop_for_benchmarks`, a filter that authenticates nothing must not look like one
    // that does.
    if let Some(i) = bypass
        .iter()
        .position(|b| matches!(b, Bypass::Prefix(p) if p == "/"))
    {
        return Err(err(
            format!("bypass[{i}].path_prefix"),
            "\"/\" bypasses every request: nothing would be authenticated",
        ));
    }
    for (j, r) in rules.iter().enumerate() {
        if let Some(p) = &r.path_prefix {
            let under = bypass.iter().any(|b| match b {
                Bypass::Prefix(pre) => p.starts_with(pre.as_str()),
                Bypass::Exact(_) => false,
            });
            if under {
                return Err(err(
                    format!("rules[{j}].path_prefix"),
                    "lies under a bypass prefix, which is checked first: never reached",
                ));
            }
        }
        if let Some(i) = rules.iter().take(j).position(|e| covers(e, r)) {
            return Err(err(
                format!("rules[{j}]"),
                format!(
                    "can never match: rules[{i}] comes first and matches every request it would"
                ),
            ));
        }
    }
    Ok(())
}

/// Whether every request `later` matches is matched by `earlier`.
fn covers(earlier: &Rule, later: &Rule) -> bool {
    let authority = match (&earlier.authority, &later.authority) {
        (None, _) => true,
        (Some(a), Some(b)) => {
            a == b
                || a.strip_prefix('*')
                    .is_some_and(|suffix| b.len() > suffix.len() && b.ends_with(suffix))
        }
        (Some(_), None) => false,
    };
    let path = match (&earlier.path_prefix, &later.path_prefix) {
        (None, _) => true,
        (Some(a), Some(b)) => b.starts_with(a.as_str()),
        (Some(_), None) => false,
    };
    let methods = earlier.methods.is_empty()
        || (!later.methods.is_empty() && later.methods.iter().all(|m| earlier.methods.contains(m)));
    authority && path && methods
}
