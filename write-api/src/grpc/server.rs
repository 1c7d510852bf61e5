//! Assembles the write API's gRPC server: services, authentication, limits, health, reflection,
//! graceful shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use kiroku_chat::Room;
use kiroku_proto::codec::TRANSPORT_MAX_BYTES;
use kiroku_proto::v1::command_service_server::CommandServiceServer;
use kiroku_proto::v1::history_service_server::HistoryServiceServer;
use tokio::net::TcpListener;
use tonic::service::Routes;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;

use super::{Auth, CommandApi, HistoryApi, ProjectionWait};
use crate::runtime::AggregateRuntime;

#[derive(Debug, Clone)]
pub struct WriteApiConfig {
    /// How long admitted commands may take to finish when the server stops.
    pub drain_timeout: Duration,
    /// Server-side cap on any one request.
    pub request_timeout: Duration,
}

impl Default for WriteApiConfig {
    fn default() -> Self {
        Self {
            drain_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(60),
        }
    }
}

pub struct WriteApi {
    pub rooms: AggregateRuntime<Room>,
    pub auth: Auth,
    pub config: WriteApiConfig,
    /// The read model in this process, for `WAIT_MODE_PROJECTED`.
    pub projections: Option<Arc<dyn ProjectionWait>>,
    /// More gRPC services on the same port (`kiroku dev` adds the read API), each with its own
    /// authentication.
    pub extra_routes: Option<Routes>,
}

impl WriteApi {
    /// Serves on `listener` until `shutdown` resolves; then stops accepting, drains the admitted
    /// commands (their events are durable once answered) and stops the aggregates.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), tonic::transport::Error> {
        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_serving::<CommandServiceServer<CommandApi>>()
            .await;
        health
            .set_serving::<HistoryServiceServer<HistoryApi>>()
            .await;
        let commands = CommandServiceServer::new(CommandApi::new(
            self.rooms.clone(),
            self.projections.clone(),
        ))
        .max_decoding_message_size(TRANSPORT_MAX_BYTES);
        let history = HistoryServiceServer::new(HistoryApi::new(self.rooms.clone()))
            .max_decoding_message_size(TRANSPORT_MAX_BYTES);
        let interceptor = self.auth.interceptor();
        let rooms = self.rooms.clone();
        let drain = self.config.drain_timeout;
        let (signalled, on_signal) = tokio::sync::oneshot::channel::<()>();
        let server = Server::builder()
            .timeout(self.config.request_timeout)
            .add_routes(kiroku_proto::with_reflection(
                self.extra_routes.unwrap_or_default(),
            ))
            .add_service(health_service)
            .add_service(InterceptedService::new(commands, interceptor.clone()))
            .add_service(InterceptedService::new(history, interceptor))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async move {
                    shutdown.await;
                    tracing::info!("shutting down: no new commands, draining admitted ones");
                    health
                        .set_not_serving::<CommandServiceServer<CommandApi>>()
                        .await;
                    let _ = signalled.send(());
                },
            );
        // Open connections get the drain time to finish; a client that stops reading a stream
        // must not keep the process from stopping.
        let bounded = async {
            match on_signal.await {
                Ok(()) => tokio::time::sleep(drain).await,
                Err(_) => std::future::pending().await,
            }
        };
        let result = tokio::select! {
            r = server => r,
            _ = bounded => {
                tracing::warn!(timeout = ?drain, "connections still open after the drain time; closing them");
                Ok(())
            }
        };
        if !rooms.shutdown(drain).await {
            tracing::warn!(timeout = ?drain, "some commands did not finish draining in time");
        }
        result
    }
}
