//! `plain-cqrs`: the plain cqrs-es + postgres-es app Herald is measured
//! against. Its schema is `bench/plain_cqrs.sql`.

use clap::Parser;
use sqlx::postgres::PgPoolOptions;

/// The plain cqrs-es app.
#[derive(Debug, Parser)]
struct Args {
    /// Postgres connection URL of a database holding `bench/plain_cqrs.sql`.
    #[arg(long, env = "PLAIN_CQRS_DATABASE_URL")]
    database_url: String,
    /// Most connections the pool opens; Herald's default, so both get the same.
    #[arg(long, default_value_t = 16)]
    pool_size: u32,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: std::net::SocketAddr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let pool = PgPoolOptions::new()
        .max_connections(args.pool_size)
        .connect(&args.database_url)
        .await?;
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    eprintln!("plain-cqrs is listening on {}", listener.local_addr()?);
    axum::serve(
        listener,
        bench::plain::router(bench::plain::framework(pool)),
    )
    .await?;
    Ok(())
}
