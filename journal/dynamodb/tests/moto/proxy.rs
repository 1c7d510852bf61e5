//! A TCP proxy in front of the test server that makes real network faults: responses lost after
//! the server applied the request, a server that stops answering, and one that is gone.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

#[derive(Default)]
struct Faults {
    /// Responses still to swallow: the request reaches the server, the answer never comes back.
    drop_responses: AtomicU32,
    /// Accept connections but never forward or answer anything.
    stall: AtomicBool,
    /// Error responses to give, one per new connection, instead of forwarding its request.
    canned: std::sync::Mutex<std::collections::VecDeque<(u16, &'static str)>>,
}

pub struct FaultProxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    faults: Arc<Faults>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl FaultProxy {
    /// Starts forwarding a free local port to `upstream` (an `http://host:port` endpoint).
    pub async fn start(upstream: &str) -> Arc<FaultProxy> {
        let upstream: SocketAddr = upstream
            .trim_start_matches("http://")
            .parse()
            .expect("endpoint is http://ip:port");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = Arc::new(FaultProxy {
            addr: listener.local_addr().unwrap(),
            upstream,
            faults: Arc::default(),
            tasks: Mutex::new(Vec::new()),
        });
        proxy.serve(listener).await;
        proxy
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn drop_next_responses(&self, n: u32) {
        self.faults.drop_responses.store(n, Ordering::SeqCst);
    }

    /// The next new connections get these answers (status, DynamoDB error type) to their first
    /// request, which never reaches the server; the connection is then closed.
    pub fn answer_next_with(&self, errors: &[(u16, &'static str)]) {
        self.faults
            .canned
            .lock()
            .unwrap()
            .extend(errors.iter().copied());
    }

    pub fn set_stall(&self, stall: bool) {
        self.faults.stall.store(stall, Ordering::SeqCst);
    }

    /// The server disappears: the port refuses connections and open connections are cut.
    pub async fn go_down(&self) {
        let tasks: Vec<_> = self.tasks.lock().await.drain(..).collect();
        for task in &tasks {
            task.abort();
        }
        for task in tasks {
            // Aborted tasks drop their sockets (and the listener) before they report back.
            let _ = task.await;
        }
    }

    /// The server comes back on the same port.
    pub async fn come_back(self: &Arc<Self>) {
        let listener = TcpListener::bind(self.addr)
            .await
            .expect("rebind the proxy port");
        self.serve(listener).await;
    }

    async fn serve(self: &Arc<Self>, listener: TcpListener) {
        let this = self.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let conn = tokio::spawn(this.clone().connection(client));
                this.tasks.lock().await.push(conn);
            }
        });
        self.tasks.lock().await.push(accept);
    }

    async fn connection(self: Arc<Self>, client: TcpStream) {
        if self.faults.stall.load(Ordering::SeqCst) {
            // Hold the connection open and say nothing.
            let _held = client;
            return std::future::pending::<()>().await;
        }
        let canned = self.faults.canned.lock().unwrap().pop_front();
        if let Some((status, error_type)) = canned {
            return answer(client, status, error_type).await;
        }
        let Ok(server) = TcpStream::connect(self.upstream).await else {
            return;
        };
        let (mut client_read, mut client_write) = client.into_split();
        let (mut server_read, mut server_write) = server.into_split();
        let upstream = tokio::spawn(async move {
            let mut buf = vec![0; 64 * 1024];
            while let Ok(n) = client_read.read(&mut buf).await {
                if n == 0 || server_write.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        });
        let mut buf = vec![0; 64 * 1024];
        while let Ok(n) = server_read.read(&mut buf).await {
            if n == 0 {
                break;
            }
            let drop_it = self
                .faults
                .drop_responses
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if drop_it || client_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        upstream.abort();
    }
}

/// Reads the request head and answers with a DynamoDB-style JSON error, then closes.
async fn answer(mut client: TcpStream, status: u16, error_type: &str) {
    let mut buf = vec![0; 64 * 1024];
    let _ = client.read(&mut buf).await;
    let body = format!(
        r#"{{"__type":"com.amazonaws.dynamodb.v20120810#{error_type}","message":"injected by the test proxy"}}"#
    );
    let response = format!(
        "HTTP/1.1 {status} Injected\r\nContent-Type: application/x-amz-json-1.0\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = client.write_all(response.as_bytes()).await;
    let _ = client.shutdown().await;
}
