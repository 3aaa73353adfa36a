//! Accepted connections: plain TCP, or TLS over it (handshakes done off the accept loop, each
//! bounded), closed when the peer stays silent for `--idle-timeout`; and what a connection's
//! peer is ([`Peer`]: its address and, with TLS, its verified certificate), which every call
//! on it can read from the request's extensions.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use factotum_service::tls::{PeerCert, Reloadable};
use factotum_service::Lifecycle;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};

/// How long a TLS handshake may take.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// Who is at the other end of a connection.
#[derive(Debug, Clone, Default)]
pub struct Peer {
    pub addr: Option<SocketAddr>,
    /// With TLS: the client certificate it presented (verified against `--tls-client-ca`).
    pub cert: Option<PeerCert>,
}

/// An accepted connection.
pub enum Conn {
    Plain(Silent),
    Tls(Box<tokio_rustls::server::TlsStream<Silent>>),
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        match self {
            Conn::Plain(s) => Peer {
                addr: s.stream.peer_addr().ok(),
                cert: None,
            },
            Conn::Tls(t) => {
                let (io, session) = t.get_ref();
                Peer {
                    addr: io.stream.peer_addr().ok(),
                    cert: session
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(|c| PeerCert::from_der(c)),
                }
            }
        }
    }
}

impl Conn {
    /// The peer's address, if the socket still knows it.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        match self {
            Conn::Plain(s) => s.stream.peer_addr().ok(),
            Conn::Tls(t) => t.get_ref().0.stream.peer_addr().ok(),
        }
    }
}

/// Accepted connections, as the server takes them.
pub type Incoming = Pin<Box<dyn Stream<Item = Result<Conn, std::io::Error>> + Send>>;

/// Which port a connection is for: the TLS config's ALPN differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    Grpc,
    Http,
}

/// The connections accepted on `listener`: TLS with the current config of `tls` if given.
pub fn incoming(
    listener: TcpListener,
    idle: Duration,
    tls: Option<Arc<Reloadable>>,
    port: Port,
    life: Lifecycle,
) -> Incoming {
    // No Nagle: leases and results are small messages that must not wait for a delayed ACK.
    // TCP keepalive finds peers that vanished without a FIN; `Silent` closes connections whose
    // peer sends nothing at all for `--idle-timeout` (a TCP connection that never speaks
    // HTTP/2, or never finishes its TLS handshake, included: tonic 0.14 has no handshake or
    // idle timeout of its own). A live HTTP/2 peer is never silent that long: it answers the
    // server's keepalive pings.
    let mut tcp = tonic::transport::server::TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(TCP_KEEPALIVE));
    let Some(tls) = tls else {
        return Box::pin(tcp.map(move |c| c.map(|stream| Conn::Plain(Silent::new(stream, idle)))));
    };
    let (tx, rx) = mpsc::channel(64);
    let stop = life.token.clone();
    let handshakes = life.clone();
    life.spawn(async move {
        loop {
            let stream = tokio::select! {
                next = tcp.next() => match next {
                    Some(Ok(stream)) => stream,
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "accept failed");
                        continue;
                    }
                    None => return,
                },
                _ = stop.cancelled() => return,
            };
            let acceptor = match port {
                Port::Grpc => tls.acceptor(),
                Port::Http => tls.http_acceptor(),
            };
            let tx = tx.clone();
            handshakes.spawn(async move {
                let peer = stream.peer_addr().ok();
                let shake = acceptor.accept(Silent::new(stream, idle));
                match tokio::time::timeout(HANDSHAKE, shake).await {
                    Ok(Ok(conn)) => {
                        let _ = tx.send(Ok(Conn::Tls(Box::new(conn)))).await;
                    }
                    // A plaintext client on the TLS port, a certificate from another CA, ...
                    Ok(Err(e)) => tracing::info!(?peer, error = %e, "TLS handshake refused"),
                    Err(_) => tracing::info!(?peer, "TLS handshake timed out"),
                }
            });
        }
    });
    Box::pin(ReceiverStream::new(rx))
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(t) => Pin::new(t.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(t) => Pin::new(t.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::Tls(t) => Pin::new(t.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(s) => s.is_write_vectored(),
            Conn::Tls(t) => t.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(t) => Pin::new(t.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(t) => Pin::new(t.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Idle time before TCP keepalive probes start on an accepted connection.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// An accepted connection that fails its reads once the peer has sent nothing for `timeout`,
/// so hyper closes it.
pub struct Silent {
    stream: TcpStream,
    timeout: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl Silent {
    fn new(stream: TcpStream, timeout: Duration) -> Silent {
        Silent {
            stream,
            timeout,
            deadline: Box::pin(tokio::time::sleep(timeout)),
        }
    }
}

impl AsyncRead for Silent {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    let next = tokio::time::Instant::now() + self.timeout;
                    self.deadline.as_mut().reset(next);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => match self.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the peer sent nothing for --idle-timeout",
                ))),
                Poll::Pending => Poll::Pending,
            },
            ready => ready,
        }
    }
}

impl AsyncWrite for Silent {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
