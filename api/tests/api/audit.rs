//! The audit surface: the ordered log with its hash chains, aggregates as of a
//! point in time, tamper evidence against someone with direct database access,
//! the `herald` audit commands, and an event stored in an older shape.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::collections::HashMap;
use std::process::Command;

use common::{admin, auditor, doctor, herald_on, patient, Reply, TestApp};
use domain::values::{Actor, Role};
use herald_nats::log;
use herald_nats::log::chain::{self, Checkpoint, Verification};
use projections::Projection;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

async fn get(app: &TestApp, path: &str, actor: Actor) -> common::Reply {
    app.send(Method::GET, path, actor, None).await
}

/// A log of a few dozen events of every aggregate type, sequenced and hashed,
/// with the relay and workers stopped so that only the attacker touches it.
async fn sequenced_log() -> TestApp {
    let mut app = TestApp::spawn_with_pipeline().await;
    let (p, d) = (patient(), doctor());
    let chat = app.group_chat(p, &[d]).await;
    for i in 0..12 {
        let author = if i % 2 == 0 { p } else { d };
        let reply = app
            .post(
                &format!("/api/v1/chats/{chat}/messages"),
                author,
                json!({ "body": format!("note {i}") }),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    }
    let booking = app.booking(p).await;
    let reply = app
        .post(
            &format!("/api/v1/bookings/{booking}/assign"),
            d,
            json!({ "doctor_id": d.user_id }),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    app.wait_for_projections().await;
    app.stop_pipeline().await;
    // What an attacker with the database's owner account does first.
    sqlx::query("ALTER TABLE events DISABLE TRIGGER USER")
        .execute(&app.pool)
        .await
        .unwrap();
    app
}

async fn verify(app: &TestApp, expect: Option<Checkpoint>) -> Verification {
    chain::verify(&app.pool, expect, |_, _| {}).await.unwrap()
}

/// Asserts that the library and `GET /audit/verify` both name `position`.
async fn assert_first_bad(app: &TestApp, expect: Option<Checkpoint>, position: i64) {
    let verification = verify(app, expect).await;
    assert!(!verification.ok, "{verification:?}");
    assert_eq!(
        verification.first_bad_position,
        Some(position),
        "{verification:?}"
    );
    assert_eq!(verification.events_checked, position - 1);
    let query = expect.map_or(String::new(), |e| format!("?expect={e}"));
    let reply = get(app, &format!("/api/v1/audit/verify{query}"), auditor()).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["ok"], false, "{}", reply.body);
    assert_eq!(reply.body["first_bad_position"], position, "{}", reply.body);
    assert_eq!(reply.body["events_checked"], position - 1, "{}", reply.body);
}

async fn assert_intact(app: &TestApp, expect: Option<Checkpoint>) -> Verification {
    let verification = verify(app, expect).await;
    assert!(verification.ok, "{verification:?}");
    assert_eq!(verification.first_bad_position, None);
    assert_eq!(
        verification.events_checked,
        log::head(&app.pool).await.unwrap()
    );
    verification
}

async fn event_id_at(app: &TestApp, position: i64) -> i64 {
    sqlx::query_scalar("SELECT event_id FROM event_log WHERE position = $1")
        .bind(position)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

/// Moves every entry at or after `from` by `by` positions, as an attacker
/// closing or opening a gap would (in two steps, so the key never clashes).
async fn shift_positions(app: &TestApp, from: i64, by: i64) {
    sqlx::query("UPDATE event_log SET position = position + 1000000 WHERE position >= $1")
        .bind(from)
        .execute(&app.pool)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE event_log SET position = position - 1000000 + $1 WHERE position >= 1000000",
    )
    .bind(by)
    .execute(&app.pool)
    .await
    .unwrap();
}

async fn head(app: &TestApp) -> Checkpoint {
    verify(app, None).await.head.unwrap()
}

#[tokio::test]
async fn auditors_and_admins_read_the_whole_log_in_position_order_with_metadata_and_hashes() {
    let app = sequenced_log().await;
    let total = log::head(&app.pool).await.unwrap();
    for reader in [auditor(), admin()] {
        let reply = get(&app, "/api/v1/events?limit=1000", reader).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        let items = reply.body["items"].as_array().unwrap();
        assert_eq!(items.len() as i64, total);
        assert_eq!(reply.body["next_after"], Value::Null);
        for (i, item) in items.iter().enumerate() {
            assert_eq!(item["position"], i as i64 + 1, "{item}");
            for field in [
                "actor",
                "role",
                "correlation_id",
                "causation_id",
                "recorded_at",
            ] {
                assert!(item["metadata"][field].is_string(), "{field}: {item}");
            }
            for field in ["hash", "aggregate_hash"] {
                let hash = item[field].as_str().unwrap();
                assert_eq!(hex::decode(hash).unwrap().len(), 32, "{item}");
            }
            assert_eq!(item["event_version"], "1");
            assert!(item["payload"][item["event_type"].as_str().unwrap()].is_object());
        }
    }
    let first = get(&app, "/api/v1/events?after=3&limit=5", auditor()).await;
    let positions: Vec<i64> = first.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["position"].as_i64().unwrap())
        .collect();
    assert_eq!(positions, [4, 5, 6, 7, 8]);
    assert_eq!(first.body["next_after"], 8);
    let bookings = get(&app, "/api/v1/events?aggregate_type=Booking", auditor()).await;
    let types: Vec<&str> = bookings.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["BookingRequested", "DoctorAssigned"]);
    get(&app, "/api/v1/events?aggregate_type=Ward", auditor())
        .await
        .assert_names("aggregate_type");
    get(&app, "/api/v1/events?limit=0", auditor())
        .await
        .assert_names("limit");
}

