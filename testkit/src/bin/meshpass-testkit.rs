//! `meshpass-testkit envoy`: the testkit's Envoy launcher for shell scripts (the filter
//! benchmark), so that they pick ports and start Envoy the same race-free way tests do.
//!
//! ```text
//! meshpass-testkit envoy --config FILE --out FILE [--concurrency N] [--cpus LIST] [--log FILE]
//! ```
//! Every `@port:NAME` in the config (as a quoted JSON/YAML value, or inside a string) is
//! replaced by a port reserved for NAME (`free_port`). Once Envoy is ready (every
//! listener bound by it), `--out` gets one `NAME PORT` line per name, `pid PID`,
//! `admin PORT`, then `ready`. With `--cpus`, all of Envoy's threads are pinned
//! (`taskset -a -p`). The command then waits until its stdin closes and stops Envoy:
//! a script keeps a pipe open to it (`exec 3>fifo`) and Envoy goes when the script does.

// A launcher for scripts reports broken environments by panicking, like the library.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, ExitCode};

use meshpass_testkit::{free_port, Envoy, EnvoyOptions};

const USAGE: &str = "usage: meshpass-testkit envoy --config FILE --out FILE [--concurrency N] [--cpus LIST] [--log FILE]";

struct Args {
    config: PathBuf,
    out: PathBuf,
    concurrency: u32,
    cpus: Option<String>,
    log: Option<PathBuf>,
}

fn parse(mut it: impl Iterator<Item = String>) -> Result<Args, String> {
    if it.next().as_deref() != Some("envoy") {
        return Err(USAGE.into());
    }
    let mut flags = BTreeMap::new();
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        flags.insert(flag, value);
    }
    let mut take = |k: &str| flags.remove(k);
    let args = Args {
        config: take("--config").ok_or(USAGE)?.into(),
        out: take("--out").ok_or(USAGE)?.into(),
        concurrency: match take("--concurrency") {
            Some(n) => n.parse().map_err(|_| format!("bad --concurrency {n}"))?,
            None => 1,
        },
        cpus: take("--cpus"),
        log: take("--log").map(PathBuf::from),
    };
    match flags.keys().next() {
        Some(unknown) => Err(format!("unknown option {unknown}\n{USAGE}")),
        None => Ok(args),
    }
}

/// Replaces each `@port:NAME` with a reserved port (one per NAME); returns the text and
/// the ports by name.
fn substitute_ports(text: &str) -> (String, BTreeMap<String, u16>) {
    let mut ports = BTreeMap::new();
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find("@port:") {
        let name_len = rest[i + 6..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len() - i - 6);
        let name = &rest[i + 6..i + 6 + name_len];
        let port = *ports.entry(name.to_string()).or_insert_with(free_port);
        // A quoted placeholder becomes a bare number (`port_value` is an integer).
        let quoted = rest[..i].ends_with('"') && rest[i + 6 + name_len..].starts_with('"');
        out.push_str(&rest[..i]);
        if quoted {
            out.pop();
        }
        out.push_str(&port.to_string());
        rest = &rest[i + 6 + name_len + usize::from(quoted)..];
    }
    out.push_str(rest);
    (out, ports)
}

fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let text = std::fs::read_to_string(&args.config)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", args.config.display()));
    let (config, ports) = substitute_ports(&text);
    let options = EnvoyOptions {
        name: "envoy".into(),
        concurrency: args.concurrency,
        extra_args: vec!["-l".into(), "warning".into()],
        log_path: args.log,
        ..EnvoyOptions::default()
    };
    let mut envoy = match Envoy::start_with(&config, &options) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(cpus) = &args.cpus {
        let ok = Command::new("taskset")
            .args(["-a", "-p", "-c", cpus, &envoy.pid().to_string()])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(ok, "taskset -a -p -c {cpus} {} failed", envoy.pid());
    }
    let mut report: String = ports.iter().map(|(n, p)| format!("{n} {p}\n")).collect();
    report.push_str(&format!(
        "pid {}\nadmin {}\nready\n",
        envoy.pid(),
        envoy.admin_port()
    ));
    std::fs::write(&args.out, report)
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", args.out.display()));
    // Until the script closes our stdin (or exits).
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    envoy.stop();
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_placeholders_become_one_reserved_port_per_name() {
        let (text, ports) = substitute_ports(
            r#"{"a": "@port:x", "b": "http://127.0.0.1:@port:x/", "c": "@port:y_2"}"#,
        );
        let (x, y) = (ports["x"], ports["y_2"]);
        assert_ne!(x, y);
        assert_eq!(
            text,
            format!(r#"{{"a": {x}, "b": "http://127.0.0.1:{x}/", "c": {y}}}"#)
        );
    }
}
