//! Assembles the read API: the gRPC routes (also mounted on the write API's server by
//! `kiroku dev`), the HTTP router, and a standalone server with health and reflection.

use std::future::{Future, IntoFuture};
use std::time::Duration;

use futures::FutureExt;
use kiroku_proto::auth::Auth;
use kiroku_proto::codec::TRANSPORT_MAX_BYTES;
use kiroku_proto::v1::read_service_server::ReadServiceServer;
use tokio::net::TcpListener;
use tonic::service::Routes;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;

use crate::grpc::ReadGrpc;
use crate::limits::ReadLimits;
use crate::live::LiveStreams;
use crate::query::ReadQueries;

/// How long open connections may take to finish when the server stops (live streams end at
/// once; this bounds slow clients).
const DRAIN: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct ReadApi {
    pub queries: ReadQueries,
    pub auth: Auth,
    pub live: LiveStreams,
}

impl ReadApi {
    pub fn new(queries: ReadQueries, auth: Auth) -> Self {
        Self {
            queries,
            auth,
            live: LiveStreams::default(),
        }
    }

    /// Live push woken by the commits of the updater in this process (see [`LiveStreams`]).
    pub fn with_live(mut self, live: LiveStreams) -> Self {
        self.live = live;
        self
    }

    /// Caps consistency waits and live streams, per principal and in total (after
    /// [`ReadApi::with_live`], which brings its own stream caps).
    pub fn with_limits(mut self, limits: ReadLimits) -> Self {
        self.queries = self.queries.with_wait_caps(limits.waits);
        self.live = self.live.with_caps(limits.streams);
        self
    }

    fn service(&self) -> ReadServiceServer<ReadGrpc> {
        ReadServiceServer::new(ReadGrpc::new(self.queries.clone(), self.live.clone()))
            .max_decoding_message_size(TRANSPORT_MAX_BYTES)
    }

    /// `kiroku.v1.ReadService` behind authentication, to mount on any tonic server.
    pub fn grpc_routes(&self) -> Routes {
        Routes::new(InterceptedService::new(
            self.service(),
            self.auth.interceptor(),
        ))
    }

    pub fn http_router(&self) -> axum::Router {
        crate::http::router(self.queries.clone(), self.live.clone(), self.auth.clone())
    }

    /// Ends every live stream, so that servers can drain.
    pub fn close_streams(&self) {
        self.live.close();
    }

    /// Serves HTTP on `listener` until `shutdown`; then ends live streams and lets open
    /// requests finish (bounded).
    pub async fn serve_http(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let live = self.live.clone();
        let (drained_tx, drained_rx) = tokio::sync::oneshot::channel::<()>();
        let server = axum::serve(listener, self.http_router()).with_graceful_shutdown(async move {
            shutdown.await;
            live.close();
            let _ = drained_tx.send(());
        });
        bounded(
            server.into_future(),
            async {
                let _ = drained_rx.await;
            },
            "HTTP",
        )
        .await
    }

    /// The read API alone: gRPC (with health and reflection) on `grpc`, HTTP on `http`, until
    /// `shutdown`.
    pub async fn serve(
        self,
        grpc: TcpListener,
        http: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let shutdown = shutdown.boxed().shared();
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<ReadServiceServer<ReadGrpc>>().await;
        let live = self.live.clone();
        let grpc_shutdown = shutdown.clone();
        let drain_after = shutdown.clone();
        let grpc_server = Server::builder()
            .add_routes(kiroku_proto::with_reflection(self.grpc_routes()))
            .add_service(health_service)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(grpc),
                async move {
                    grpc_shutdown.await;
                    live.close();
                    health
                        .set_not_serving::<ReadServiceServer<ReadGrpc>>()
                        .await;
                },
            );
        let grpc_server = bounded(grpc_server, drain_after, "gRPC");
        let http_server = self.serve_http(http, shutdown);
        let (g, h) = tokio::join!(grpc_server, http_server);
        g.map_err(|e| ServeError::Grpc(e.to_string()))?;
        h.map_err(|e| ServeError::Http(e.to_string()))?;
        Ok(())
    }
}

/// Runs `server` to its end, but once `signalled` has resolved gives it at most [`DRAIN`] more:
/// a client that never closes its connection must not keep the process from stopping.
async fn bounded<E>(
    server: impl Future<Output = Result<(), E>>,
    signalled: impl Future<Output = ()>,
    what: &str,
) -> Result<(), E> {
    tokio::select! {
        r = server => r,
        _ = async { signalled.await; tokio::time::sleep(DRAIN).await } => {
            tracing::warn!(what, "read api: connections still open after the drain time; closing them");
            Ok(())
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("grpc server: {0}")]
    Grpc(String),
    #[error("http server: {0}")]
    Http(String),
}
