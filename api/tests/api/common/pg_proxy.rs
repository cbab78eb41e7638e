//! A TCP proxy in front of Postgres that a test can take down, to see Herald with
//! its database gone and back without stopping the shared server. While down it
//! does not listen at all, so connecting is refused as with a stopped server, and
//! the connections it carried are cut.

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Forwards connections on a loopback port to Postgres.
pub struct PgProxy {
    pub port: u16,
    up: watch::Sender<bool>,
}

impl PgProxy {
    /// A proxy on a free loopback port forwarding to `upstream` (host:port).
    pub async fn start(upstream: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let port = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("{e}"))
            .port();
        let (up, mut watch_up) = watch::channel(true);
        let upstream = upstream.to_owned();
        let for_connections = watch_up.clone();
        tokio::spawn(async move {
            let mut listener = Some(listener);
            loop {
                let Some(current) = listener.take() else {
                    if watch_up.wait_for(|up| *up).await.is_err() {
                        return;
                    }
                    listener = TcpListener::bind(("127.0.0.1", port)).await.ok();
                    continue;
                };
                tokio::select! {
                    accepted = current.accept() => {
                        if let Ok((client, _)) = accepted {
                            tokio::spawn(forward(client, upstream.clone(), for_connections.clone()));
                        }
                        listener = Some(current);
                    }
                    changed = watch_up.wait_for(|up| !*up) => {
                        if changed.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Self { port, up }
    }

    /// Stops listening and cuts every open connection.
    pub fn go_down(&self) {
        self.up.send_replace(false);
    }

    /// Listens again.
    pub fn come_back(&self) {
        self.up.send_replace(true);
    }
}

async fn forward(mut client: TcpStream, upstream: String, mut up: watch::Receiver<bool>) {
    let Ok(mut server) = TcpStream::connect(&upstream).await else {
        return;
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        _ = up.wait_for(|up| !*up) => {}
    }
}
