//! `kiroku.v1.HistoryService`: who did what, when, with which command — and the state at any
//! past version or moment.

use kiroku_chat::Room;
use kiroku_core::Aggregate;
use kiroku_journal::Envelope;
use kiroku_proto::v1::history_service_server::HistoryService;
use kiroku_proto::v1::{
    HistoryEntry, HistoryRequest, HistoryResponse, StateAtRequest, StateAtResponse,
    state_at_request::At,
};
use tonic::{Request, Response, Status};

use super::status::{from_command_error, internal, journal};
use crate::runtime::AggregateRuntime;
use kiroku_proto::auth::identity;

const DEFAULT_LIMIT: u32 = 100;
const MAX_LIMIT: u32 = 1000;

#[derive(Clone)]
pub struct HistoryApi {
    rooms: AggregateRuntime<Room>,
}

impl HistoryApi {
    pub fn new(rooms: AggregateRuntime<Room>) -> Self {
        Self { rooms }
    }

    /// Resolves the aggregate named by a request; only rooms exist today.
    fn check(&self, aggregate_type: &str, aggregate_id: &str) -> Result<(), Status> {
        if !(aggregate_type.is_empty() || aggregate_type == Room::TYPE) {
            return Err(Status::not_found(format!(
                "unknown aggregate type {aggregate_type:?}; known: {:?}",
                Room::TYPE
            )));
        }
        if aggregate_id.is_empty() {
            return Err(Status::invalid_argument("aggregate_id is required"));
        }
        Ok(())
    }

    async fn highest(&self, aggregate_id: &str) -> Result<u64, Status> {
        let stream = AggregateRuntime::<Room>::stream(aggregate_id);
        let highest = self
            .rooms
            .journal()
            .highest_sequence(&stream)
            .await
            .map_err(journal)?;
        if highest == 0 {
            return Err(Status::not_found(format!(
                "{} {aggregate_id} does not exist",
                Room::TYPE
            )));
        }
        Ok(highest)
    }
}

fn entry(e: Envelope) -> HistoryEntry {
    let event_json = match Room::decode(&e.event_type, e.schema_version, &e.payload) {
        Ok(event) => serde_json::to_string(&event).unwrap_or_default(),
        Err(err) => serde_json::json!({ "undecodable": err.to_string() }).to_string(),
    };
    HistoryEntry {
        sequence: e.sequence,
        global_position: e.global_position,
        event_type: e.event_type,
        schema_version: e.schema_version,
        event_json,
        payload: e.payload,
        timestamp_ms: e.metadata.timestamp_ms,
        principal: e.metadata.principal,
        command_id: e.metadata.command_id,
        correlation_id: e.metadata.correlation_id,
        causation_id: e.metadata.causation_id,
    }
}

#[tonic::async_trait]
impl HistoryService for HistoryApi {
    async fn get_history(
        &self,
        request: Request<HistoryRequest>,
    ) -> Result<Response<HistoryResponse>, Status> {
        identity(&request)?;
        let r = request.into_inner();
        self.check(&r.aggregate_type, &r.aggregate_id)?;
        let limit = match r.limit {
            0 => DEFAULT_LIMIT,
            n if n > MAX_LIMIT => {
                return Err(Status::invalid_argument(format!(
                    "limit {n} is above the maximum of {MAX_LIMIT}"
                )));
            }
            n => n,
        };
        let highest = self.highest(&r.aggregate_id).await?;
        let stream = AggregateRuntime::<Room>::stream(&r.aggregate_id);
        let events = self
            .rooms
            .journal()
            .read_stream(&stream, r.from_sequence.max(1), u64::MAX, limit as usize)
            .await
            .map_err(journal)?;
        let next_sequence = match events.last() {
            Some(last) if events.len() == limit as usize && last.sequence < highest => {
                last.sequence + 1
            }
            _ => 0,
        };
        Ok(Response::new(HistoryResponse {
            events: events.into_iter().map(entry).collect(),
            next_sequence,
            highest_sequence: highest,
        }))
    }

    async fn get_state_at(
        &self,
        request: Request<StateAtRequest>,
    ) -> Result<Response<StateAtResponse>, Status> {
        identity(&request)?;
        let r = request.into_inner();
        self.check(&r.aggregate_type, &r.aggregate_id)?;
        let at = r
            .at
            .ok_or_else(|| Status::invalid_argument("give either a version or a timestamp_ms"))?;
        let highest = self.highest(&r.aggregate_id).await?;
        let (max_version, at_ms) = match at {
            At::Version(0) => return Err(Status::invalid_argument("version starts at 1")),
            At::Version(v) if v > highest => {
                return Err(Status::invalid_argument(format!(
                    "version {v} is beyond the latest version {highest} of {}",
                    r.aggregate_id
                )));
            }
            At::Version(v) => (v, None),
            At::TimestampMs(t) => (u64::MAX, Some(t)),
        };
        let (state, version) = self
            .rooms
            .state_at(&r.aggregate_id, max_version, at_ms)
            .await
            .map_err(|e| from_command_error(&e))?;
        if version == 0 {
            return Err(Status::not_found(format!(
                "{} had no events at or before that moment",
                r.aggregate_id
            )));
        }
        let state_json = serde_json::to_string(&state).map_err(internal)?;
        Ok(Response::new(StateAtResponse {
            version,
            state_json,
        }))
    }
}
