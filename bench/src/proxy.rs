//! A TCP proxy in front of Postgres, so that the fault suite can make the
//! database refuse connections without touching the shared server: killing
//! the proxy process cuts every connection it carries and leaves its port
//! closed until it is started again.

use tokio::net::{TcpListener, TcpStream};

/// Forwards every connection on `listen` to `upstream` until the process ends.
pub async fn run(listen: &str, upstream: &str) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    loop {
        let (client, _) = listener.accept().await?;
        let upstream = upstream.to_owned();
        tokio::spawn(async move {
            if let Ok(server) = TcpStream::connect(&upstream).await {
                forward(client, server).await;
            }
        });
    }
}

async fn forward(mut client: TcpStream, mut server: TcpStream) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
}
