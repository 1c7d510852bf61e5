//! Measures DynamoDB requests and time per command against a DynamoDB-compatible server.
//!
//! ```text
//! bash deploy/local/with-moto.sh cargo run -p kiroku-journal-dynamodb --example bench -- 20 50 16
//! KIROKU_JOURNAL='dynamodb://?region=eu-west-1&prefix=bench_' cargo run ... --example bench
//! ```
//!
//! Arguments: aggregates, commands per aggregate, tail events for cold activation. The journal is
//! `KIROKU_JOURNAL` when set, else the test server of `KIROKU_TEST_DYNAMODB_ENDPOINT` on fresh,
//! uniquely prefixed tables that are deleted afterwards.

use anyhow::Context;
use kiroku_journal_dynamodb::bench::{bench_appends, bench_cold_activation};
use kiroku_journal_dynamodb::{DynamoDbConfig, DynamoDbJournal};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>());
    let aggregates = args.next().transpose()?.unwrap_or(20);
    let commands = args.next().transpose()?.unwrap_or(50);
    let tail = args.next().transpose()?.unwrap_or(16);

    let (config, scratch) = match std::env::var("KIROKU_JOURNAL") {
        Ok(url) => (DynamoDbConfig::from_url(&url)?, false),
        Err(_) => {
            let endpoint = std::env::var("KIROKU_TEST_DYNAMODB_ENDPOINT")
                .context("set KIROKU_JOURNAL or run under deploy/local/with-moto.sh")?;
            let prefix = format!("bench{}_", &uuid::Uuid::new_v4().simple().to_string()[..8]);
            let url = format!("dynamodb://?endpoint={endpoint}&region=us-east-1&prefix={prefix}");
            (DynamoDbConfig::from_url(&url)?, true)
        }
    };
    let journal = DynamoDbJournal::connect(config).await?;
    journal.init_tables().await?;
    let result = async {
        println!("{}", bench_appends(&journal, aggregates, commands).await?);
        println!(
            "{}",
            bench_cold_activation(&journal, aggregates, tail).await?
        );
        anyhow::Ok(())
    }
    .await;
    if scratch {
        journal.delete_tables().await?;
    }
    result
}
