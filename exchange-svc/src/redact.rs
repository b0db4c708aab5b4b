//! How secrets are shown in logs, errors and `Debug` output: never.

/// `url` as it may be logged: the password (if any) is `***`, and a query (which may
/// carry a token or a password, as PostgreSQL's `?password=` does) is `?***`; an
/// unparsable URL is shown as `***` entirely.
pub fn url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() && u.set_password(Some("***")).is_err() {
                return "***".into();
            }
            if u.query().is_some() {
                u.set_query(Some("***"));
            }
            u.to_string()
        }
        Err(_) => "***".into(),
    }
}

/// A secret's length, in place of the secret.
pub struct Redacted(pub usize);

impl std::fmt::Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<redacted, {} bytes>", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_and_queries_never_show_and_the_rest_does() {
        let shown = url(
            "postgres://meshpass:pa55w0rd@db.example:5432/meshpass?sslmode=require&password=also",
        );
        assert_eq!(
            shown,
            "postgres://meshpass:***@db.example:5432/meshpass?***"
        );
        assert_eq!(
            url("redis://:s3cret@127.0.0.1:6379/0"),
            "redis://:***@127.0.0.1:6379/0"
        );
        assert_eq!(
            url("sqlite:///var/lib/meshpass/m.db"),
            "sqlite:///var/lib/meshpass/m.db"
        );
        assert_eq!(url("not a url with s3cret"), "***");
    }
}