#[tokio::test]
async fn patients_and_doctors_are_forbidden_the_audit_endpoints_and_anonymous_callers_are_unauthorized(
) {
    let app = TestApp::spawn().await;
    let id = Uuid::new_v4();
    for path in [
        "/api/v1/events".to_owned(),
        format!("/api/v1/aggregates/Booking/{id}/events"),
        format!("/api/v1/aggregates/Booking/{id}"),
        "/api/v1/audit/verify".to_owned(),
    ] {
        for actor in [patient(), doctor()] {
            get(&app, &path, actor)
                .await
                .assert_problem(StatusCode::FORBIDDEN);
        }
        Reply::send(app.request(Method::GET, &path))
            .await
            .assert_problem(StatusCode::UNAUTHORIZED);
    }
}

#[tokio::test]
async fn an_auditor_sees_who_granted_whom_which_role_and_when_without_their_personal_data() {
    let app = TestApp::spawn_with_pipeline().await;
    let boss = admin();
    let body = json!({ "email": "dr.lee@example.com", "name": "Ada Lee", "role": "doctor" });
    let created = app.post("/api/v1/users", boss, body).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let user = created.id();
    for (path, body) in [
        ("role", json!({ "role": "admin" })),
        ("deactivate", json!({})),
    ] {
        let reply = app
            .post(&format!("/api/v1/users/{user}/{path}"), boss, body)
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    }
    app.wait_for_projections().await;

    let history = get(
        &app,
        &format!("/api/v1/aggregates/User/{user}/events"),
        auditor(),
    )
    .await;
    assert_eq!(history.status, StatusCode::OK, "{}", history.body);
    let items = history.body["items"].as_array().unwrap();
    let types: Vec<&str> = items
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["UserCreated", "RoleChanged", "UserDeactivated"]);
    for item in items {
        assert_eq!(item["metadata"]["actor"], boss.user_id.to_string());
    }
    assert_eq!(
        items[1]["payload"]["RoleChanged"]["to"], "admin",
        "{}",
        items[1]
    );
    assert!(!history.body.to_string().contains("Ada Lee"));
    assert!(!history.body.to_string().contains("dr.lee"));
    let now = get(&app, &format!("/api/v1/aggregates/User/{user}"), auditor()).await;
    assert_eq!(now.status, StatusCode::OK, "{}", now.body);
    assert_eq!(now.body["state"]["role"], "admin", "{}", now.body);
    assert_eq!(now.body["state"]["deactivated"], true, "{}", now.body);
}

