//! A small HTTP server for moat's read-only endpoints (`/metrics`), built on
//! hyper: connections are served concurrently (a slow or idle client delays
//! nobody else), headers are capped in size and must arrive within a
//! deadline, every connection has a lifetime limit, and the number of
//! connections is bounded. The body is produced on a blocking thread (it
//! reads BPF maps), so reading never stalls the accept loop.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use http_body_util::Full;
use hyper::{
    Request, Response, StatusCode,
    body::{Bytes, Incoming},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};

/// Limits of the server (the defaults are what `moat metrics` uses).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Bytes of request line + headers (hyper's read buffer; larger: 431/close).
    pub max_header_bytes: usize,
    /// Time a client has to send its request headers.
    pub header_timeout: Duration,
    /// Longest a connection may live (slow readers of the response included).
    pub conn_lifetime: Duration,
    /// Connections served at once; more wait in the kernel's backlog.
    pub max_conns: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_header_bytes: 16 * 1024,
            header_timeout: Duration::from_secs(5),
            conn_lifetime: Duration::from_secs(30),
            max_conns: 64,
        }
    }
}

/// What a GET of a path answers: (status, content type, body).
pub type Answer = (StatusCode, &'static str, String);

/// Serves `answer` on `listen` until `stop` is set or `duration` passes.
/// `ready` is called with the bound address once the socket listens.
pub fn serve(
    listen: &str,
    limits: Limits,
    duration: Option<Duration>,
    stop: Arc<AtomicBool>,
    ready: impl FnOnce(SocketAddr),
    answer: impl Fn(&str) -> Answer + Send + Sync + 'static,
) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .max_blocking_threads(4)
        .build()
        .context("starting the HTTP runtime")?;
    let answer = Arc::new(answer);
    rt.block_on(async move {
        let l = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("listening on {listen}"))?;
        ready(l.local_addr()?);
        let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_conns));
        let t0 = Instant::now();
        loop {
            if stop.load(Ordering::Relaxed) || duration.is_some_and(|d| t0.elapsed() >= d) {
                return Ok(());
            }
            let permit = tokio::select! {
                p = Arc::clone(&slots).acquire_owned() => p.expect("semaphore closed"),
                _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
            };
            let (sock, _) = tokio::select! {
                r = l.accept() => match r {
                    Ok(x) => x,
                    Err(_) => continue, // e.g. EMFILE: try again
                },
                _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
            };
            let answer = Arc::clone(&answer);
            tokio::spawn(async move {
                let _permit = permit;
                let svc = service_fn(move |req: Request<Incoming>| {
                    let answer = Arc::clone(&answer);
                    async move {
                        let path = req.uri().path().to_string();
                        let r = if req.method() == hyper::Method::GET {
                            tokio::task::spawn_blocking(move || answer(&path))
                                .await
                                .unwrap_or_else(|_| {
                                    (
                                        StatusCode::INTERNAL_SERVER_ERROR,
                                        "text/plain",
                                        "internal error\n".into(),
                                    )
                                })
                        } else {
                            (
                                StatusCode::METHOD_NOT_ALLOWED,
                                "text/plain",
                                "only GET\n".into(),
                            )
                        };
                        let (status, ctype, body) = r;
                        Ok::<_, Infallible>(
                            Response::builder()
                                .status(status)
                                .header("content-type", ctype)
                                .body(Full::new(Bytes::from(body)))
                                .expect("valid response"),
                        )
                    }
                });
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(limits.header_timeout)
                    .max_buf_size(limits.max_header_bytes.max(8192))
                    .serve_connection(TokioIo::new(sock), svc);
                let _ = tokio::time::timeout(limits.conn_lifetime, conn).await;
            });
        }
    })
}
