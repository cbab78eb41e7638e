//! What operators rely on: readiness, metrics, rate limits, graceful shutdown.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use api::limits::LimitArgs;
use common::pg_proxy::PgProxy;
use common::{free_port, fresh_database, patient, DevHerald, Leftovers, Options, TestApp};
use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::{json, Value};

async fn readiness(app: &TestApp) -> (StatusCode, Value) {
    let response = app
        .client
        .get(format!("{}/health/ready", app.address))
        .send()
        .await
        .unwrap();
    (response.status(), response.json().await.unwrap())
}

async fn wait_for_readiness(app: &TestApp, wanted: StatusCode) -> Value {
    for _ in 0..100 {
        let (status, body) = readiness(app).await;
        if status == wanted {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("readiness never answered {wanted}");
}

#[tokio::test]
async fn liveness_answers_without_a_token() {
    let app = TestApp::spawn().await;
    let response = app
        .client
        .get(format!("{}/health/live", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn readiness_fails_naming_postgres_while_it_is_down_and_recovers() {
    let direct = fresh_database().await;
    let _leftovers = Leftovers::new(Some(direct.clone()), None);
    let name = direct.rsplit('/').next().unwrap();
    let proxy = PgProxy::start("127.0.0.1:5432").await;
    let app = TestApp::spawn_on(&format!(
        "postgres://postgres@127.0.0.1:{}/{name}",
        proxy.port
    ))
    .await;
    let body = wait_for_readiness(&app, StatusCode::OK).await;
    assert_eq!(body["checks"]["postgres"]["ok"], true);

    proxy.go_down();
    let body = wait_for_readiness(&app, StatusCode::SERVICE_UNAVAILABLE).await;
    assert!(
        body["failing"]
            .as_array()
            .unwrap()
            .contains(&json!("postgres")),
        "{body}"
    );
    // Anyone may ask, so the answer names the kind of failure, not the
    // database's own error text.
    let error = &body["checks"]["postgres"]["error"];
    assert!(error == "unavailable" || error == "timed out", "{body}");

    proxy.come_back();
    wait_for_readiness(&app, StatusCode::OK).await;
}

/// A NATS server of the test's own, on a free port, that it can stop.
struct PrivateNats {
    child: Child,
    url: String,
}

impl PrivateNats {
    fn start(port: u16, store: &std::path::Path) -> Self {
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Self {
            child,
            url: format!("nats://127.0.0.1:{port}"),
        }
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn readiness_fails_naming_nats_while_it_is_down_and_recovers() {
    let store = std::env::temp_dir().join(format!("herald-nats-{}", uuid::Uuid::new_v4()));
    let port = free_port();
    let nats = PrivateNats::start(port, &store);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let app = TestApp::spawn_with(Options {
        nats_url: Some(nats.url.clone()),
        ..Options::default()
    })
    .await;
    wait_for_readiness(&app, StatusCode::OK).await;

    drop(nats);
    let body = wait_for_readiness(&app, StatusCode::SERVICE_UNAVAILABLE).await;
    assert!(
        body["failing"].as_array().unwrap().contains(&json!("nats")),
        "{body}"
    );

    let _nats = PrivateNats::start(port, &store);
    wait_for_readiness(&app, StatusCode::OK).await;
    let _ = std::fs::remove_dir_all(store);
}

#[tokio::test]
async fn metrics_count_a_commands_life_from_request_to_outcome() {
    let app = TestApp::spawn().await;
    app.booking(patient()).await;
    let refused = app
        .post(
            "/api/v1/bookings",
            patient(),
            json!({ "call_type": "urgent", "address": "", "amount_minor": 1 }),
        )
        .await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY);

    let page = app.metrics_page().await;
    for expected in [
        r#"herald_http_requests_total{route="/api/v1/bookings",method="POST",status="201"}"#,
        r#"herald_http_requests_total{route="/api/v1/bookings",method="POST",status="422"}"#,
        r#"herald_commands_total{aggregate="Booking",outcome="accepted"}"#,
        "herald_http_request_duration_seconds_bucket",
        "herald_append_batch_commands_bucket",
        r#"herald_projection_lag{projection="chats"}"#,
        r#"herald_dead_letters{projection="payment-process"} 0"#,
    ] {
        assert!(page.contains(expected), "{expected} missing from\n{page}");
    }
}

#[tokio::test]
async fn a_burst_beyond_the_bucket_is_answered_429_with_retry_after_and_ratelimit_headers() {
    let app = TestApp::spawn_with(Options {
        limits: Some(LimitArgs {
            rate_limit_per_second: 1,
            rate_limit_burst: 3,
            ..LimitArgs::default()
        }),
        ..Options::default()
    })
    .await;
    let alice = patient();
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let reply = app
            .send(reqwest::Method::GET, "/api/v1/chats", alice, None)
            .await;
        assert!(reply.headers.contains_key("ratelimit-limit"));
        assert!(reply.headers.contains_key("ratelimit-remaining"));
        if reply.status == StatusCode::TOO_MANY_REQUESTS {
            reply.assert_problem(StatusCode::TOO_MANY_REQUESTS);
            assert!(reply.headers.contains_key("retry-after"));
        }
        statuses.push(reply.status);
    }
    assert_eq!(statuses[..3], [StatusCode::OK; 3]);
    assert!(
        statuses[3..].contains(&StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
}

#[tokio::test]
async fn a_shutdown_with_requests_in_flight_answers_every_one_and_loses_none() {
    let mut app = TestApp::spawn().await;
    let (client, url, token) = (
        app.client.clone(),
        format!("{}/api/v1/bookings", app.address),
        app.token(patient()),
    );
    let in_flight: Vec<_> = (0..40)
        .map(|_| {
            let request = client
                .post(&url)
                .bearer_auth(&token)
                .json(&json!({ "call_type": "urgent", "address": "Arbat 5", "amount_minor": 700 }));
            tokio::spawn(async move {
                match request.send().await {
                    Ok(response) => Ok(response.status()),
                    Err(err) => Err(err),
                }
            })
        })
        .collect();
    // Shut down once the first of them is stored, with the rest in flight.
    for _ in 0..500 {
        if app.event_count().await > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    app.shut_down().await;

    let mut accepted = 0i64;
    for outcome in join_all(in_flight).await {
        match outcome.unwrap() {
            Ok(status) => {
                assert_eq!(status, StatusCode::CREATED);
                accepted += 1;
            }
            // Refused at the door after the signal: never accepted, so not lost.
            Err(err) => assert!(err.is_connect() || err.is_request(), "{err}"),
        }
    }
    assert!(accepted > 0, "the shutdown came before any request");
    assert_eq!(app.event_count().await, accepted);
}

#[tokio::test]
async fn instances_started_at_once_on_a_new_database_all_come_up() {
    for _ in 0..5 {
        let args = api::config::DatabaseArgs {
            database_url: fresh_database().await,
            database_pool_size: 2,
        };
        let _leftovers = Leftovers::new(Some(args.database_url.clone()), None);
        let started = join_all((0..8).map(|_| async {
            api::db::migrated_pool(&args).await?;
            Ok::<_, Box<dyn std::error::Error>>(())
        }))
        .await;
        for outcome in started {
            outcome.unwrap();
        }
    }
}

#[tokio::test]
async fn answers_to_a_token_are_never_stored_by_caches() {
    let app = TestApp::spawn().await;
    let alice = patient();
    let booking = app.booking(alice).await;
    for path in [
        format!("/api/v1/bookings/{booking}"),
        "/api/v1/nothing".to_owned(),
    ] {
        let reply = app.send(reqwest::Method::GET, &path, alice, None).await;
        assert_eq!(reply.headers["cache-control"], "no-store", "{path}");
    }
    let unauthenticated = app
        .client
        .get(format!("{}/api/v1/bookings", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.headers()["cache-control"], "no-store");
}

/// Runs `herald up --dev` with `env`, expecting it to refuse to start.
fn herald_up_refused(env: &[(&str, String)]) -> (String, String) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_herald"));
    command.args(["up", "--dev"]).env("RUST_LOG", "warn");
    for (name, value) in env {
        command.env(name, value);
    }
    let output = command.output().unwrap();
    assert!(!output.status.success(), "{output:?}");
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn dev_mode_keeps_its_users_passwords_and_secret_across_a_restart_and_herald_token_mints_with_it(
) {
    let database = fresh_database().await;
    let prefix = format!("devmode{}", uuid::Uuid::new_v4().simple());
    let _leftovers = Leftovers::new(
        Some(database.clone()),
        Some(herald_nats::Topology::new(&prefix)),
    );
    let first = DevHerald::start(&database, &prefix);
    let roles: Vec<&str> = first.users.iter().map(|user| user.role.as_str()).collect();
    assert_eq!(roles, ["patient", "doctor", "admin", "auditor"]);
    let patient = first.users[0].sub.clone();
    let printed_token = first.users[0].token.clone();
    assert_eq!(first.read_with(&printed_token).await, StatusCode::OK);
    let users_before: Vec<String> = first.users.iter().map(|user| user.sub.clone()).collect();
    let password = first.password.clone();
    drop(first);

    let again = DevHerald::start(&database, &prefix);
    let users_after: Vec<String> = again.users.iter().map(|user| user.sub.clone()).collect();
    assert_eq!(
        users_after, users_before,
        "the same demo users after a restart"
    );
    assert_eq!(
        again.password, password,
        "the same password after a restart"
    );
    // Every demo user signs in with the printed address and password.
    for user in &again.users {
        let signed_in = reqwest::Client::new()
            .post(format!("{}/auth/login", again.base))
            .json(&json!({ "email": user.email, "password": password }))
            .send()
            .await
            .unwrap();
        assert_eq!(signed_in.status(), StatusCode::OK, "{}", user.email);
        let body: Value = signed_in.json().await.unwrap();
        assert_eq!(body["user"]["id"], user.sub.as_str());
        assert_eq!(body["user"]["role"], user.role.as_str());
    }
    assert_eq!(
        again.read_with(&printed_token).await,
        StatusCode::OK,
        "a token printed before the restart still works"
    );

    let minted = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["token", "--sub", &patient, "--role", "patient"])
        .env("HERALD_DATABASE_URL", &database)
        .env_remove("HERALD_JWT_SECRET")
        .output()
        .unwrap();
    assert!(minted.status.success(), "{minted:?}");
    let minted = String::from_utf8(minted.stdout).unwrap();
    assert_eq!(again.read_with(minted.trim()).await, StatusCode::OK);
}

#[tokio::test]
async fn herald_token_without_a_secret_names_what_is_missing() {
    let database = fresh_database().await;
    let _leftovers = Leftovers::new(Some(database.clone()), None);
    // A Herald database on which `herald up --dev` never ran.
    api::db::migrated_pool(&api::config::DatabaseArgs {
        database_url: database.clone(),
        database_pool_size: 1,
    })
    .await
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args([
            "token",
            "--sub",
            &uuid::Uuid::new_v4().to_string(),
            "--role",
            "admin",
        ])
        .env("HERALD_DATABASE_URL", &database)
        .env_remove("HERALD_JWT_SECRET")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("HERALD_JWT_SECRET") && stderr.contains("herald up --dev"),
        "{stderr}"
    );
}

#[tokio::test]
async fn startup_errors_name_the_variable_and_the_address_and_print_no_tokens() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let database = fresh_database().await;
    let _leftovers = Leftovers::new(Some(database.clone()), None);
    let (stdout, stderr) = herald_up_refused(&[
        ("HERALD_DATABASE_URL", database),
        ("HERALD_LISTEN", address.clone()),
    ]);
    assert!(
        stderr.contains("HERALD_LISTEN") && stderr.contains(&address),
        "{stderr}"
    );
    assert!(!stdout.contains("token="), "{stdout}");

    let (stdout, stderr) = herald_up_refused(&[(
        "HERALD_DATABASE_URL",
        format!("postgres://postgres@127.0.0.1:{}/herald", free_port()),
    )]);
    assert!(
        stderr.contains("cannot reach Postgres at 127.0.0.1:")
            && stderr.contains("HERALD_DATABASE_URL"),
        "{stderr}"
    );
    assert!(!stdout.contains("token="), "{stdout}");

    let (_, stderr) = herald_up_refused(&[("HERALD_JWT_SECRET", "short".to_owned())]);
    assert!(
        stderr.contains("HERALD_JWT_SECRET") && stderr.contains("openssl rand"),
        "{stderr}"
    );
}

/// A token for `actor` minted by `herald token` with `secret`.
fn minted_with(secret: &str, actor: domain::values::Actor) -> String {
    let minted = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args([
            "token",
            "--sub",
            &actor.user_id.to_string(),
            "--role",
            actor.role.as_str(),
        ])
        .env("HERALD_JWT_SECRET", secret)
        .output()
        .unwrap();
    assert!(minted.status.success(), "{minted:?}");
    String::from_utf8(minted.stdout).unwrap().trim().to_owned()
}

#[tokio::test]
async fn a_rotated_jwt_secret_still_accepts_tokens_of_the_previous_ones_it_is_given() {
    let database = fresh_database().await;
    let prefix = format!("rotation{}", uuid::Uuid::new_v4().simple());
    let _leftovers = Leftovers::new(
        Some(database.clone()),
        Some(herald_nats::Topology::new(&prefix)),
    );
    let (old, older, new, dropped) = (
        "o".repeat(32),
        "p".repeat(32),
        "n".repeat(32),
        "d".repeat(32),
    );
    let address = format!("127.0.0.1:{}", free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
        .arg("up")
        .env("RUST_LOG", "warn")
        .env("HERALD_DATABASE_URL", &database)
        .env("HERALD_NATS_PREFIX", &prefix)
        .env("HERALD_LISTEN", &address)
        .env("HERALD_JWT_SECRET", &new)
        .env("HERALD_JWT_PREVIOUS_SECRETS", format!("{old},{older}"))
        .env("HERALD_WEBHOOK_SECRET", "w".repeat(32))
        .env("HERALD_SANDBOX", "true")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let me = |token: String| {
        let client = client.clone();
        let url = format!("http://{address}/api/v1/me");
        async move { client.get(url).bearer_auth(token).send().await }
    };
    let actor = patient();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while me(minted_with(&new, actor)).await.is_err() {
        assert!(std::time::Instant::now() < deadline, "herald did not start");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (secret, wanted) in [
        (&new, StatusCode::OK),
        (&old, StatusCode::OK),
        (&older, StatusCode::OK),
        (&dropped, StatusCode::UNAUTHORIZED),
    ] {
        let status = me(minted_with(secret, actor)).await.unwrap().status();
        assert_eq!(status, wanted, "a token of secret {}", &secret[..1]);
    }
    let _ = child.kill();
    let _ = child.wait();
}