#[tokio::test]
async fn an_aggregate_as_of_a_position_or_a_time_is_its_events_folded_up_to_then() {
    let app = TestApp::spawn_with_pipeline().await;
    let (p, d) = (patient(), app.enroll(doctor()).await);
    let booking = app.booking(p).await;
    app.post(
        &format!("/api/v1/bookings/{booking}/assign"),
        d,
        json!({ "doctor_id": d.user_id }),
    )
    .await;
    app.post(
        &format!("/api/v1/bookings/{booking}/cancel"),
        p,
        json!({ "reason": "feeling better" }),
    )
    .await;
    app.wait_for_projections().await;
    let id = booking.to_string();
    let mut positions = Vec::new();
    for sequence in 1..=3 {
        positions.push(
            log::position_of(&app.pool, "Booking", &id, sequence)
                .await
                .unwrap()
                .unwrap(),
        );
    }
    let path = format!("/api/v1/aggregates/Booking/{booking}");
    let state = |reply: &common::Reply| reply.body["state"]["state"].clone();
    let requested = get(&app, &format!("{path}?as_of={}", positions[0]), auditor()).await;
    assert_eq!(requested.status, StatusCode::OK, "{}", requested.body);
    assert_eq!(requested.body["version"], 1);
    assert_eq!(state(&requested)["status"], "pending");
    assert_eq!(state(&requested)["doctor_id"], Value::Null);
    assert_eq!(
        state(&requested)["price"],
        json!({ "amount_minor": 150000, "currency": "RUB" })
    );
    let assigned = get(&app, &format!("{path}?as_of={}", positions[1]), admin()).await;
    assert_eq!(state(&assigned)["status"], "assigned");
    assert_eq!(state(&assigned)["doctor_id"], d.user_id.to_string());
    let now = get(&app, &path, auditor()).await;
    assert_eq!(now.body["version"], 3);
    assert_eq!(state(&now)["status"], "cancelled");
    // By time: the instant the assignment was stored.
    let recorded_at = assigned.body["recorded_at"].as_str().unwrap();
    let by_time = app
        .request(Method::GET, &path)
        .query(&[("as_of", recorded_at)])
        .bearer_auth(app.token(auditor()))
        .send()
        .await
        .unwrap();
    let by_time = Reply::from(by_time).await;
    assert_eq!(by_time.status, StatusCode::OK, "{}", by_time.body);
    assert_eq!(state(&by_time)["status"], "assigned");
    assert_eq!(by_time.body["position"], positions[1]);
    get(&app, &format!("{path}?as_of=0"), auditor())
        .await
        .assert_problem(StatusCode::NOT_FOUND);
    get(&app, &format!("{path}?as_of=yesterday"), auditor())
        .await
        .assert_names("as_of");
    get(
        &app,
        &format!("/api/v1/aggregates/Ward/{booking}"),
        auditor(),
    )
    .await
    .assert_problem(StatusCode::NOT_FOUND);
    get(
        &app,
        &format!("/api/v1/aggregates/Booking/{}", Uuid::new_v4()),
        auditor(),
    )
    .await
    .assert_problem(StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn one_aggregates_history_is_its_events_in_sequence_order_each_linked_to_the_one_before() {
    let app = sequenced_log().await;
    let chat_id: String =
        sqlx::query_scalar("SELECT aggregate_id FROM events WHERE aggregate_type = 'Chat' LIMIT 1")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    let reply = get(
        &app,
        &format!("/api/v1/aggregates/Chat/{chat_id}/events"),
        auditor(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let items = reply.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 13);
    let mut previous = chain::GENESIS;
    for (i, item) in items.iter().enumerate() {
        assert_eq!(item["sequence"], i as i64 + 1);
        // What an auditor does with their own code: relink the history.
        let entry = herald_nats::LogEntry {
            position: item["position"].as_i64().unwrap(),
            event_id: item["event_id"].as_i64().unwrap(),
            aggregate_type: item["aggregate_type"].as_str().unwrap().to_owned(),
            aggregate_id: item["aggregate_id"].as_str().unwrap().to_owned(),
            sequence: item["sequence"].as_i64().unwrap(),
            event_type: item["event_type"].as_str().unwrap().to_owned(),
            event_version: item["event_version"].as_str().unwrap().to_owned(),
            payload: item["payload"].clone(),
            metadata: {
                let mut metadata = item["metadata"].clone();
                metadata.as_object_mut().unwrap().remove("recorded_at");
                metadata
            },
            recorded_at: item["recorded_at"].as_str().unwrap().parse().unwrap(),
        };
        previous = chain::link(&previous, &entry);
        assert_eq!(item["aggregate_hash"], hex::encode(previous), "{item}");
    }
    get(
        &app,
        &format!("/api/v1/aggregates/Chat/{}/events", Uuid::new_v4()),
        auditor(),
    )
    .await
    .assert_problem(StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn an_untouched_log_verifies_and_passes_through_its_kept_checkpoint() {
    let app = sequenced_log().await;
    let verification = assert_intact(&app, None).await;
    let kept = verification.head.unwrap();
    assert_eq!(kept.position, log::head(&app.pool).await.unwrap());
    assert_intact(&app, Some(kept)).await;
    let reply = get(
        &app,
        &format!("/api/v1/audit/verify?expect={kept}"),
        auditor(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["ok"], true, "{}", reply.body);
    assert_eq!(reply.body["first_bad_position"], Value::Null);
    assert_eq!(reply.body["events_checked"], kept.position);
    get(&app, "/api/v1/audit/verify?expect=12:zz", auditor())
        .await
        .assert_names("expect");
}

#[tokio::test]
async fn an_edited_payload_or_metadata_is_named_by_its_position() {
    let app = sequenced_log().await;
    let event_id = event_id_at(&app, 5).await;
    let original: Value = sqlx::query_scalar("SELECT payload FROM events WHERE event_id = $1")
        .bind(event_id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE events SET payload = jsonb_set(payload, '{MessageSent,body}', '\"nothing happened\"')
          WHERE event_id = $1",
    )
    .bind(event_id)
    .execute(&app.pool)
    .await
    .unwrap();
    assert_first_bad(&app, None, 5).await;
    sqlx::query("UPDATE events SET payload = $2 WHERE event_id = $1")
        .bind(event_id)
        .bind(&original)
        .execute(&app.pool)
        .await
        .unwrap();
    assert_intact(&app, None).await;
    let event_id = event_id_at(&app, 9).await;
    sqlx::query(
        "UPDATE events SET metadata = jsonb_set(metadata, '{role}', '\"admin\"') WHERE event_id = $1",
    )
    .bind(event_id)
    .execute(&app.pool)
    .await
    .unwrap();
    assert_first_bad(&app, None, 9).await;
}

#[tokio::test]
async fn a_deleted_row_is_named_by_its_position_even_when_the_positions_after_it_are_closed_up() {
    let app = sequenced_log().await;
    let event_id = event_id_at(&app, 6).await;
    sqlx::query("DELETE FROM event_log WHERE position = 6")
        .execute(&app.pool)
        .await
        .unwrap();
    sqlx::query("DELETE FROM events WHERE event_id = $1")
        .bind(event_id)
        .execute(&app.pool)
        .await
        .unwrap();
    assert_first_bad(&app, None, 6).await;
    shift_positions(&app, 7, -1).await;
    assert_first_bad(&app, None, 6).await;
}

#[tokio::test]
async fn two_swapped_rows_are_named_by_the_earlier_of_them() {
    let app = sequenced_log().await;
    // The rows trade places, hashes and all.
    for (from, to) in [(4, 1_000_004), (11, 4), (1_000_004, 11)] {
        sqlx::query("UPDATE event_log SET position = $2 WHERE position = $1")
            .bind(from)
            .bind(to)
            .execute(&app.pool)
            .await
            .unwrap();
    }
    assert_first_bad(&app, None, 4).await;
}

/// A booking nobody requested, slipped into the log at `position`.
async fn forge_at(app: &TestApp, position: i64) -> i64 {
    let xid: String = sqlx::query_scalar(
        "SELECT e.xid::text FROM events e JOIN event_log l USING (event_id) WHERE l.position = $1",
    )
    .bind(position - 1)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    let booking = Uuid::new_v4();
    let forged: i64 = sqlx::query_scalar(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version,
                             payload, metadata, xid)
         VALUES ('Booking', $1, 1, 'BookingCancelled', '1', $2, $3, $4::xid8)
         RETURNING event_id",
    )
    .bind(booking.to_string())
    .bind(json!({ "BookingCancelled": { "reason": "forged", "cancelled_by": booking, "at": "2026-01-01T00:00:00Z" } }))
    .bind(json!({ "actor": booking, "role": "admin", "correlation_id": "x", "causation_id": "x" }))
    .bind(xid)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    shift_positions(app, position, 1).await;
    forged
}

#[tokio::test]
async fn a_forged_row_slipped_into_the_log_is_named_by_its_position() {
    let app = sequenced_log().await;
    let forged = forge_at(&app, 7).await;
    // The forger copies a neighbour's hashes, not knowing how to link the row.
    sqlx::query(
        "INSERT INTO event_log (position, event_id, hash, aggregate_hash)
         SELECT 7, $1, hash, aggregate_hash FROM event_log WHERE position = 8",
    )
    .bind(forged)
    .execute(&app.pool)
    .await
    .unwrap();
    assert_first_bad(&app, None, 7).await;
}

#[tokio::test]
async fn a_forger_who_relinks_the_whole_chain_is_caught_by_a_checkpoint_kept_outside_the_database()
{
    let app = sequenced_log().await;
    let kept = head(&app).await;
    let forged = forge_at(&app, 7).await;
    sqlx::query("INSERT INTO event_log (position, event_id) VALUES (7, $1)")
        .bind(forged)
        .execute(&app.pool)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE relay_cursor SET sequenced_position = sequenced_position + 1,
                                 hashed_position = hashed_position + 1",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    // Knowing the published scheme, the forger relinks both chains.
    let mut previous = chain::GENESIS;
    let mut aggregates: HashMap<(String, String), chain::Hash> = HashMap::new();
    for entry in log::read_after(&app.pool, 0, 1000).await.unwrap() {
        previous = chain::link(&previous, &entry);
        let key = (entry.aggregate_type.clone(), entry.aggregate_id.clone());
        let before = aggregates.get(&key).copied().unwrap_or(chain::GENESIS);
        let aggregate = chain::link(&before, &entry);
        aggregates.insert(key, aggregate);
        sqlx::query("UPDATE event_log SET hash = $2, aggregate_hash = $3 WHERE position = $1")
            .bind(entry.position)
            .bind(previous.to_vec())
            .bind(aggregate.to_vec())
            .execute(&app.pool)
            .await
            .unwrap();
    }
    // The chain holds together on its own, which is why auditors keep heads.
    assert_intact(&app, None).await;
    assert_first_bad(&app, Some(kept), kept.position).await;
}

#[tokio::test]
async fn a_truncated_tail_is_named_by_its_first_missing_position_against_a_kept_checkpoint() {
    let app = sequenced_log().await;
    let kept = head(&app).await;
    let cut_from = kept.position - 3;
    let removed: Vec<i64> =
        sqlx::query_scalar("DELETE FROM event_log WHERE position >= $1 RETURNING event_id")
            .bind(cut_from)
            .fetch_all(&app.pool)
            .await
            .unwrap();
    sqlx::query("DELETE FROM events WHERE event_id = ANY($1)")
        .bind(&removed)
        .execute(&app.pool)
        .await
        .unwrap();
    sqlx::query("UPDATE relay_cursor SET sequenced_position = $1, hashed_position = $1")
        .bind(cut_from - 1)
        .execute(&app.pool)
        .await
        .unwrap();
    // What is left is a consistent prefix; only the kept head shows the loss.
    assert_eq!(verify(&app, None).await.first_bad_position, None);
    assert_first_bad(&app, Some(kept), cut_from).await;
}

/// Runs the `herald` binary against the test's database.
fn herald(app: &TestApp, args: &[&str]) -> std::process::Output {
    herald_on(&app.database_url, args)
}

#[tokio::test]
async fn the_herald_audit_commands_export_the_log_and_check_it_against_a_kept_checkpoint() {
    let app = sequenced_log().await;
    let total = log::head(&app.pool).await.unwrap();
    let export = herald(&app, &["events", "export"]);
    assert!(export.status.success(), "{export:?}");
    let lines: Vec<Value> = String::from_utf8(export.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len() as i64, total);
    let from_api = get(&app, "/api/v1/events?limit=1000", auditor()).await;
    assert_eq!(Value::from(lines.clone()), from_api.body["items"]);
    let after = herald(&app, &["events", "export", "--after", "10"]);
    assert_eq!(
        String::from_utf8(after.stdout).unwrap().lines().count() as i64,
        total - 10
    );

    let checkpoint = herald(&app, &["audit", "checkpoint"]);
    assert!(checkpoint.status.success(), "{checkpoint:?}");
    let kept = String::from_utf8(checkpoint.stdout).unwrap();
    let kept: Checkpoint = kept.trim().parse().unwrap();
    assert_eq!(kept, head(&app).await);
    let verified = herald(&app, &["audit", "verify", "--expect", &kept.to_string()]);
    assert!(verified.status.success(), "{verified:?}");
    let report: Value = serde_json::from_slice(&verified.stdout).unwrap();
    assert_eq!(report["ok"], true);

    sqlx::query("DELETE FROM event_log WHERE position = $1")
        .bind(total)
        .execute(&app.pool)
        .await
        .unwrap();
    let refused = herald(&app, &["audit", "verify", "--expect", &kept.to_string()]);
    assert!(!refused.status.success(), "{refused:?}");
    let report: Value = serde_json::from_slice(&refused.stdout).unwrap();
    assert_eq!(report["first_bad_position"], total);
}

#[tokio::test]
async fn a_booking_stored_in_the_old_event_shape_still_loads_projects_replays_and_verifies() {
    let app = TestApp::spawn_with_pipeline().await;
    sqlx::raw_sql(include_str!("fixtures/booking_requested_v0.sql"))
        .execute(&app.pool)
        .await
        .unwrap();
    app.wait_for_projections().await;
    let booking = "0b0b0b0b-0000-4000-8000-000000000001";
    let patient = Actor::new(
        "0b0b0b0b-0000-4000-8000-00000000000a".parse().unwrap(),
        Role::Patient,
    );
    let doctor = Actor::new(
        "0b0b0b0b-0000-4000-8000-00000000000d".parse().unwrap(),
        Role::Doctor,
    );

    // The read model shows the upcast price.
    let read = get(&app, &format!("/api/v1/bookings/{booking}"), patient).await;
    assert_eq!(read.status, StatusCode::OK, "{}", read.body);
    assert_eq!(read.body["amount_minor"], 150000);
    assert_eq!(read.body["currency"], "RUB");
    assert_eq!(read.body["status"], "assigned");

    // The write side loads the aggregate from it and decides on it.
    let completed = app
        .post(
            &format!("/api/v1/bookings/{booking}/complete"),
            doctor,
            json!({}),
        )
        .await;
    assert_eq!(completed.status, StatusCode::OK, "{}", completed.body);
    app.wait_for_projections().await;

    // Auditors see the event as stored, and the aggregate as it was.
    let history = get(
        &app,
        &format!("/api/v1/aggregates/Booking/{booking}/events"),
        auditor(),
    )
    .await;
    let first = &history.body["items"][0];
    assert_eq!(first["event_version"], "0");
    assert_eq!(first["payload"]["BookingRequested"]["amount"], 150000);
    let then = get(
        &app,
        &format!("/api/v1/aggregates/Booking/{booking}?as_of=1"),
        auditor(),
    )
    .await;
    assert_eq!(then.status, StatusCode::OK, "{}", then.body);
    assert_eq!(
        then.body["state"]["state"]["price"],
        json!({ "amount_minor": 150000, "currency": "RUB" })
    );

    for projection in Projection::ALL {
        projections::replay(&app.pool, projection, &|_, _| {})
            .await
            .unwrap();
        common::assert_matches_rebuild(&app.pool, projection).await;
    }
    let replayed = get(&app, &format!("/api/v1/bookings/{booking}"), patient).await;
    assert_eq!(replayed.body["amount_minor"], 150000);
    assert_eq!(replayed.body["status"], "completed");
    assert_intact(&app, None).await;
}

#[tokio::test]
async fn commands_that_read_the_log_refuse_a_database_that_does_not_exist_and_create_none() {
    let missing = common::fresh_database().await;
    for args in [
        &["audit", "verify"][..],
        &["events", "export"],
        &["replay", "bookings"],
        &["dead-letters"],
    ] {
        let output = herald_on(&missing, args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?}: {stderr}");
        assert!(
            stderr.contains("HERALD_DATABASE_URL") && stderr.contains("does not exist"),
            "{args:?}: {stderr}"
        );
    }
    use sqlx::migrate::MigrateDatabase;
    assert!(!sqlx::Postgres::database_exists(&missing).await.unwrap());

    let created = herald_on(&missing, &["migrate"]);
    assert!(created.status.success(), "{created:?}");
    let verified = herald_on(&missing, &["audit", "verify"]);
    assert!(verified.status.success(), "{verified:?}");
}

#[tokio::test]
async fn a_database_url_that_is_not_a_postgres_url_is_refused_naming_the_variable() {
    for url in [
        "postgresql:/127.0.0.1/x",
        "http://127.0.0.1:5432/herald",
        "postgres://127.0.0.1:5432/a/b",
    ] {
        for args in [&["migrate"][..], &["audit", "verify"]] {
            let output = herald_on(url, args);
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(!output.status.success(), "{url} {args:?}: {stderr}");
            assert!(
                stderr.contains("HERALD_DATABASE_URL is not a Postgres URL"),
                "{url} {args:?}: {stderr}"
            );
        }
    }
}

#[tokio::test]
async fn an_export_read_by_a_reader_that_stops_early_ends_quietly() {
    let app = sequenced_log().await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["events", "export"])
        .env("HERALD_DATABASE_URL", &app.database_url)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The reader goes away before the first line, as `| head -0` would.
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(!stderr.contains("Broken pipe"), "{stderr}");
}

#[tokio::test]
async fn every_follower_s_dead_letters_are_listed_by_name() {
    let app = sequenced_log().await;
    let none = herald(&app, &["dead-letters"]);
    assert!(none.status.success(), "{none:?}");
    assert!(String::from_utf8_lossy(&none.stderr).contains("no dead letters"));
    let process = herald(&app, &["dead-letters", "payment-process"]);
    assert!(process.status.success(), "{process:?}");
    let unknown = herald(&app, &["dead-letters", "payments-process"]);
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(!unknown.status.success());
    assert!(
        stderr.contains("payment-process") && stderr.contains("chats"),
        "{stderr}"
    );
}

#[test]
fn the_command_line_speaks_of_herald_and_says_what_a_bad_value_should_be() {
    let help = Command::new(env!("CARGO_BIN_EXE_herald"))
        .arg("--help")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(
        text.starts_with("Herald: the event-sourced backend"),
        "{text}"
    );
    let token = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["token", "--sub", "1", "--role", "doctor"])
        .env("HERALD_JWT_SECRET", "s".repeat(32))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&token.stderr);
    assert!(!token.status.success());
    assert!(stderr.contains("must be a UUID"), "{stderr}");
}

/// An export written to a file of the test's own, removed when dropped.
struct ExportFile(std::path::PathBuf);

impl ExportFile {
    fn holding(lines: &[&str]) -> Self {
        let path = std::env::temp_dir().join(format!("herald-export-{}.ndjson", Uuid::new_v4()));
        std::fs::write(&path, lines.concat()).unwrap();
        Self(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for ExportFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[tokio::test]
async fn an_import_refuses_a_tampered_or_cut_export_naming_the_position_and_writes_nothing() {
    let app = sequenced_log().await;
    let total = log::head(&app.pool).await.unwrap();
    let kept = head(&app).await;
    let export = herald(&app, &["events", "export"]);
    assert!(export.status.success(), "{export:?}");
    let text = String::from_utf8(export.stdout).unwrap();
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    assert_eq!(lines.len() as i64, total);

    let target = common::fresh_database().await;
    let _leftovers = common::Leftovers::new(Some(target.clone()), None);
    let migrated = herald_on(&target, &["migrate"]);
    assert!(migrated.status.success(), "{migrated:?}");
    let target_pool = sqlx::PgPool::connect(&target).await.unwrap();

    let at = lines.iter().position(|l| l.contains("\"note 3\"")).unwrap();
    let mut edited = lines.clone();
    let changed = lines[at].replace("\"note 3\"", "\"note three\"");
    edited[at] = &changed;
    let mut dropped = lines.clone();
    dropped.remove(6);
    let last = lines[lines.len() - 1];
    let mut cut_mid_line = lines.clone();
    *cut_mid_line.last_mut().unwrap() = &last[..last.len() / 2];
    let cut_at_line_end = &lines[..lines.len() - 2];
    let kept_arg = kept.to_string();
    let cases: [(&str, Vec<&str>, &[&str], i64); 4] = [
        ("an edited entry", edited, &[], at as i64 + 1),
        ("a missing entry", dropped, &[], 7),
        ("a file cut inside its last line", cut_mid_line, &[], total),
        (
            "a file cut at a line's end, with the kept head",
            cut_at_line_end.to_vec(),
            &["--expect", &kept_arg],
            total - 1,
        ),
    ];
    for (case, lines, extra, position) in cases {
        let file = ExportFile::holding(&lines);
        let mut args = vec!["events", "import", file.path()];
        args.extend_from_slice(extra);
        let refused = herald_on(&target, &args);
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(!refused.status.success(), "{case}: {stderr}");
        assert!(
            stderr.contains(&format!("not intact at position {position}:")),
            "{case}: {stderr}"
        );
        let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
            .fetch_one(&target_pool)
            .await
            .unwrap();
        assert_eq!(events, 0, "{case} wrote events");
    }

    let whole = ExportFile::holding(&lines);
    let restored = herald_on(
        &target,
        &["events", "import", whole.path(), "--expect", &kept_arg],
    );
    assert!(restored.status.success(), "{restored:?}");
    assert_eq!(String::from_utf8(restored.stdout).unwrap().trim(), kept_arg);
    let verified = herald_on(&target, &["audit", "verify", "--expect", &kept_arg]);
    assert!(verified.status.success(), "{verified:?}");
    let again = herald_on(&target, &["events", "import", whole.path()]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already holds events"),
        "{again:?}"
    );
}
