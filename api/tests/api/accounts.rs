//! Accounts: signing up and signing in, one account per address, and no
//! personal data in the log.

use crate::common;

use base64::Engine;
use common::{DevHerald, Reply, TestApp};
use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::{json, Value};

async fn open(app: &TestApp, path: &str, body: Value) -> Reply {
    Reply::send(
        app.client
            .post(format!("{}/api/v1/auth/{path}", app.address))
            .json(&body),
    )
    .await
}

async fn register(app: &TestApp, email: &str, password: &str) -> Reply {
    open(
        app,
        "register",
        json!({ "email": email, "password": password, "name": "Anna Petrova", "phone": "+7 916 123-45-67" }),
    )
    .await
}

async fn login(app: &TestApp, email: &str, password: &str) -> Reply {
    open(
        app,
        "login",
        json!({ "email": email, "password": password }),
    )
    .await
}

/// The claims of a JWT, unchecked.
fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

#[tokio::test]
async fn a_patient_signs_up_signs_in_and_books_a_visit_with_the_token() {
    let app = TestApp::spawn().await;
    let signed_up = register(&app, "Anna@Example.com", "correct horse battery").await;
    assert_eq!(signed_up.status, StatusCode::CREATED, "{}", signed_up.body);
    assert_eq!(signed_up.body["email"], "Anna@Example.com");
    assert_eq!(signed_up.body["name"], "Anna Petrova");
    assert_eq!(signed_up.body["phone"], "+79161234567");
    assert_eq!(signed_up.body["role"], "patient");
    let id = signed_up.id();

    let signed_in = login(&app, " anna@example.COM", "correct horse battery").await;
    assert_eq!(signed_in.status, StatusCode::OK, "{}", signed_in.body);
    assert_eq!(signed_in.body["token_type"], "Bearer");
    assert_eq!(signed_in.body["expires_in"], 900);
    assert_eq!(signed_in.body["user"]["id"], id.to_string());
    assert_eq!(signed_in.body["user"]["role"], "patient");
    let token = signed_in.body["access_token"].as_str().unwrap();
    let claims = claims(token);
    assert_eq!(claims["sub"], id.to_string());
    assert_eq!(claims["role"], "patient");
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        900
    );
    assert!(claims["jti"].is_string(), "{claims}");

    let booked = Reply::send(
        app.client
            .post(format!("{}/api/v1/bookings", app.address))
            .bearer_auth(token)
            .json(
                &json!({ "call_type": "urgent", "address": "Tverskaya 1", "amount_minor": 150000 }),
            ),
    )
    .await;
    assert_eq!(booked.status, StatusCode::CREATED, "{}", booked.body);
    let stored = app.events_after(0).await;
    let booking = stored
        .iter()
        .find(|e| e.event_type == "BookingRequested")
        .unwrap();
    assert_eq!(booking.metadata["actor"], id.to_string());
}

#[tokio::test]
async fn an_address_opens_one_account_whatever_its_case_even_when_many_sign_up_at_once() {
    let app = TestApp::spawn().await;
    let emails = [
        "lev@example.com",
        "Lev@example.com",
        "LEV@EXAMPLE.COM",
        "lev@Example.com",
    ];
    let replies = join_all(
        emails
            .iter()
            .cycle()
            .take(12)
            .map(|email| register(&app, email, "another fine password")),
    )
    .await;
    let created = replies
        .iter()
        .filter(|r| r.status == StatusCode::CREATED)
        .count();
    assert_eq!(created, 1, "{replies:?}");
    for refused in replies.iter().filter(|r| r.status != StatusCode::CREATED) {
        refused.assert_problem(StatusCode::CONFLICT);
        assert_eq!(
            refused.body["detail"],
            "an account with this e-mail address already exists"
        );
    }
    let (accounts, registered): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM accounts),
                (SELECT count(*) FROM events WHERE event_type = 'UserRegistered')",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!((accounts, registered), (1, 1));
}

