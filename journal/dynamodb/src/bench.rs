//! Load measurements for `kiroku bench` and the `bench` example: what one command costs in
//! DynamoDB requests and time, for a resident aggregate and for a cold activation.
//!
//! Numbers against moto (a single Python process) say nothing about DynamoDB's latency; the
//! request counts are what carries over.

use std::fmt;
use std::time::{Duration, Instant};

use kiroku_journal::{
    AppendRequest, EventMetadata, Journal, JournalError, NewEvent, SnapshotRecord, StreamId,
};

use crate::{DynamoDbJournal, RequestCounts};

/// Appends by resident aggregates: each aggregate is a task that, like an actor holding its
/// state, knows its version and sends one append per command (no read before the write).
#[derive(Debug, Clone)]
pub struct AppendBenchReport {
    pub aggregates: usize,
    pub commands: usize,
    pub events_per_command: usize,
    pub elapsed: Duration,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
    /// Requests sent during the run (retries included).
    pub requests: RequestCounts,
}

impl AppendBenchReport {
    pub fn commands_per_second(&self) -> f64 {
        self.commands as f64 / self.elapsed.as_secs_f64()
    }

    pub fn requests_per_command(&self) -> f64 {
        self.requests.total as f64 / self.commands as f64
    }

    pub fn reads_per_command(&self) -> f64 {
        self.requests.reads() as f64 / self.commands as f64
    }
}

impl fmt::Display for AppendBenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "resident appends: {} commands ({} events each) on {} aggregates in {:.2} s: \
             {:.0} commands/s, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; \
             {:.2} requests/command ({:.2} reads/command) {:?}",
            self.commands,
            self.events_per_command,
            self.aggregates,
            self.elapsed.as_secs_f64(),
            self.commands_per_second(),
            ms(self.p50),
            ms(self.p99),
            ms(self.max),
            self.requests_per_command(),
            self.reads_per_command(),
            self.requests.by_operation,
        )
    }
}

/// Runs `commands_per_aggregate` commands (one event each) on each of `aggregates` fresh
/// aggregates, the aggregates concurrently, each aggregate's commands in order.
pub async fn bench_appends(
    journal: &DynamoDbJournal,
    aggregates: usize,
    commands_per_aggregate: usize,
) -> Result<AppendBenchReport, JournalError> {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let before = journal.request_counts();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for a in 0..aggregates {
        let journal = journal.clone();
        let stream = StreamId::new("bench", format!("{run}-{a}"));
        let run = run.clone();
        tasks.spawn(async move {
            let mut latencies = Vec::with_capacity(commands_per_aggregate);
            for version in 0..commands_per_aggregate as u64 {
                let request = command(&stream, version, 1, &format!("{run}-{a}-{version}"));
                let t = Instant::now();
                journal.append(request).await?;
                latencies.push(t.elapsed());
            }
            Ok::<_, JournalError>(latencies)
        });
    }
    let mut latencies = Vec::with_capacity(aggregates * commands_per_aggregate);
    while let Some(done) = tasks.join_next().await {
        latencies.extend(done.map_err(|e| JournalError::Storage(format!("bench task: {e}")))??);
    }
    let elapsed = started.elapsed();
    latencies.sort();
    Ok(AppendBenchReport {
        aggregates,
        commands: latencies.len(),
        events_per_command: 1,
        elapsed,
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
        max: latencies.last().copied().unwrap_or_default(),
        requests: journal.request_counts().since(&before),
    })
}

/// Cold activations: an aggregate not in memory is restored from its latest snapshot plus the
/// events after it.
#[derive(Debug, Clone)]
pub struct ColdActivationReport {
    pub activations: usize,
    pub tail_events: usize,
    pub mean: Duration,
    pub p99: Duration,
    pub requests: RequestCounts,
}

impl ColdActivationReport {
    pub fn requests_per_activation(&self) -> f64 {
        self.requests.total as f64 / self.activations as f64
    }
}

impl fmt::Display for ColdActivationReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cold activations: {} (snapshot + {} tail events each): mean {:.1} ms, p99 {:.1} ms; \
             {:.2} requests/activation {:?}",
            self.activations,
            self.tail_events,
            ms(self.mean),
            ms(self.p99),
            self.requests_per_activation(),
            self.requests.by_operation,
        )
    }
}

/// Prepares `aggregates` streams with a snapshot at 10 and `tail_events` events after it, then
/// measures restoring each: `latest_snapshot` + `read_stream` of the tail (setup not counted).
pub async fn bench_cold_activation(
    journal: &DynamoDbJournal,
    aggregates: usize,
    tail_events: usize,
) -> Result<ColdActivationReport, JournalError> {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let snapshot_at = 10u64;
    let mut streams = Vec::with_capacity(aggregates);
    for a in 0..aggregates {
        let stream = StreamId::new("bench-cold", format!("{run}-{a}"));
        journal
            .append(command(
                &stream,
                0,
                snapshot_at as usize,
                &format!("{run}-{a}-base"),
            ))
            .await?;
        if tail_events > 0 {
            journal
                .append(command(
                    &stream,
                    snapshot_at,
                    tail_events,
                    &format!("{run}-{a}-tail"),
                ))
                .await?;
        }
        journal
            .save_snapshot(SnapshotRecord {
                stream: stream.clone(),
                sequence: snapshot_at,
                timestamp_ms: 0,
                state: vec![0; 512],
            })
            .await?;
        streams.push(stream);
    }
    let before = journal.request_counts();
    let mut times = Vec::with_capacity(aggregates);
    for stream in &streams {
        let t = Instant::now();
        let snapshot = journal.latest_snapshot(stream, u64::MAX).await?;
        let from = snapshot.map_or(0, |s| s.sequence) + 1;
        let tail = journal
            .read_stream(stream, from, u64::MAX, usize::MAX)
            .await?;
        times.push(t.elapsed());
        if tail.len() != tail_events {
            return Err(JournalError::Storage(format!(
                "cold activation of {stream} read {} tail events, expected {tail_events}",
                tail.len()
            )));
        }
    }
    let requests = journal.request_counts().since(&before);
    let mean = times.iter().sum::<Duration>() / times.len().max(1) as u32;
    times.sort();
    Ok(ColdActivationReport {
        activations: aggregates,
        tail_events,
        mean,
        p99: percentile(&times, 0.99),
        requests,
    })
}

fn command(stream: &StreamId, expected: u64, events: usize, command_id: &str) -> AppendRequest {
    AppendRequest {
        stream: stream.clone(),
        expected_sequence: expected,
        events: (0..events)
            .map(|_| NewEvent {
                event_type: "bench.Event".into(),
                schema_version: 1,
                payload: vec![0; 200],
            })
            .collect(),
        metadata: EventMetadata {
            command_id: command_id.into(),
            correlation_id: command_id.into(),
            causation_id: String::new(),
            principal: "bench".into(),
            timestamp_ms: 0,
        },
    }
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_right_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 0.99), Duration::from_millis(99));
        assert_eq!(percentile(&v, 0.50), Duration::from_millis(50));
        assert_eq!(percentile(&[], 0.99), Duration::ZERO);
    }
}
