//! Configuration of the DynamoDB journal, from a `dynamodb://` URL.
//!
//! ```text
//! dynamodb://?endpoint=http://127.0.0.1:8000&region=us-east-1&prefix=kiroku_
//! dynamodb://?region=eu-west-1&prefix=prod_kiroku_          (real AWS, standard credential chain)
//! ```
//!
//! Query parameters (all optional):
//!
//! | name | meaning | default |
//! |---|---|---|
//! | `endpoint` | a DynamoDB-compatible server (moto, DynamoDB Local); absent → AWS | absent |
//! | `region` | AWS region | from the environment, else `us-east-1` with an endpoint |
//! | `prefix` | prepended to every table name | `kiroku_` |
//! | `snapshots_to_keep` | snapshots kept per stream | `1` |
//! | `max_attempts` | attempts per request before `Unavailable` | `5` |
//! | `attempt_timeout_ms` | one HTTP attempt | `10000` |
//! | `connect_timeout_ms` | one TCP/TLS connect | `1000` |
//! | `deadline_ms` | all attempts of one request together | `20000` |

use std::time::Duration;

use url::Url;

/// Why a journal URL was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("journal url is not a valid url: {0}")]
    Malformed(String),
    #[error("journal url scheme must be dynamodb, not {0}")]
    WrongScheme(String),
    #[error("journal url parameter {name} is not understood")]
    UnknownParameter { name: String },
    #[error("journal url parameter {name} has an invalid value: {reason}")]
    InvalidValue { name: String, reason: String },
}

/// How requests are retried: bounded attempts with full-jitter exponential backoff, each attempt
/// bounded by a timeout, all of them together bounded by a deadline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
    pub attempt_timeout: Duration,
    pub connect_timeout: Duration,
    pub deadline: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            base_delay: Duration::from_millis(25),
            max_delay: Duration::from_secs(1),
            attempt_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(1),
            deadline: Duration::from_secs(20),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DynamoDbConfig {
    /// A DynamoDB-compatible endpoint; `None` means AWS itself.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// Prepended to every table name, so several deployments (or tests) share one account.
    pub table_prefix: String,
    pub snapshots_to_keep: usize,
    pub retry: RetryPolicy,
}

impl Default for DynamoDbConfig {
    fn default() -> Self {
        Self {
            endpoint: None,
            region: None,
            table_prefix: "kiroku_".into(),
            snapshots_to_keep: 1,
            retry: RetryPolicy::default(),
        }
    }
}

impl DynamoDbConfig {
    pub fn from_url(url: &str) -> Result<Self, ConfigError> {
        let parsed = Url::parse(url).map_err(|e| ConfigError::Malformed(e.to_string()))?;
        if parsed.scheme() != "dynamodb" {
            return Err(ConfigError::WrongScheme(parsed.scheme().into()));
        }
        let mut config = Self::default();
        for (name, value) in parsed.query_pairs() {
            let (name, value) = (name.into_owned(), value.into_owned());
            match name.as_str() {
                "endpoint" => {
                    let endpoint = Url::parse(&value).map_err(|e| invalid(&name, e))?;
                    if !matches!(endpoint.scheme(), "http" | "https") {
                        return Err(invalid(&name, "must be an http or https url"));
                    }
                    config.endpoint = Some(value.trim_end_matches('/').to_owned());
                }
                "region" if value.is_empty() => return Err(invalid(&name, "is empty")),
                "region" => config.region = Some(value),
                "prefix" => {
                    let ok = value
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
                    if !ok || value.len() > 200 {
                        return Err(invalid(
                            &name,
                            "table names allow only a-z A-Z 0-9 _ - . (at most 200)",
                        ));
                    }
                    config.table_prefix = value;
                }
                "snapshots_to_keep" => {
                    config.snapshots_to_keep = number(&name, &value)?.max(1) as usize
                }
                "max_attempts" => config.retry.max_attempts = number(&name, &value)?.max(1) as u32,
                "attempt_timeout_ms" => config.retry.attempt_timeout = millis(&name, &value)?,
                "connect_timeout_ms" => config.retry.connect_timeout = millis(&name, &value)?,
                "deadline_ms" => config.retry.deadline = millis(&name, &value)?,
                _ => return Err(ConfigError::UnknownParameter { name }),
            }
        }
        Ok(config)
    }

    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.table_prefix = prefix.into();
        self
    }

    pub fn events_table(&self) -> String {
        format!("{}events", self.table_prefix)
    }

    pub fn commands_table(&self) -> String {
        format!("{}commands", self.table_prefix)
    }

    pub fn snapshots_table(&self) -> String {
        format!("{}snapshots", self.table_prefix)
    }

    pub fn table_names(&self) -> [String; 3] {
        [
            self.events_table(),
            self.commands_table(),
            self.snapshots_table(),
        ]
    }
}

fn invalid(name: &str, reason: impl ToString) -> ConfigError {
    ConfigError::InvalidValue {
        name: name.into(),
        reason: reason.to_string(),
    }
}

fn number(name: &str, value: &str) -> Result<u64, ConfigError> {
    value.parse().map_err(|e| invalid(name, e))
}

fn millis(name: &str, value: &str) -> Result<Duration, ConfigError> {
    match number(name, value)? {
        0 => Err(invalid(name, "must be positive")),
        ms => Ok(Duration::from_millis(ms)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_local_endpoint() {
        let c = DynamoDbConfig::from_url(
            "dynamodb://?endpoint=http://127.0.0.1:4566/&region=us-east-1&prefix=t1_&snapshots_to_keep=3&max_attempts=2",
        )
        .unwrap();
        assert_eq!(c.endpoint.as_deref(), Some("http://127.0.0.1:4566"));
        assert_eq!(c.region.as_deref(), Some("us-east-1"));
        assert_eq!(c.events_table(), "t1_events");
        assert_eq!(c.snapshots_to_keep, 3);
        assert_eq!(c.retry.max_attempts, 2);
    }

    #[test]
    fn no_endpoint_means_aws() {
        let c = DynamoDbConfig::from_url("dynamodb://").unwrap();
        assert_eq!(c, DynamoDbConfig::default());
        assert_eq!(c.commands_table(), "kiroku_commands");
    }

    #[test]
    fn bad_urls_are_refused_clearly() {
        let cases = [
            ("not a url", "journal url is not a valid url"),
            ("sqlite:///tmp/x.db", "scheme must be dynamodb, not sqlite"),
            (
                "dynamodb://?endpint=http://x",
                "parameter endpint is not understood",
            ),
            (
                "dynamodb://?endpoint=ftp://x",
                "parameter endpoint has an invalid value",
            ),
            (
                "dynamodb://?prefix=a/b",
                "parameter prefix has an invalid value",
            ),
            (
                "dynamodb://?max_attempts=many",
                "parameter max_attempts has an invalid value",
            ),
            (
                "dynamodb://?deadline_ms=0",
                "parameter deadline_ms has an invalid value",
            ),
            (
                "dynamodb://?region=",
                "parameter region has an invalid value",
            ),
        ];
        for (url, message) in cases {
            let err = DynamoDbConfig::from_url(url).unwrap_err().to_string();
            assert!(err.contains(message), "{url}: {err}");
        }
    }
}
