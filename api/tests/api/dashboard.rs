//! The built-in dashboard: its JSON routes, its embedded page under a strict
//! policy, and the page itself in a real Chromium driven over WebDriver.
#![allow(clippy::unwrap_used)]

use crate::common;
use crate::payment_flow::paid_through_the_sandbox;

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use api::live::LiveConfig;
use api::startup::Parts;
use common::{admin, auditor, doctor, patient, Options, TestApp};
use domain::values::{Actor, Password};
use fantoccini::{Client, ClientBuilder, Locator};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

/// How long the page may take to show a command issued elsewhere.
const LIVE_WITHIN: Duration = Duration::from_secs(2);

/// Herald as `herald up` runs it, with live updates.
async fn herald_up() -> TestApp {
    TestApp::spawn_with(Options {
        parts: Some(Parts::ALL),
        live: Some(LiveConfig::default()),
        ..Options::default()
    })
    .await
}

/// `actor` with an account that signs in with `password`, and its e-mail.
async fn account(app: &TestApp, actor: Actor, password: &str) -> String {
    let email = format!("{}@herald.test", actor.user_id);
    let hash = api::passwords::hash(Password::parse(password).unwrap())
        .await
        .unwrap();
    app.write
        .enroll(actor, email.clone(), "Dana Admin".to_owned(), hash)
        .await
        .unwrap();
    email
}

async fn get(app: &TestApp, actor: Actor, path: &str) -> common::Reply {
    app.send(Method::GET, path, actor, None).await
}

/// Bookings in every status, a paid one among them, and a chat with
/// messages.
async fn some_activity(app: &TestApp) -> (Actor, Uuid) {
    let doctor = app.enroll(doctor()).await;
    let alice = app.enroll(patient()).await;
    app.bookings_in_every_status(alice, doctor).await;
    paid_through_the_sandbox(app).await;
    let chat = app.group_chat(alice, &[doctor]).await;
    for body in ["Hello", "How are you feeling?", "Better, thanks"] {
        assert_eq!(
            app.message(chat, alice, body).await.status,
            StatusCode::CREATED
        );
    }
    (alice, chat)
}

#[tokio::test]
async fn the_activity_series_count_what_happened_in_the_current_hour_day_and_minute() {
    let app = herald_up().await;
    some_activity(&app).await;
    app.wait_for_projections().await;

    let series = get(&app, admin(), "/api/v1/dashboard/activity").await;
    assert_eq!(series.status, StatusCode::OK, "{}", series.body);
    let body = &series.body;
    let hours = body["bookings_per_hour"].as_array().unwrap();
    let days = body["bookings_per_day"].as_array().unwrap();
    assert_eq!((hours.len(), days.len()), (24, 14));
    let this_hour = hours.last().unwrap();
    // Five bookings (one of them paid), one completed, one cancelled.
    assert_eq!(
        (
            &this_hour["booked"],
            &this_hour["completed"],
            &this_hour["cancelled"]
        ),
        (&json!(5), &json!(1), &json!(1)),
        "{this_hour}"
    );
    assert_eq!(
        (&days.last().unwrap()["booked"], &days[0]["booked"]),
        (&json!(5), &json!(0))
    );
    let minutes = body["messages_per_minute"].as_array().unwrap();
    assert_eq!(minutes.len(), 60);
    let sent: i64 = minutes.iter().map(|m| m["count"].as_i64().unwrap()).sum();
    assert_eq!(sent, 3);
    assert_eq!(body["active_chats"], 1);
    let revenue = body["revenue_per_day"].as_array().unwrap();
    assert_eq!(revenue.len(), 1, "{revenue:?}");
    assert_eq!(revenue[0]["currency"], "RUB");
    assert_eq!(revenue[0]["amount_minor"], 150_000);
    assert_eq!(revenue[0]["start"], days.last().unwrap()["start"]);
}