#[tokio::test]
async fn a_wrong_password_and_an_unknown_address_are_refused_alike() {
    let app = TestApp::spawn().await;
    let signed_up = register(&app, "mila@example.com", "correct horse battery").await;
    assert_eq!(signed_up.status, StatusCode::CREATED, "{}", signed_up.body);
    let wrong_password = login(&app, "mila@example.com", "correct horse batterY").await;
    let unknown = login(&app, "nobody@example.com", "correct horse battery").await;
    for refused in [&wrong_password, &unknown] {
        refused.assert_problem(StatusCode::UNAUTHORIZED);
    }
    assert_eq!(wrong_password.body["detail"], unknown.body["detail"]);
    assert!(wrong_password.body["detail"]
        .as_str()
        .unwrap()
        .contains("not right"));
}

#[tokio::test]
async fn signing_up_with_bad_values_names_each_field_and_stores_nothing() {
    let app = TestApp::spawn().await;
    let refused = app
        .stores_nothing(open(
            &app,
            "register",
            json!({ "email": "anna", "password": "short", "name": " ", "phone": "8 916" }),
        ))
        .await;
    refused.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
    let mut fields = refused.invalid_fields();
    fields.sort();
    assert_eq!(fields, ["email", "name", "password", "phone"]);

    app.stores_nothing(register(&app, "anna@example.com", "Password123"))
        .await
        .assert_names("password");
    app.stores_nothing(open(
        &app,
        "register",
        json!({ "email": "anna@example.com" }),
    ))
    .await
    .assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
    app.stores_nothing(open(
        &app,
        "register",
        json!({ "email": "anna@example.com", "password": "correct horse", "name": "Anna", "role": "admin" }),
    ))
    .await
    .assert_problem(StatusCode::BAD_REQUEST);
    let accounts: i64 = sqlx::query_scalar("SELECT count(*) FROM accounts")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(accounts, 0);
}

