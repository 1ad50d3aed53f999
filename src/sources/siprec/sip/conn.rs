//! SIP over TCP and TLS: the TLS handshake, a connection's framing and
//! its writer (bounded in time and in what waits unwritten), and the caps
//! on connections per peer.

use super::*;

/// The next connection on the TLS listener (never, without one).
pub(in crate::sources::siprec) async fn accept_tls(
    tls: &Option<(TcpListener, TlsShared)>,
) -> std::io::Result<(tokio::net::TcpStream, SocketAddr)> {
    match tls {
        Some((l, _)) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// One TLS connection: the handshake (bounded in time; with `tls_client_ca`
/// the client's certificate is verified here), then the same framing as TCP.
pub(in crate::sources::siprec) async fn tls_connection(
    acceptor: TlsAcceptor,
    sock: tokio::net::TcpStream,
    peer: SocketAddr,
    tx: mpsc::Sender<SipIn>,
    conn: ConnConfig,
    slot: ConnSlot,
) {
    let stream = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(sock)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::warn!(peer = %peer, "SIP over TLS: handshake refused: {e}");
            return;
        }
        Err(_) => {
            tracing::warn!(peer = %peer, "SIP over TLS: handshake not finished in time");
            return;
        }
    };
    let transport = uas::Transport::Tls;
    let (writer, reader) = stream_tasks(stream, peer, transport, tx.clone(), conn, slot);
    // Registered before the first message is read, so answers find their way.
    if tx
        .send(SipIn::Opened {
            peer,
            transport,
            writer,
        })
        .await
        .is_ok()
    {
        reader.await;
    }
}

/// How long one SIP message may take to be written to a TCP/TLS peer before
/// the connection is given up (the peer does not read it).
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Bytes that may wait to be written to one TCP/TLS peer. A burst (the BYEs
/// of hundreds of calls at a stop, or when their media stops together) fits
/// many times over; a peer that lets this much wait does not read its
/// connection.
pub(super) const MAX_UNWRITTEN: usize = 1 << 20;

/// Where the SIP task writes to one TCP/TLS connection. Sending never
/// waits: messages queue for the connection's writer task, every one of
/// them (none dropped from a burst to a peer that reads). The connection is
/// closed as a whole, its reader too (the SIP task hears
/// [`ConnEvent::Closed`], the peer opens a new one), when a message could
/// not be written within [`WRITE_TIMEOUT`] or [`MAX_UNWRITTEN`] bytes wait.
#[derive(Debug, Clone)]
pub(in crate::sources::siprec) struct ConnWriter {
    peer: SocketAddr,
    tx: mpsc::UnboundedSender<Vec<u8>>,
    unwritten: Arc<std::sync::atomic::AtomicUsize>,
    /// Cancelled when the connection is being closed (for good).
    close: tokio_util::sync::CancellationToken,
}

impl ConnWriter {
    /// Queues `bytes` for the peer; false when the connection is closed or
    /// being closed (over the limit now).
    pub(in crate::sources::siprec) fn send(&self, bytes: Vec<u8>) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        if self.close.is_cancelled() {
            return false;
        }
        let n = bytes.len();
        if self.unwritten.fetch_add(n, Relaxed) + n > MAX_UNWRITTEN {
            self.unwritten.fetch_sub(n, Relaxed);
            tracing::warn!(peer = %self.peer, "SIP: the peer left {MAX_UNWRITTEN} bytes unread on its connection; the connection is closed");
            self.close.cancel();
            return false;
        }
        self.tx.send(bytes).is_ok()
    }
}

/// Split a connected stream (TCP or TLS): a writer task fed by the returned
/// [`ConnWriter`], and the reader (to be run) that frames SIP messages off
/// it. The reader ends, and reports [`ConnEvent::Closed`], when the
/// connection ends or the writer closes it.
pub(in crate::sources::siprec) fn stream_tasks<S>(
    stream: S,
    peer: SocketAddr,
    transport: uas::Transport,
    tx: mpsc::Sender<SipIn>,
    conn: ConnConfig,
    slot: ConnSlot,
) -> (
    ConnWriter,
    impl std::future::Future<Output = ()> + Send + 'static,
)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (rd, mut wr) = tokio::io::split(stream);
    let (wtx, mut wrx) = mpsc::unbounded_channel::<Vec<u8>>();
    let writer = ConnWriter {
        peer,
        tx: wtx,
        unwritten: Arc::default(),
        close: tokio_util::sync::CancellationToken::new(),
    };
    let (unwritten, close) = (writer.unwritten.clone(), writer.close.clone());
    tokio::spawn(async move {
        loop {
            let b = tokio::select! {
                biased;
                () = close.cancelled() => break,
                b = wrx.recv() => match b {
                    Some(b) => b,
                    None => break,
                },
            };
            let written = tokio::select! {
                biased;
                () = close.cancelled() => break,
                w = tokio::time::timeout(WRITE_TIMEOUT, async {
                    wr.write_all(&b).await?;
                    wr.flush().await
                }) => w,
            };
            unwritten.fetch_sub(b.len(), std::sync::atomic::Ordering::Relaxed);
            if !matches!(written, Ok(Ok(()))) {
                if written.is_err() {
                    tracing::warn!(peer = %peer, "SIP: a message to the peer not written in {WRITE_TIMEOUT:?} (it does not read its connection); the connection is closed");
                }
                close.cancel();
                break;
            }
        }
        if !close.is_cancelled() {
            let _ = tokio::time::timeout(WRITE_TIMEOUT, wr.shutdown()).await;
        }
    });
    let wrap = move |ev| SipIn::Conn {
        peer,
        transport,
        ev,
    };
    let close = writer.close.clone();
    let reader = async move {
        let closed = tx.clone();
        tokio::select! {
            () = read_connection(rd, peer, conn, Some(slot), tx, wrap) => {}
            () = close.cancelled() => {
                let _ = closed.send(wrap(ConnEvent::Closed)).await;
            }
        }
    };
    (writer, reader)
}

/// A place for one more connection from `peer`, or `None` (counted and
/// logged; the socket is dropped, i.e. closed) over the caps.
pub(in crate::sources::siprec) fn conn_slot(
    limits: &ConnLimits,
    guard: &GuardCounters,
    peer: SocketAddr,
) -> Option<ConnSlot> {
    let slot = limits.acquire(peer.ip());
    if slot.is_none() {
        guard.count("tcp_connections");
        tracing::debug!(peer = %peer, "SIP connection refused: too many connections");
    }
    slot
}