#[tokio::test]
async fn only_admins_see_the_business_figures_and_auditors_see_the_pipeline_too() {
    let app = herald_up().await;
    for (actor, activity, pipeline) in [
        (admin(), StatusCode::OK, StatusCode::OK),
        (auditor(), StatusCode::FORBIDDEN, StatusCode::OK),
        (patient(), StatusCode::FORBIDDEN, StatusCode::FORBIDDEN),
        (doctor(), StatusCode::FORBIDDEN, StatusCode::FORBIDDEN),
    ] {
        let reply = get(&app, actor, "/api/v1/dashboard/activity").await;
        assert_eq!(reply.status, activity, "{:?}: {}", actor.role, reply.body);
        let reply = get(&app, actor, "/api/v1/dashboard/pipeline").await;
        assert_eq!(reply.status, pipeline, "{:?}: {}", actor.role, reply.body);
        if pipeline == StatusCode::FORBIDDEN {
            reply.assert_problem(StatusCode::FORBIDDEN);
        }
    }
    let retry = app
        .send(
            Method::POST,
            "/api/v1/dashboard/dead-letters/chats/retry",
            auditor(),
            None,
        )
        .await;
    retry.assert_problem(StatusCode::FORBIDDEN);
    let anonymous = app
        .request(Method::GET, "/api/v1/dashboard/pipeline")
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_pipeline_shows_each_projection_caught_up_a_dead_letter_and_the_commands_just_made() {
    let app = herald_up().await;
    let (socket, _) = tokio_tungstenite::connect_async(app.ws_url(patient()))
        .await
        .unwrap();
    let alice = patient();
    let chat = app.group_chat(alice, &[doctor()]).await;
    common::poison_the_chats(&app.pool).await;
    app.message(chat, alice, "after the poison").await;
    app.wait_for_projections().await;

    // The followers that are no projection (the reminders, the thumbnails)
    // set the poison aside in their own time, after their retries.
    let deadline = Instant::now() + Duration::from_secs(20);
    let reply = loop {
        let reply = get(&app, auditor(), "/api/v1/dashboard/pipeline").await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        let letters = reply.body["dead_letters"].as_array().map_or(0, Vec::len);
        if letters >= 4 || Instant::now() > deadline {
            break reply;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let pipeline = &reply.body;
    let head = herald_nats::log::head(&app.pool).await.unwrap();
    assert_eq!(pipeline["head"], head);
    assert_eq!(pipeline["relay"]["active"], true);
    assert_eq!(pipeline["relay"]["sequenced"], head);
    let projections = pipeline["projections"].as_array().unwrap();
    assert_eq!(projections.len(), projections::Projection::ALL.len());
    for projection in projections {
        assert_eq!(
            (
                &projection["position"],
                &projection["lag"],
                &projection["lag_ms"]
            ),
            (&json!(head), &json!(0), &json!(0)),
            "{projection}"
        );
    }
    // The chats and activity projections, the reminders of unread messages
    // and the thumbnails of their images all read messages, and all set the
    // poison aside.
    let mut set_aside: Vec<&str> = pipeline["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|letter| letter["projection"].as_str().unwrap())
        .collect();
    set_aside.sort_unstable();
    assert_eq!(
        set_aside,
        [
            "activity",
            "attachment-thumbnails",
            "chat-reminders",
            "chats"
        ]
    );
    assert_eq!(pipeline["websocket_connections"], 1);
    // The chat and the message, at least, were commands of the last minute.
    assert!(pipeline["commands_per_second"].as_f64().unwrap() >= 2.0 / 60.0);
    assert!(pipeline["command_p99_ms"].as_f64().unwrap() > 0.0);
    drop(socket);

    // A poison event stays poison: the retry says so and keeps the letter,
    // one attempt older.
    let attempts = || async {
        sqlx::query_scalar::<_, i32>(
            "SELECT attempts FROM projection_dead_letters WHERE projection = 'chats'",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap()
    };
    let before = attempts().await;
    let retried = app
        .send(
            Method::POST,
            "/api/v1/dashboard/dead-letters/chats/retry",
            admin(),
            None,
        )
        .await;
    assert_eq!(retried.status, StatusCode::OK, "{}", retried.body);
    assert_eq!(retried.body, json!({ "applied": 0, "failing": 1 }));
    assert_eq!(attempts().await, before + 1);
    for follower in ["nothing", "payment-process"] {
        app.stores_nothing(app.send(
            Method::POST,
            &format!("/api/v1/dashboard/dead-letters/{follower}/retry"),
            admin(),
            None,
        ))
        .await
        .assert_problem(StatusCode::NOT_FOUND);
    }
}

#[tokio::test]
async fn the_page_and_its_assets_are_embedded_and_held_to_a_policy_without_inline_script() {
    let app = TestApp::spawn().await;
    let page = app.request(Method::GET, "/dashboard").send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let policy = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(policy.contains("script-src 'self';"), "{policy}");
    assert!(policy.contains("connect-src 'self';"), "{policy}");
    assert!(!policy.contains("unsafe"), "{policy}");
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let html = page.text().await.unwrap();
    // Scripts come from files only: no inline script, no handler attributes.
    assert!(!html.contains("<script>"), "{html}");
    let handler = html.match_indices(" on").any(|(at, _)| {
        let name: String = html[at + 3..]
            .chars()
            .take_while(char::is_ascii_alphabetic)
            .collect();
        !name.is_empty() && html[at + 3 + name.len()..].starts_with('=')
    });
    assert!(!handler, "an inline event handler in {html}");
    let assets = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets");
    for (name, file) in [
        ("dashboard.js", "dashboard/dashboard.js"),
        ("dashboard.css", "dashboard/dashboard.css"),
        ("echarts.min.js", "vendor/echarts/echarts.min.js"),
    ] {
        let answer = app
            .request(Method::GET, &format!("/dashboard/assets/{name}"))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::OK, "{name}");
        assert_eq!(
            answer.headers()["content-security-policy"]
                .to_str()
                .unwrap(),
            policy
        );
        let bytes = answer.bytes().await.unwrap();
        assert_eq!(bytes, std::fs::read(assets.join(file)).unwrap(), "{name}");
    }
    let missing =
        common::Reply::send(app.request(Method::GET, "/dashboard/assets/../Cargo.toml")).await;
    missing.assert_problem(StatusCode::NOT_FOUND);
    let missing =
        common::Reply::send(app.request(Method::GET, "/dashboard/assets/secrets.js")).await;
    missing.assert_problem(StatusCode::NOT_FOUND);
}

/// A headless Chromium behind a chromedriver of its own, on a free port and
/// with a profile directory of its own; both go when it is dropped, the
/// browser with the driver's process group, which it starts in.
struct Browser {
    client: Client,
    driver: Child,
    profile: PathBuf,
}

impl Browser {
    async fn start() -> Self {
        let port = common::free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver runs (apt-get install chromium-driver)");
        let profile = std::env::temp_dir().join(format!("herald-chromium-{}", Uuid::new_v4()));
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".to_owned(),
            json!({
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--no-first-run",
                    "--window-size=1280,800",
                    format!("--user-data-dir={}", profile.display()),
                ],
            }),
        );
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .unwrap();
        Self {
            client,
            driver,
            profile,
        }
    }

    /// Every `data-figure` on the page by name: its text, or its exact
    /// minor units where it shows money.
    async fn figures(&self) -> BTreeMap<String, String> {
        let figures = self
            .client
            .execute(
                "const out = {};
                 for (const el of document.querySelectorAll('[data-figure]')) {
                     out[el.dataset.figure] = el.dataset.minor ?? el.textContent;
                 }
                 return out;",
                vec![],
            )
            .await
            .unwrap();
        serde_json::from_value(figures).unwrap()
    }

    /// The log position the page's business figures are as of.
    async fn position(&self) -> i64 {
        let position = self
            .client
            .execute(
                "return Number(document.body.dataset.position || -1);",
                vec![],
            )
            .await
            .unwrap();
        position.as_i64().unwrap_or(-1)
    }

    /// Whether the page is wider than the window: something does not fit.
    async fn overflows(&self) -> bool {
        self.client
            .execute(
                "return document.documentElement.scrollWidth > window.innerWidth;",
                vec![],
            )
            .await
            .unwrap()
            .as_bool()
            .unwrap()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let group = format!("-{}", self.driver.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// Where the screenshot CI keeps is written: `target/screenshots/`.
fn screenshots() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"),
        PathBuf::from,
    );
    target.join("screenshots")
}

/// What the page must show, from the API: every figure it names.
async fn expected_figures(app: &TestApp, boss: Actor) -> BTreeMap<String, String> {
    let summary = get(app, boss, "/api/v1/dashboard/summary").await.body;
    let activity = get(app, boss, "/api/v1/dashboard/activity").await.body;
    let mut expected = BTreeMap::new();
    for (prefix, field) in [
        ("bookings", "bookings_by_status"),
        ("payments", "payments_by_status"),
    ] {
        for (status, count) in summary[field].as_object().unwrap() {
            expected.insert(format!("{prefix}.{status}"), count.to_string());
        }
    }
    for revenue in summary["revenue"].as_array().unwrap() {
        expected.insert(
            format!("revenue.{}", revenue["currency"].as_str().unwrap()),
            revenue["amount_minor"].to_string(),
        );
    }
    let last = |series: &str| activity[series].as_array().unwrap().last().unwrap().clone();
    for name in ["booked", "completed", "cancelled"] {
        expected.insert(
            format!("hour.{name}"),
            last("bookings_per_hour")[name].to_string(),
        );
        expected.insert(
            format!("today.{name}"),
            last("bookings_per_day")[name].to_string(),
        );
    }
    let minutes = activity["messages_per_minute"].as_array().unwrap();
    let hour: i64 = minutes.iter().map(|m| m["count"].as_i64().unwrap()).sum();
    expected.insert("messages.hour".to_owned(), hour.to_string());
    expected.insert(
        "active-chats".to_owned(),
        activity["active_chats"].to_string(),
    );
    expected
}

#[tokio::test]
async fn the_dashboard_in_a_browser_shows_the_apis_figures_and_a_command_within_two_seconds() {
    let app = herald_up().await;
    let boss = admin();
    let email = account(&app, boss, "a long admin password").await;
    let (alice, _) = some_activity(&app).await;
    common::poison_the_chats(&app.pool).await;
    let (socket, _) = tokio_tungstenite::connect_async(app.ws_url(alice))
        .await
        .unwrap();
    app.wait_for_projections().await;
    let head = herald_nats::log::head(&app.pool).await.unwrap();

    let browser = Browser::start().await;
    let page = &browser.client;
    page.goto(&format!("{}/dashboard", app.address))
        .await
        .unwrap();
    // Anything the page's policy blocks is noted, charts included.
    page.execute(
        "window.blocked = [];
         document.addEventListener('securitypolicyviolation',
             (e) => window.blocked.push(`${e.violatedDirective} ${e.blockedURI}`));",
        vec![],
    )
    .await
    .unwrap();
    page.find(Locator::Id("email"))
        .await
        .unwrap()
        .send_keys(&email)
        .await
        .unwrap();
    page.find(Locator::Id("password"))
        .await
        .unwrap()
        .send_keys("a long admin password")
        .await
        .unwrap();
    page.find(Locator::Css("#sign-in button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while browser.position().await < head {
        assert!(
            Instant::now() < deadline,
            "the page did not load its figures"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stored: Value = page
        .execute(
            "return sessionStorage.getItem('herald.dashboard.token');",
            vec![],
        )
        .await
        .unwrap();
    assert!(stored.as_str().is_some_and(|t| t.split('.').count() == 3));

    // The numbers on the page are the API's.
    let shown = browser.figures().await;
    let expected = expected_figures(&app, boss).await;
    for (name, value) in &expected {
        assert_eq!(shown.get(name), Some(value), "{name}: page shows {shown:?}");
    }
    assert_eq!(shown["bookings.pending"], "2");
    assert_eq!(shown["revenue.RUB"], "150000");
    assert_eq!(shown["head"], head.to_string());
    assert_eq!(shown["websockets"], "1");
    assert_eq!(shown["relay.state"], "active");
    assert_eq!(shown["dead-letters"], "4 set aside");
    // Projections' dead letters may be retried from the page; the other
    // followers' are listed for an operator.
    let retries: Value = page
        .execute(
            "return [...document.querySelectorAll('#dead-letters button')]
                 .map((b) => b.dataset.retry).sort();",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(retries, json!(["activity", "chats"]));
    page.find(Locator::Css("#dead-letters button[data-retry=chats]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let notice = page.find(Locator::Id("notice")).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while notice.text().await.unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the retry said nothing");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // The poison is still poison: the retry tried it once more.
    assert_eq!(
        notice.text().await.unwrap(),
        "chats: 0 applied, 1 still failing"
    );
    let lag_rows = page
        .find_all(Locator::Css("#projections tr"))
        .await
        .unwrap();
    assert_eq!(lag_rows.len(), projections::Projection::ALL.len());

    // A command issued elsewhere shows on the page, with no reload.
    let one_more = |name: &str| (shown[name].parse::<i64>().unwrap() + 1).to_string();
    let (pending, booked) = (one_more("bookings.pending"), one_more("hour.booked"));
    let issued = Instant::now();
    app.booking(alice).await;
    loop {
        let now = browser.figures().await;
        if now["bookings.pending"] == pending && now["hour.booked"] == booked {
            break;
        }
        assert!(
            issued.elapsed() < LIVE_WITHIN,
            "the page did not show the new booking within {LIVE_WITHIN:?}: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let shown_after = issued.elapsed();

    // Every chart drew, and nothing was blocked.
    let charts: Value = page
        .execute(
            "return [...document.querySelectorAll('.chart')]
                 .filter((c) => c.offsetParent !== null)
                 .map((c) => [c.id, c.querySelector('canvas') !== null]);",
            vec![],
        )
        .await
        .unwrap();
    let charts = charts.as_array().unwrap();
    assert_eq!(charts.len(), 7, "{charts:?}");
    for chart in charts {
        assert_eq!(chart[1], true, "{chart} drew nothing");
    }
    let blocked = page
        .execute("return window.blocked;", vec![])
        .await
        .unwrap();
    assert_eq!(blocked, json!([]), "the policy blocked something");

    // It fits a laptop and a phone.
    assert!(!browser.overflows().await, "wider than 1280 px");
    page.set_window_size(390, 844).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!browser.overflows().await, "wider than a phone");

    // The whole page at 1280 px wide, for CI to keep.
    page.set_window_size(1280, 800).await.unwrap();
    let height = page
        .execute("return document.documentElement.scrollHeight;", vec![])
        .await
        .unwrap()
        .as_u64()
        .unwrap();
    page.set_window_size(1280, u32::try_from(height).unwrap().max(800) + 120)
        .await
        .unwrap();
    page.execute("window.scrollTo(0, 0);", vec![])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let png = page.screenshot().await.unwrap();
    std::fs::create_dir_all(screenshots()).unwrap();
    std::fs::write(screenshots().join("dashboard.png"), png).unwrap();
    drop(socket);
    println!("the page showed a new booking {shown_after:?} after it was issued");
}
