//! The gRPC face: `kiroku.v1.ReadService` over [`ReadQueries`]. Protobuf stops here.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use kiroku_proto::auth::identity;
use kiroku_proto::v1 as pb;
use kiroku_read_model_updater::{MessageView, RoomSummary, UpdaterFailure, UpdaterHealth};
use tonic::{Request, Response, Status};

use crate::live::{LiveStreams, RoomUpdate};
use crate::query::{ConsistencyToken, ProjectionStatus, ReadQueries};

pub struct ReadGrpc {
    queries: ReadQueries,
    live: LiveStreams,
}

impl ReadGrpc {
    pub fn new(queries: ReadQueries, live: LiveStreams) -> Self {
        Self { queries, live }
    }
}

fn token(c: Option<&pb::Consistency>) -> Result<Option<ConsistencyToken>, Status> {
    match c {
        None => Ok(None),
        Some(c) => Ok(ConsistencyToken::parse(
            &c.aggregate_id,
            c.version,
            c.timeout_ms.into(),
        )?),
    }
}

type Updates = Pin<Box<dyn Stream<Item = Result<pb::RoomUpdate, Status>> + Send>>;

#[tonic::async_trait]
impl pb::read_service_server::ReadService for ReadGrpc {
    async fn get_room(
        &self,
        request: Request<pb::GetRoomRequest>,
    ) -> Result<Response<pb::RoomSummary>, Status> {
        let who = identity(&request)?;
        let r = request.into_inner();
        let token = token(r.consistency.as_ref())?;
        let room = self
            .queries
            .room(&who.principal, &r.room_id, token.as_ref())
            .await?;
        Ok(Response::new(room_pb(room)))
    }

    async fn list_messages(
        &self,
        request: Request<pb::ListMessagesRequest>,
    ) -> Result<Response<pb::ListMessagesResponse>, Status> {
        let who = identity(&request)?;
        let r = request.into_inner();
        let token = token(r.consistency.as_ref())?;
        let page = self
            .queries
            .messages(
                &who.principal,
                &r.room_id,
                &r.cursor,
                r.page_size,
                token.as_ref(),
            )
            .await?;
        Ok(Response::new(pb::ListMessagesResponse {
            messages: page.messages.into_iter().map(message_pb).collect(),
            next_cursor: page.next_cursor.map(|c| c.encode()).unwrap_or_default(),
        }))
    }

    async fn list_member_rooms(
        &self,
        request: Request<pb::ListMemberRoomsRequest>,
    ) -> Result<Response<pb::ListMemberRoomsResponse>, Status> {
        let who = identity(&request)?;
        let r = request.into_inner();
        let token = token(r.consistency.as_ref())?;
        let rooms = self
            .queries
            .member_rooms(&who.principal, &r.user_id, r.limit, token.as_ref())
            .await?;
        Ok(Response::new(pb::ListMemberRoomsResponse {
            rooms: rooms.into_iter().map(room_pb).collect(),
        }))
    }

    async fn get_projection_status(
        &self,
        request: Request<pb::GetProjectionStatusRequest>,
    ) -> Result<Response<pb::ProjectionStatus>, Status> {
        identity(&request)?;
        let status = self
            .queries
            .status(&request.into_inner().projection)
            .await?;
        Ok(Response::new(status_pb(status)))
    }

    type WatchRoomStream = Updates;

    async fn watch_room(
        &self,
        request: Request<pb::WatchRoomRequest>,
    ) -> Result<Response<Updates>, Status> {
        let who = identity(&request)?;
        let r = request.into_inner();
        let updates = self
            .live
            .watch_room(&self.queries, &who.principal, &r.room_id, r.after_version)
            .await?;
        let updates = updates.map(|u| u.map(update_pb).map_err(Status::from));
        Ok(Response::new(Box::pin(updates)))
    }
}

fn room_pb(r: RoomSummary) -> pb::RoomSummary {
    pb::RoomSummary {
        room_id: r.room_id,
        name: r.name,
        owner: r.owner,
        members: r.members,
        message_count: r.message_count,
        archived: r.archived,
        created_ms: r.created_ms,
        last_activity_ms: r.last_activity_ms,
        version: r.version,
    }
}

fn message_pb(m: MessageView) -> pb::Message {
    pb::Message {
        room_id: m.room_id,
        message_id: m.message_id,
        sequence: m.sequence,
        author: m.author,
        body: m.body,
        edited: m.edited,
        deleted: m.deleted,
        posted_ms: m.posted_ms,
        edited_ms: m.edited_ms,
        changed_version: m.changed_version,
    }
}

fn update_pb(u: RoomUpdate) -> pb::RoomUpdate {
    pb::RoomUpdate {
        version: u.version,
        room: u.room.map(room_pb),
        messages: u.messages.into_iter().map(message_pb).collect(),
    }
}

fn status_pb(s: ProjectionStatus) -> pb::ProjectionStatus {
    pb::ProjectionStatus {
        projection: s.projection,
        active_version: s.active_version,
        building_version: s.building_version,
        position: s.position,
        head: s.head,
        lag_events: s.lag_events,
        lag_seconds: s.lag_seconds,
        dead_letters: s.dead_letters,
        last_event_ms: s.last_event_ms,
        updated_ms: s.updated_ms,
        updater: s.updater.map(updater_pb),
    }
}

fn updater_pb(h: UpdaterHealth) -> pb::UpdaterHealth {
    let last = h.last_failure.unwrap_or_else(|| UpdaterFailure {
        at_ms: 0,
        transient: false,
        summary: String::new(),
        error_id: String::new(),
    });
    pb::UpdaterHealth {
        committing: h.committing,
        failing_since_ms: h.failing_since_ms.unwrap_or(0),
        consecutive_failures: h.consecutive_failures,
        transient_faults: h.transient_faults,
        restarts: h.restarts,
        last_error: last.summary,
        last_error_transient: last.transient,
        last_error_ms: last.at_ms,
        last_error_id: last.error_id,
    }
}
