//! Tests against a real DynamoDB-compatible server (moto), started by
//! `bash deploy/local/with-moto.sh cargo test -p kiroku-journal-dynamodb`.

mod support;

mod conformance {
    kiroku_journal::journal_conformance_suite!(crate::support::fresh());
}

mod faults;
mod proxy;
mod scale;
