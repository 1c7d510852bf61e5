//! The AWS SDK clients: endpoint, region, credentials, timeouts, and a request counter.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use aws_config::BehaviorVersion;
use aws_sdk_dynamodb::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_dynamodb::config::retry::RetryConfig;
use aws_sdk_dynamodb::config::timeout::TimeoutConfig;
use aws_sdk_dynamodb::config::{ConfigBag, Credentials, Intercept, Region, RuntimeComponents};

use crate::DynamoDbConfig;
use crate::error::DynamoDbError;

/// Counts every HTTP request sent to DynamoDB (each retry attempt included), per operation
/// (`TransactWriteItems`, `Query`, …). Shared by clones; read it with [`RequestCounter::snapshot`].
#[derive(Debug, Clone, Default)]
pub struct RequestCounter {
    inner: Arc<CounterInner>,
}

#[derive(Debug, Default)]
struct CounterInner {
    total: AtomicU64,
    by_operation: Mutex<BTreeMap<String, u64>>,
}

impl CounterInner {
    fn by_operation(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, u64>> {
        self.by_operation.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The requests counted so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestCounts {
    pub total: u64,
    pub by_operation: BTreeMap<String, u64>,
}

impl RequestCounts {
    /// Requests in `self` that were not yet in `before`.
    pub fn since(&self, before: &RequestCounts) -> RequestCounts {
        let by_operation = self
            .by_operation
            .iter()
            .map(|(op, n)| {
                (
                    op.clone(),
                    n - before.by_operation.get(op).copied().unwrap_or(0),
                )
            })
            .filter(|(_, n)| *n > 0)
            .collect();
        RequestCounts {
            total: self.total - before.total,
            by_operation,
        }
    }

    pub fn operation(&self, name: &str) -> u64 {
        self.by_operation.get(name).copied().unwrap_or(0)
    }

    /// Requests that read: `GetItem`, `Query`, `Scan`, `BatchGetItem`.
    pub fn reads(&self) -> u64 {
        ["GetItem", "Query", "Scan", "BatchGetItem"]
            .iter()
            .map(|op| self.operation(op))
            .sum()
    }
}

impl RequestCounter {
    pub fn snapshot(&self) -> RequestCounts {
        RequestCounts {
            total: self.inner.total.load(Ordering::Relaxed),
            by_operation: self.inner.by_operation().clone(),
        }
    }
}

impl Intercept for RequestCounter {
    fn name(&self) -> &'static str {
        "kiroku-request-counter"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), aws_sdk_dynamodb::error::BoxError> {
        // `X-Amz-Target: DynamoDB_20120810.Query` names the operation.
        let target = context.request().headers().get("x-amz-target");
        let operation = target
            .and_then(|t| t.rsplit('.').next())
            .unwrap_or("unknown");
        self.inner.total.fetch_add(1, Ordering::Relaxed);
        *self
            .inner
            .by_operation()
            .entry(operation.to_owned())
            .or_default() += 1;
        Ok(())
    }
}

/// Both SDK clients, sharing one configuration and one request counter.
#[derive(Debug, Clone)]
pub(crate) struct Clients {
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub streams: aws_sdk_dynamodbstreams::Client,
    pub counter: RequestCounter,
}

impl Clients {
    pub async fn build(config: &DynamoDbConfig) -> Result<Clients, DynamoDbError> {
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        let region = config
            .region
            .clone()
            .or_else(|| config.endpoint.as_ref().map(|_| "us-east-1".to_owned()));
        if let Some(region) = region {
            loader = loader.region(Region::new(region));
        }
        if let Some(endpoint) = &config.endpoint {
            loader = loader.endpoint_url(endpoint);
            if !environment_has_credentials() {
                // A local server checks no signature, but the SDK insists on signing.
                loader = loader.credentials_provider(Credentials::new(
                    "kiroku",
                    "kiroku",
                    None,
                    None,
                    "kiroku-local",
                ));
            }
        }
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(config.retry.connect_timeout)
            .operation_attempt_timeout(config.retry.attempt_timeout)
            .build();
        // Retries are ours (see `retry.rs`): we must know whether an earlier attempt may have
        // been applied, which the SDK's retry loop would hide.
        let shared = loader
            .timeout_config(timeouts)
            .retry_config(RetryConfig::disabled())
            .load()
            .await;
        if shared.region().is_none() {
            return Err(DynamoDbError::Config(
                "no AWS region: add region=… to the journal url or set AWS_REGION".into(),
            ));
        }
        let counter = RequestCounter::default();
        let dynamodb = aws_sdk_dynamodb::config::Builder::from(&shared)
            .interceptor(counter.clone())
            .build();
        let streams = aws_sdk_dynamodbstreams::config::Builder::from(&shared)
            .interceptor(counter.clone())
            .build();
        Ok(Clients {
            dynamodb: aws_sdk_dynamodb::Client::from_conf(dynamodb),
            streams: aws_sdk_dynamodbstreams::Client::from_conf(streams),
            counter,
        })
    }
}

/// Whether the standard environment variables name credentials (then they are used, also
/// against a local endpoint).
fn environment_has_credentials() -> bool {
    std::env::var_os("AWS_ACCESS_KEY_ID").is_some() || std::env::var_os("AWS_PROFILE").is_some()
}