#[tokio::test]
async fn no_password_hash_e_mail_name_or_phone_reaches_the_event_log_the_stream_or_the_logs() {
    let database = common::fresh_database().await;
    let prefix = format!("accounts{}", uuid::Uuid::new_v4().simple());
    let topology = herald_nats::Topology::new(&prefix);
    let _leftovers = common::Leftovers::new(Some(database.clone()), Some(topology.clone()));
    let logs = std::env::temp_dir().join(format!("herald-{prefix}.log"));
    let herald = DevHerald::start_logging_to(&database, &prefix, &logs);
    let client = reqwest::Client::new();
    let (email, password) = ("secret.person@example.com", "a very private passphrase");
    let signed_up = Reply::send(client.post(format!("{}/auth/register", herald.base)).json(&json!({
        "email": email, "password": password, "name": "Anna Petrova", "phone": "+7 916 123-45-67",
    })))
    .await;
    assert_eq!(signed_up.status, StatusCode::CREATED, "{}", signed_up.body);
    let signed_in = Reply::send(
        client
            .post(format!("{}/auth/login", herald.base))
            .json(&json!({ "email": email, "password": password })),
    )
    .await;
    assert_eq!(signed_in.status, StatusCode::OK, "{}", signed_in.body);

    let pool = sqlx::PgPool::connect(&database).await.unwrap();
    let hash: String = sqlx::query_scalar("SELECT password_hash FROM accounts")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(
        hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{hash}"
    );
    let log: String =
        sqlx::query_scalar("SELECT string_agg(payload::text || metadata::text, '') FROM events")
            .fetch_one(&pool)
            .await
            .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let stream = loop {
        let stream = serde_json::to_string(&common::stream_entries(&topology).await).unwrap();
        if stream.contains("UserRegistered") || std::time::Instant::now() > deadline {
            break stream;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    drop(herald);
    let logs_written = std::fs::read_to_string(&logs).unwrap();
    std::fs::remove_file(&logs).unwrap();
    assert!(log.contains("UserRegistered") && stream.contains("UserRegistered"));
    assert!(logs_written.contains("signed in"), "{logs_written}");
    for secret in [
        email,
        "secret.person",
        password,
        &hash,
        "Anna Petrova",
        "79161234567",
    ] {
        assert!(!log.contains(secret), "the log holds {secret}");
        assert!(!stream.contains(secret), "the stream holds {secret}");
        assert!(
            !logs_written.contains(secret),
            "Herald's logs hold {secret}"
        );
    }
}

/// Signs up and in; the answer to signing in.
async fn signed_in(app: &TestApp, email: &str, password: &str) -> Value {
    let signed_up = register(app, email, password).await;
    assert_eq!(signed_up.status, StatusCode::CREATED, "{}", signed_up.body);
    let signed_in = login(app, email, password).await;
    assert_eq!(signed_in.status, StatusCode::OK, "{}", signed_in.body);
    signed_in.body
}

async fn refresh(app: &TestApp, token: &Value) -> Reply {
    open(app, "refresh", json!({ "refresh_token": token })).await
}

async fn me(app: &TestApp, access_token: &str) -> Reply {
    Reply::send(
        app.client
            .get(format!("{}/api/v1/me", app.address))
            .bearer_auth(access_token),
    )
    .await
}

#[tokio::test]
async fn a_refresh_token_works_once_and_presented_again_ends_its_session() {
    let app = TestApp::spawn().await;
    let first = signed_in(&app, "ivan@example.com", "correct horse battery").await;
    let rotated = refresh(&app, &first["refresh_token"]).await;
    assert_eq!(rotated.status, StatusCode::OK, "{}", rotated.body);
    assert_ne!(rotated.body["refresh_token"], first["refresh_token"]);
    assert_eq!(rotated.body["user"]["id"], first["user"]["id"]);
    let access = rotated.body["access_token"].as_str().unwrap();
    assert_eq!(me(&app, access).await.status, StatusCode::OK);

    // The spent token again: refused, and the session it began is over.
    refresh(&app, &first["refresh_token"])
        .await
        .assert_problem(StatusCode::UNAUTHORIZED);
    refresh(&app, &rotated.body["refresh_token"])
        .await
        .assert_problem(StatusCode::UNAUTHORIZED);
    // Another sign-in is another session, untouched.
    let other = login(&app, "ivan@example.com", "correct horse battery").await;
    assert_eq!(
        refresh(&app, &other.body["refresh_token"]).await.status,
        StatusCode::OK
    );
    refresh(&app, &json!("not a token"))
        .await
        .assert_problem(StatusCode::UNAUTHORIZED);
    open(&app, "refresh", json!({}))
        .await
        .assert_names("refresh_token");
}

#[tokio::test]
async fn signing_out_ends_the_session_of_its_refresh_token() {
    let app = TestApp::spawn().await;
    let session = signed_in(&app, "olga@example.com", "correct horse battery").await;
    let out = open(
        &app,
        "logout",
        json!({ "refresh_token": session["refresh_token"] }),
    )
    .await;
    assert_eq!(out.status, StatusCode::NO_CONTENT, "{}", out.body);
    refresh(&app, &session["refresh_token"])
        .await
        .assert_problem(StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn me_shows_the_callers_account_and_only_id_and_role_for_a_service_token() {
    let app = TestApp::spawn().await;
    let session = signed_in(&app, "Pavel@example.com", "correct horse battery").await;
    let shown = me(&app, session["access_token"].as_str().unwrap()).await;
    assert_eq!(shown.status, StatusCode::OK, "{}", shown.body);
    assert_eq!(
        shown.body,
        json!({
            "id": session["user"]["id"], "role": "patient", "email": "Pavel@example.com",
            "name": "Anna Petrova", "phone": "+79161234567", "specialty": null, "bio": null, "unread_notifications": 0,
        })
    );
    let service = common::admin();
    let shown = me(&app, &app.token(service)).await;
    assert_eq!(
        shown.body,
        json!({
            "id": service.user_id, "role": "admin", "email": null, "name": null, "phone": null,
            "specialty": null, "bio": null, "unread_notifications": 0,
        })
    );
    Reply::send(app.client.get(format!("{}/api/v1/me", app.address)))
        .await
        .assert_problem(StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_new_password_ends_every_other_session_and_the_old_password() {
    let app = TestApp::spawn().await;
    let (email, old, new) = (
        "nina@example.com",
        "correct horse battery",
        "tr0ub4dor and more",
    );
    let here = signed_in(&app, email, old).await;
    let elsewhere = login(&app, email, old).await.body;
    let change = |current: &str, new: &str| {
        Reply::send(
            app.client
                .post(format!("{}/api/v1/me/password", app.address))
                .bearer_auth(here["access_token"].as_str().unwrap())
                .json(&json!({ "current_password": current, "new_password": new })),
        )
    };
    app.stores_nothing(change("not the password", new))
        .await
        .assert_names("current_password");
    app.stores_nothing(change(old, "short"))
        .await
        .assert_names("new_password");

    let changed = change(old, new).await;
    assert_eq!(changed.status, StatusCode::OK, "{}", changed.body);
    login(&app, email, old)
        .await
        .assert_problem(StatusCode::UNAUTHORIZED);
    assert_eq!(login(&app, email, new).await.status, StatusCode::OK);
    for ended in [&here["refresh_token"], &elsewhere["refresh_token"]] {
        refresh(&app, ended)
            .await
            .assert_problem(StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        refresh(&app, &changed.body["refresh_token"]).await.status,
        StatusCode::OK
    );
    let recorded = app
        .events_after(0)
        .await
        .into_iter()
        .find(|e| e.event_type == "PasswordChanged")
        .unwrap();
    assert_eq!(recorded.metadata["actor"], here["user"]["id"]);
    assert_eq!(
        recorded.payload,
        json!({ "PasswordChanged": { "at": recorded.payload["PasswordChanged"]["at"] } })
    );
}

#[tokio::test]
async fn guessing_an_accounts_password_is_stopped_for_a_while_even_with_the_right_one() {
    let app = TestApp::spawn().await;
    let (email, password) = ("vera@example.com", "correct horse battery");
    assert_eq!(
        register(&app, email, password).await.status,
        StatusCode::CREATED
    );
    for _ in 0..5 {
        login(&app, email, "a wrong guess")
            .await
            .assert_problem(StatusCode::UNAUTHORIZED);
    }
    for attempt in [password, "a wrong guess"] {
        let stopped = login(&app, &email.to_uppercase(), attempt).await;
        stopped.assert_problem(StatusCode::TOO_MANY_REQUESTS);
        let wait: u64 = stopped.headers["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((800..=900).contains(&wait), "Retry-After: {wait}");
    }
    // Another account from the same address is not locked by these five.
    let (other, other_password) = ("yuri@example.com", "another fine password");
    assert_eq!(
        register(&app, other, other_password).await.status,
        StatusCode::CREATED
    );
    assert_eq!(
        login(&app, other, other_password).await.status,
        StatusCode::OK
    );
}

async fn as_admin(app: &TestApp, admin: domain::values::Actor, path: &str, body: Value) -> Reply {
    app.post(&format!("/api/v1/{path}"), admin, body).await
}

#[tokio::test]
async fn an_admin_opens_a_doctors_account_whose_password_is_set_once_with_the_token() {
    let app = TestApp::spawn().await;
    let admin = common::admin();
    let body =
        json!({ "email": "dr.house@example.com", "name": "Gregory House", "role": "doctor" });
    as_admin(&app, common::doctor(), "users", body.clone())
        .await
        .assert_problem(StatusCode::FORBIDDEN);
    let created = as_admin(&app, admin, "users", body.clone()).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    assert_eq!(created.body["role"], "doctor");
    as_admin(&app, admin, "users", body)
        .await
        .assert_problem(StatusCode::CONFLICT);
    let token = created.body["set_password_token"].clone();
    let password = "a doctor's own password";
    login(&app, "dr.house@example.com", password)
        .await
        .assert_problem(StatusCode::UNAUTHORIZED);

    let set = open(
        &app,
        "set-password",
        json!({ "token": token, "password": password }),
    )
    .await;
    assert_eq!(set.status, StatusCode::NO_CONTENT, "{}", set.body);
    open(
        &app,
        "set-password",
        json!({ "token": token, "password": "and another one" }),
    )
    .await
    .assert_problem(StatusCode::UNAUTHORIZED);
    let signed_in = login(&app, "dr.house@example.com", password).await;
    assert_eq!(signed_in.status, StatusCode::OK, "{}", signed_in.body);
    assert_eq!(signed_in.body["user"]["role"], "doctor");
    assert_eq!(signed_in.body["user"]["id"], created.body["id"]);
    let created_event = app
        .events_after(0)
        .await
        .into_iter()
        .find(|e| e.event_type == "UserCreated")
        .unwrap();
    assert_eq!(created_event.metadata["actor"], admin.user_id.to_string());
}

#[tokio::test]
async fn admins_list_users_by_role_and_search_page_by_page() {
    let app = TestApp::spawn().await;
    let admin = common::admin();
    for (email, role) in [
        ("a.doc@example.com", "doctor"),
        ("b.doc@example.com", "doctor"),
        ("c.doc@example.com", "doctor"),
        ("audit@example.com", "auditor"),
    ] {
        let body = json!({ "email": email, "name": format!("Name of {email}"), "role": role });
        assert_eq!(
            as_admin(&app, admin, "users", body).await.status,
            StatusCode::CREATED
        );
    }
    let app = &app;
    let list = |query: String| async move {
        app.send(
            reqwest::Method::GET,
            &format!("/api/v1/users?{query}"),
            admin,
            None,
        )
        .await
    };
    let first = list("role=doctor&limit=2".to_owned()).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    let cursor = first.body["next_cursor"].as_str().unwrap().to_owned();
    let rest = list(format!("role=doctor&limit=2&cursor={cursor}")).await;
    let emails: Vec<&str> = first.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .chain(rest.body["items"].as_array().unwrap())
        .map(|u| u["email"].as_str().unwrap())
        .collect();
    let mut sorted = emails.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        [
            "a.doc@example.com",
            "b.doc@example.com",
            "c.doc@example.com"
        ]
    );
    assert!(rest.body["next_cursor"].is_null());
    let found = list("q=AUDIT".to_owned()).await;
    assert_eq!(
        found.body["items"].as_array().unwrap().len(),
        1,
        "{}",
        found.body
    );
    assert_eq!(found.body["items"][0]["role"], "auditor");
    assert_eq!(found.body["items"][0]["active"], true);
    list("role=system".to_owned()).await.assert_names("role");
    app.send(
        reqwest::Method::GET,
        "/api/v1/users",
        common::patient(),
        None,
    )
    .await
    .assert_problem(StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_deactivated_users_tokens_stop_on_every_herald_within_seconds_until_reactivated() {
    let here = TestApp::spawn().await;
    let there = TestApp::spawn_on(&here.database_url).await;
    let admin = common::admin();
    let session = signed_in(&here, "kira@example.com", "correct horse battery").await;
    let token = session["access_token"].as_str().unwrap().to_owned();
    let id = session["user"]["id"].as_str().unwrap().to_owned();
    for app in [&here, &there] {
        assert_eq!(me(app, &token).await.status, StatusCode::OK);
    }

    let deactivated = as_admin(&here, admin, &format!("users/{id}/deactivate"), json!({})).await;
    assert_eq!(deactivated.status, StatusCode::OK, "{}", deactivated.body);
    me(&here, &token)
        .await
        .assert_problem(StatusCode::UNAUTHORIZED);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while me(&there, &token).await.status == StatusCode::OK {
        assert!(
            std::time::Instant::now() < deadline,
            "still accepted on the other Herald"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    refresh(&here, &session["refresh_token"])
        .await
        .assert_problem(StatusCode::UNAUTHORIZED);
    login(&here, "kira@example.com", "correct horse battery")
        .await
        .assert_problem(StatusCode::FORBIDDEN);

    let reactivated = as_admin(&here, admin, &format!("users/{id}/reactivate"), json!({})).await;
    assert_eq!(reactivated.status, StatusCode::OK, "{}", reactivated.body);
    // Tokens carry whole seconds: one from the second of the deactivation is
    // refused too, so the next sign-in is a second later.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let again = login(&here, "kira@example.com", "correct horse battery").await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.body);
    assert_eq!(
        me(&here, again.body["access_token"].as_str().unwrap())
            .await
            .status,
        StatusCode::OK
    );
    // A token from before the deactivation stays refused.
    me(&here, &token)
        .await
        .assert_problem(StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_new_role_takes_effect_at_the_next_sign_in_and_refuses_older_tokens() {
    let app = TestApp::spawn().await;
    let session = signed_in(&app, "lena@example.com", "correct horse battery").await;
    let token = session["access_token"].as_str().unwrap().to_owned();
    let id = session["user"]["id"].as_str().unwrap().to_owned();
    let changed = as_admin(
        &app,
        common::admin(),
        &format!("users/{id}/role"),
        json!({ "role": "doctor" }),
    )
    .await;
    assert_eq!(changed.status, StatusCode::OK, "{}", changed.body);
    me(&app, &token)
        .await
        .assert_problem(StatusCode::UNAUTHORIZED);
    // Tokens carry whole seconds: the next second's sign-in is after the change.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let again = login(&app, "lena@example.com", "correct horse battery").await;
    assert_eq!(again.body["user"]["role"], "doctor", "{}", again.body);
    let shown = me(&app, again.body["access_token"].as_str().unwrap()).await;
    assert_eq!(shown.body["role"], "doctor", "{}", shown.body);
}

#[tokio::test]
async fn a_user_changes_their_name_and_removes_their_phone_with_only_the_field_names_logged() {
    let app = TestApp::spawn().await;
    let session = signed_in(&app, "oleg@example.com", "correct horse battery").await;
    let token = session["access_token"].as_str().unwrap().to_owned();
    let patch = |body: Value| {
        Reply::send(
            app.client
                .patch(format!("{}/api/v1/me", app.address))
                .bearer_auth(&token)
                .json(&body),
        )
    };
    app.stores_nothing(patch(json!({ "name": " ", "phone": "12" })))
        .await
        .assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
    let unchanged = app.stores_nothing(patch(json!({}))).await;
    assert_eq!(unchanged.body["name"], "Anna Petrova", "{}", unchanged.body);
    for field in ["specialty", "bio"] {
        app.stores_nothing(patch(json!({ field: "Cardiology" })))
            .await
            .assert_problem(StatusCode::UNPROCESSABLE_ENTITY)
            .assert_names(field);
    }

    let changed = patch(json!({ "name": "Oleg Sidorov", "phone": null })).await;
    assert_eq!(changed.status, StatusCode::OK, "{}", changed.body);
    assert_eq!(
        (&changed.body["name"], &changed.body["phone"]),
        (&json!("Oleg Sidorov"), &Value::Null)
    );
    assert_eq!(me(&app, &token).await.body["name"], "Oleg Sidorov");
    let recorded = app
        .events_after(0)
        .await
        .into_iter()
        .find(|e| e.event_type == "ProfileChanged")
        .unwrap();
    assert_eq!(
        recorded.payload["ProfileChanged"]["fields"],
        json!(["name", "phone"])
    );
    assert!(!recorded.payload.to_string().contains("Oleg"));
    let service = Reply::send(
        app.client
            .patch(format!("{}/api/v1/me", app.address))
            .bearer_auth(app.token(common::admin()))
            .json(&json!({ "name": "Nobody" })),
    )
    .await;
    service.assert_problem(StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_doctor_shows_patients_a_specialty_and_a_short_bio() {
    let app = TestApp::spawn().await;
    let doctor = app.enroll(common::doctor()).await;
    let patch = |body: Value| app.send(reqwest::Method::PATCH, "/api/v1/me", doctor, Some(body));

    for (body, field) in [
        (json!({ "specialty": " " }), "specialty"),
        (json!({ "specialty": "c".repeat(101) }), "specialty"),
        (json!({ "bio": "b".repeat(1001) }), "bio"),
    ] {
        app.stores_nothing(patch(body))
            .await
            .assert_problem(StatusCode::UNPROCESSABLE_ENTITY)
            .assert_names(field);
    }
    let bio = "Twenty years of home visits across Moscow.";
    let changed = patch(json!({ "specialty": " Cardiology ", "bio": bio })).await;
    assert_eq!(changed.status, StatusCode::OK, "{}", changed.body);
    assert_eq!(
        (&changed.body["specialty"], &changed.body["bio"]),
        (&json!("Cardiology"), &json!(bio))
    );
    let removed = patch(json!({ "bio": null })).await;
    assert_eq!(
        (&removed.body["specialty"], &removed.body["bio"]),
        (&json!("Cardiology"), &Value::Null)
    );
    let fields: Vec<Value> = app
        .events_after(0)
        .await
        .into_iter()
        .filter(|e| e.event_type == "ProfileChanged")
        .map(|e| e.payload["ProfileChanged"]["fields"].clone())
        .collect();
    assert_eq!(fields, [json!(["specialty", "bio"]), json!(["bio"])]);
}

#[tokio::test]
async fn every_account_endpoint_refuses_bad_input_and_the_wrong_caller_with_a_problem_and_stores_nothing(
) {
    let app = TestApp::spawn().await;
    let admin = common::admin();
    let doctor = app.enroll(common::doctor()).await;
    let unknown = uuid::Uuid::new_v4();
    let signed_up = signed_in(&app, "vera@example.com", "correct horse battery").await;
    let patient_token = signed_up["access_token"].as_str().unwrap().to_owned();
    let unknown_field = json!({ "surprise": true });

    // Unknown fields and bodies that are not JSON objects: 400.
    for path in ["register", "login", "refresh", "logout", "set-password"] {
        app.stores_nothing(open(&app, path, unknown_field.clone()))
            .await
            .assert_problem(StatusCode::BAD_REQUEST);
    }
    for (method, path) in [
        (reqwest::Method::PATCH, "/api/v1/me"),
        (reqwest::Method::POST, "/api/v1/me/password"),
        (reqwest::Method::POST, "/api/v1/users"),
    ] {
        let request = app
            .request(method, path)
            .bearer_auth(app.token(admin))
            .json(&unknown_field);
        app.refuses_request(request, StatusCode::BAD_REQUEST).await;
    }

    // Only admins manage users: 403 for everyone else.
    for caller in [doctor, common::patient(), common::auditor()] {
        let body = json!({ "email": "x@example.com", "name": "X", "role": "doctor" });
        app.refuses(
            caller,
            common::post("/api/v1/users", body),
            StatusCode::FORBIDDEN,
        )
        .await;
        let list = app
            .request(reqwest::Method::GET, "/api/v1/users")
            .bearer_auth(app.token(caller));
        app.refuses_request(list, StatusCode::FORBIDDEN).await;
        for (path, body) in [
            ("role", json!({ "role": "admin" })),
            ("deactivate", json!({})),
            ("reactivate", json!({})),
        ] {
            let call = common::post(format!("/api/v1/users/{}/{path}", doctor.user_id), body);
            app.refuses(caller, call, StatusCode::FORBIDDEN).await;
        }
    }
    // An admin does not demote or deactivate themself.
    let boss = app.enroll(common::admin()).await;
    for (path, body) in [
        ("role", json!({ "role": "doctor" })),
        ("deactivate", json!({})),
    ] {
        let call = common::post(format!("/api/v1/users/{}/{path}", boss.user_id), body);
        app.refuses(boss, call, StatusCode::FORBIDDEN).await;
    }

    // Someone who does not exist: 404.
    for (path, body) in [
        ("role", json!({ "role": "admin" })),
        ("deactivate", json!({})),
        ("reactivate", json!({})),
    ] {
        let call = common::post(format!("/api/v1/users/{unknown}/{path}"), body);
        app.refuses(admin, call, StatusCode::NOT_FOUND).await;
    }

    // Values that are not what the field holds: 422 naming it.
    for (body, field) in [
        (
            json!({ "email": "not an address", "name": "X", "role": "doctor" }),
            "email",
        ),
        (
            json!({ "email": "x@example.com", "name": " ", "role": "doctor" }),
            "name",
        ),
        (
            json!({ "email": "x@example.com", "name": "X", "role": "system" }),
            "role",
        ),
        (
            json!({ "email": "x@example.com", "name": "X", "role": "doctor", "phone": "1" }),
            "phone",
        ),
    ] {
        app.refuses(
            admin,
            common::post("/api/v1/users", body),
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await
        .assert_names(field);
    }
    let call = common::post(
        format!("/api/v1/users/{}/role", doctor.user_id),
        json!({ "role": "chief" }),
    );
    app.refuses(admin, call, StatusCode::UNPROCESSABLE_ENTITY)
        .await
        .assert_names("role");
    let listed = app
        .request(reqwest::Method::GET, "/api/v1/users?role=chief")
        .bearer_auth(app.token(admin));
    app.refuses_request(listed, StatusCode::UNPROCESSABLE_ENTITY)
        .await
        .assert_names("role");
    let weak = app
        .request(reqwest::Method::POST, "/api/v1/me/password")
        .bearer_auth(&patient_token)
        .json(&json!({ "current_password": "correct horse battery", "new_password": "password" }));
    app.refuses_request(weak, StatusCode::UNPROCESSABLE_ENTITY)
        .await
        .assert_names("new_password");

    // Without a token: 401.
    for (method, path) in [
        (reqwest::Method::GET, "/api/v1/me"),
        (reqwest::Method::PATCH, "/api/v1/me"),
        (reqwest::Method::POST, "/api/v1/me/password"),
        (reqwest::Method::GET, "/api/v1/users"),
        (reqwest::Method::POST, "/api/v1/users"),
    ] {
        app.refuses_request(
            app.request(method, path).json(&json!({})),
            StatusCode::UNAUTHORIZED,
        )
        .await;
    }
}
