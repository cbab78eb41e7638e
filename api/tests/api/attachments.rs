//! Chat attachments kept in a local directory: announced, uploaded through
//! Herald's signed URL, carried by a message, shown by reads and downloaded
//! through a short-lived signed URL; and every refusal on the way.

use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::Digest;
use uuid::Uuid;

use crate::common::{admin, doctor, patient, post, Reply, TestApp};

/// The hexadecimal SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

/// `who` announces `bytes` as `filename` of `content_type` in `chat`.
pub async fn announce(
    app: &TestApp,
    chat: Uuid,
    who: domain::values::Actor,
    filename: &str,
    content_type: &str,
    bytes: &[u8],
) -> Reply {
    app.post(
        &format!("/api/v1/chats/{chat}/attachments"),
        who,
        json!({
            "filename": filename,
            "content_type": content_type,
            "size": bytes.len(),
            "sha256": sha256(bytes),
        }),
    )
    .await
}

/// `PUT`s `bytes` to a signed upload URL.
pub async fn put(app: &TestApp, url: &str, bytes: Vec<u8>) -> reqwest::Response {
    app.client.put(url).body(bytes).send().await.unwrap()
}

/// `PUT`s `bytes` as `announced` says: to its upload URL, with its headers.
pub async fn upload(app: &TestApp, announced: &Reply, bytes: Vec<u8>) -> reqwest::Response {
    let mut request = app
        .client
        .put(announced.body["upload_url"].as_str().unwrap())
        .body(bytes);
    for (name, value) in announced.body["upload_headers"].as_object().unwrap() {
        request = request.header(name, value.as_str().unwrap());
    }
    request.send().await.unwrap()
}

/// An announced and uploaded attachment's id.
pub async fn uploaded(app: &TestApp, chat: Uuid, who: domain::values::Actor, bytes: &[u8]) -> Uuid {
    let announced = announce(app, chat, who, "scan.png", "image/png", bytes).await;
    assert_eq!(announced.status, StatusCode::CREATED, "{}", announced.body);
    let stored = upload(app, &announced, bytes.to_vec()).await;
    assert_eq!(stored.status(), StatusCode::CREATED);
    attachment_id(&announced)
}

fn attachment_id(reply: &Reply) -> Uuid {
    reply.body["attachment_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// Checks that `who` may not send `body` to `chat`, for what it says of
/// `attachments`, and that nothing is stored.
async fn refused(app: &TestApp, who: domain::values::Actor, chat: Uuid, body: Value) {
    let call = post(format!("/api/v1/chats/{chat}/messages"), body);
    app.refuses(who, call, StatusCode::UNPROCESSABLE_ENTITY)
        .await
        .assert_names("attachments");
}

/// What `who` is answered for the attachment `id` of `chat`.
async fn link(app: &TestApp, chat: Uuid, who: domain::values::Actor, id: Uuid) -> Reply {
    let path = format!("/api/v1/chats/{chat}/attachments/{id}");
    app.send(reqwest::Method::GET, &path, who, None).await
}

/// The bytes `who` downloads of the attachment `id` of `chat`, through the
/// URL they are given, with the answer's headers.
async fn download(
    app: &TestApp,
    chat: Uuid,
    who: domain::values::Actor,
    id: Uuid,
) -> reqwest::Response {
    let link = link(app, chat, who, id).await;
    assert_eq!(link.status, StatusCode::OK, "{}", link.body);
    let url = link.body["download_url"].as_str().unwrap();
    app.client.get(url).send().await.unwrap()
}

/// `who` sends a message carrying `attachments` to `chat`.
async fn send(app: &TestApp, chat: Uuid, who: domain::values::Actor, body: Value) -> Reply {
    app.post(&format!("/api/v1/chats/{chat}/messages"), who, body)
        .await
}

#[tokio::test]
async fn a_picture_uploaded_through_its_signed_url_is_sent_shown_and_downloaded() {
    let app = TestApp::spawn_with_pipeline().await;
    let (alice, bob) = (app.enroll(patient()).await, doctor());
    let chat = app.group_chat(alice, &[bob]).await;
    let picture = b"\x89PNG pretend picture bytes".repeat(1000);
    let announced = announce(
        &app,
        chat,
        alice,
        "../x-ray \"left\".png",
        "image/png",
        &picture,
    )
    .await;
    assert_eq!(announced.status, StatusCode::CREATED, "{}", announced.body);
    let id = attachment_id(&announced);
    assert!(announced.body["expires_at"].is_string());
    assert_eq!(announced.body["upload_headers"], json!({}));
    let stored = upload(&app, &announced, picture.clone()).await;
    assert_eq!(stored.status(), StatusCode::CREATED);

    let sent = send(&app, chat, alice, json!({ "attachments": [id] })).await;
    assert_eq!(sent.status, StatusCode::CREATED, "{}", sent.body);
    app.wait_for_projections().await;

    let page = app
        .send(
            reqwest::Method::GET,
            &format!("/api/v1/chats/{chat}/messages"),
            bob,
            None,
        )
        .await;
    let message = &page.body["items"][0];
    assert_eq!(message["body"], Value::Null);
    assert_eq!(
        message["attachments"],
        json!([{ "id": id, "filename": "x-ray _left_.png", "content_type": "image/png",
                 "size": picture.len(), "thumbnail": false }])
    );

    let link = link(&app, chat, bob, id).await;
    assert_eq!(link.body["filename"], "x-ray _left_.png");
    let download = download(&app, chat, bob, id).await;
    assert_eq!(download.status(), StatusCode::OK);
    assert_eq!(download.headers()["content-type"], "image/png");
    let disposition = download.headers()["content-disposition"].to_str().unwrap();
    assert!(
        disposition.starts_with("attachment; filename=\"x-ray _left_.png\""),
        "{disposition}"
    );
    assert_eq!(download.bytes().await.unwrap().to_vec(), picture);
}

#[tokio::test]
async fn an_upload_whose_bytes_do_not_match_is_refused() {
    let app = TestApp::spawn().await;
    let alice = app.enroll(patient()).await;
    let chat = app.group_chat(alice, &[]).await;
    let declared = b"the real scan".to_vec();
    for stored in [b"a forged scan".to_vec(), b"the real".to_vec()] {
        let announced = announce(&app, chat, alice, "scan.pdf", "application/pdf", &declared).await;
        let url = announced.body["upload_url"].as_str().unwrap();
        assert_eq!(put(&app, url, stored).await.status(), StatusCode::CREATED);
        refused(
            &app,
            alice,
            chat,
            json!({ "body": "my scan", "attachments": [attachment_id(&announced)] }),
        )
        .await;
    }
}

#[tokio::test]
async fn an_attachment_not_uploaded_is_refused() {
    let app = TestApp::spawn().await;
    let alice = app.enroll(patient()).await;
    let chat = app.group_chat(alice, &[]).await;
    let announced = announce(&app, chat, alice, "a.txt", "text/plain", b"hello").await;
    refused(
        &app,
        alice,
        chat,
        json!({ "attachments": [attachment_id(&announced)] }),
    )
    .await;
}

#[tokio::test]
async fn an_attachment_of_another_chat_is_refused() {
    let app = TestApp::spawn().await;
    let alice = app.enroll(patient()).await;
    let (first, second) = (
        app.group_chat(alice, &[]).await,
        app.group_chat(alice, &[]).await,
    );
    let id = uploaded(&app, first, alice, b"bytes").await;
    refused(&app, alice, second, json!({ "attachments": [id] })).await;
}

#[tokio::test]
async fn an_attachment_another_message_uses_is_refused() {
    let app = TestApp::spawn().await;
    let alice = app.enroll(patient()).await;
    let chat = app.group_chat(alice, &[]).await;
    let id = uploaded(&app, chat, alice, b"bytes").await;
    let first = send(&app, chat, alice, json!({ "attachments": [id] })).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    refused(
        &app,
        alice,
        chat,
        json!({ "body": "again", "attachments": [id] }),
    )
    .await;
}

#[tokio::test]
async fn a_message_without_text_needs_an_attachment() {
    let app = TestApp::spawn().await;
    let alice = app.enroll(patient()).await;
    let chat = app.group_chat(alice, &[]).await;
    for body in [json!({}), json!({ "attachments": [] })] {
        let call = post(format!("/api/v1/chats/{chat}/messages"), body);
        app.refuses(alice, call, StatusCode::UNPROCESSABLE_ENTITY)
            .await
            .assert_names("body");
    }
}

#[tokio::test]
async fn a_file_of_a_type_not_allowed_or_too_large_or_from_an_outsider_is_refused() {
    let app = TestApp::spawn().await;
    let (alice, outsider) = (app.enroll(patient()).await, app.enroll(patient()).await);
    let chat = app.group_chat(alice, &[]).await;
    let path = format!("/api/v1/chats/{chat}/attachments");
    let file = |content_type: &str, size: u64| {
        json!({ "filename": "f", "content_type": content_type, "size": size,
                "sha256": sha256(b"x") })
    };
    let exe = post(&path, file("application/x-msdownload", 10));
    app.refuses(alice, exe, StatusCode::UNPROCESSABLE_ENTITY)
        .await
        .assert_names("content_type");
    let huge = post(&path, file("application/pdf", 25 * 1024 * 1024 + 1));
    app.refuses(alice, huge, StatusCode::UNPROCESSABLE_ENTITY)
        .await
        .assert_names("size");
    let bad = json!({ "filename": "/", "content_type": "pdf", "size": 1, "sha256": "xyz" });
    let reply = app
        .refuses(alice, post(&path, bad), StatusCode::UNPROCESSABLE_ENTITY)
        .await;
    let mut fields = reply.invalid_fields();
    fields.sort();
    assert_eq!(fields, ["content_type", "filename", "sha256"]);
    app.refuses(
        outsider,
        post(&path, file("image/png", 10)),
        StatusCode::FORBIDDEN,
    )
    .await;
}

#[tokio::test]
async fn an_upload_url_stores_at_most_the_announced_bytes_once_and_only_when_signed() {
    let app = TestApp::spawn().await;
    let alice = app.enroll(patient()).await;
    let chat = app.group_chat(alice, &[]).await;
    let announced = announce(&app, chat, alice, "a.txt", "text/plain", b"hello").await;
    let url = announced.body["upload_url"].as_str().unwrap().to_owned();

    let longer = put(&app, &url, b"hello, world".to_vec()).await;
    assert_eq!(longer.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let forged = url.replace("size=5", "size=50");
    assert_eq!(
        put(&app, &forged, b"hello".to_vec()).await.status(),
        StatusCode::FORBIDDEN
    );
    let other = url.replace(&chat.to_string(), &Uuid::new_v4().to_string());
    assert_eq!(
        put(&app, &other, b"hello".to_vec()).await.status(),
        StatusCode::FORBIDDEN
    );

    assert_eq!(
        put(&app, &url, b"hello".to_vec()).await.status(),
        StatusCode::CREATED
    );
    assert_eq!(
        put(&app, &url, b"jello".to_vec()).await.status(),
        StatusCode::CONFLICT
    );
    let id = attachment_id(&announced);
    let sent = send(&app, chat, alice, json!({ "attachments": [id] })).await;
    assert_eq!(sent.status, StatusCode::CREATED, "{}", sent.body);
}

#[tokio::test]
async fn only_members_and_admins_get_a_download_url_of_a_sent_attachment() {
    let app = TestApp::spawn_with_pipeline().await;
    let (alice, bob) = (app.enroll(patient()).await, doctor());
    let outsider = app.enroll(patient()).await;
    let admin = app.enroll(admin()).await;
    let chat = app.group_chat(alice, &[bob]).await;
    let unsent = uploaded(&app, chat, alice, b"draft").await;
    let sent = uploaded(&app, chat, alice, b"sent").await;
    let reply = send(&app, chat, alice, json!({ "attachments": [sent] })).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    app.wait_for_projections().await;

    let app = &app;
    let link = |who, id| link(app, chat, who, id);
    for who in [alice, bob, admin] {
        assert_eq!(link(who, sent).await.status, StatusCode::OK);
    }
    link(outsider, sent)
        .await
        .assert_problem(StatusCode::NOT_FOUND);
    link(alice, Uuid::new_v4())
        .await
        .assert_problem(StatusCode::NOT_FOUND);
    // An upload no message carries is its uploader's alone.
    assert_eq!(link(alice, unsent).await.status, StatusCode::OK);
    link(bob, unsent)
        .await
        .assert_problem(StatusCode::NOT_FOUND);
    link(admin, unsent)
        .await
        .assert_problem(StatusCode::NOT_FOUND);

    let url = link(bob, sent).await.body["download_url"]
        .as_str()
        .unwrap()
        .to_owned();
    let renamed = url.replace("filename=scan.png", "filename=scan.exe");
    let tampered = app.client.get(&renamed).send().await.unwrap();
    assert_eq!(tampered.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn an_upload_to_an_s3_compatible_store_goes_through_its_presigned_urls() {
    let s3 = crate::common::S3Server::start().await;
    let mut app = TestApp::spawn_with(crate::common::Options {
        attachments: Some(s3.attachments()),
        ..Default::default()
    })
    .await;
    app.start_pipeline().await;
    let (alice, bob) = (app.enroll(patient()).await, doctor());
    let chat = app.group_chat(alice, &[bob]).await;
    let report = b"%PDF-1.7 pretend report".repeat(500);
    let announced = announce(&app, chat, alice, "report.pdf", "application/pdf", &report).await;
    assert_eq!(announced.status, StatusCode::CREATED, "{}", announced.body);
    let upload_url = announced.body["upload_url"].as_str().unwrap();
    // The bytes go to the store, not to Herald.
    assert!(upload_url.starts_with(&s3.endpoint), "{upload_url}");
    assert!(upload_url.contains("X-Amz-Signature="), "{upload_url}");
    // The store takes only the announced bytes, sent with the signed headers.
    let unsigned = put(&app, upload_url, report.clone()).await;
    assert_eq!(unsigned.status(), StatusCode::FORBIDDEN);
    let mut other = report.clone();
    other[0] ^= 1;
    // (s3s-fs answers a body that does not match its signed hash with 500.)
    let forged = upload(&app, &announced, other).await;
    assert!(!forged.status().is_success(), "{}", forged.status());
    refused(
        &app,
        alice,
        chat,
        json!({ "attachments": [attachment_id(&announced)] }),
    )
    .await;
    let stored = upload(&app, &announced, report.clone()).await;
    assert!(stored.status().is_success(), "{}", stored.status());
    // Once stored, nothing replaces them, not even the same URL again.
    let again = upload(&app, &announced, report.clone()).await;
    assert_eq!(again.status(), StatusCode::PRECONDITION_FAILED);
    let id = attachment_id(&announced);

    let sent = send(
        &app,
        chat,
        alice,
        json!({ "body": "results", "attachments": [id] }),
    )
    .await;
    assert_eq!(sent.status, StatusCode::CREATED, "{}", sent.body);
    app.wait_for_projections().await;
    let link = link(&app, chat, bob, id).await;
    assert_eq!(link.status, StatusCode::OK, "{}", link.body);
    let download_url = link.body["download_url"].as_str().unwrap();
    assert!(download_url.starts_with(&s3.endpoint), "{download_url}");
    let download = app.client.get(download_url).send().await.unwrap();
    assert_eq!(download.status(), StatusCode::OK);
    assert_eq!(download.headers()["content-type"], "application/pdf");
    let disposition = download.headers()["content-disposition"].to_str().unwrap();
    assert!(
        disposition.starts_with("attachment; filename=\"report.pdf\""),
        "{disposition}"
    );
    assert_eq!(download.headers()["cache-control"], "private, no-store");
    assert_eq!(download.bytes().await.unwrap().to_vec(), report);
    // Without its signature the store refuses it.
    let unsigned = download_url.split('?').next().unwrap();
    let refused = app.client.get(unsigned).send().await.unwrap();
    assert!(refused.status().is_client_error(), "{}", refused.status());
}

#[tokio::test]
async fn an_upload_no_message_carried_in_time_is_deleted_and_can_no_longer_be_sent() {
    let dir = crate::common::AttachmentsDir::new();
    let secret = secrecy::SecretString::from(crate::common::ATTACHMENT_SECRET);
    let limits = domain::attachment::AttachmentLimits::default();
    let address = format!("http://127.0.0.1:{}", crate::common::free_port());
    let listener = tokio::net::TcpListener::bind(address.trim_start_matches("http://"))
        .await
        .unwrap();
    let attachments = api::attachments::Attachments::local(&dir.0, &address, secret, limits)
        .unwrap()
        .lasting(
            std::time::Duration::from_secs(600),
            std::time::Duration::ZERO,
        );
    let mut app = TestApp::spawn_with(crate::common::Options {
        attachments: Some(attachments),
        listener: Some(listener),
        ..Default::default()
    })
    .await;
    app.start_pipeline().await;
    let alice = app.enroll(patient()).await;
    let chat = app.group_chat(alice, &[]).await;
    let kept = uploaded(&app, chat, alice, b"kept").await;
    let sent = send(&app, chat, alice, json!({ "attachments": [kept] })).await;
    assert_eq!(sent.status, StatusCode::CREATED, "{}", sent.body);
    let forgotten = uploaded(&app, chat, alice, b"forgotten").await;
    let late = uploaded(&app, chat, alice, b"sent late").await;
    app.wait_for_projections().await;
    // Sent while the read model still shows it unused: the chat, which
    // knows better, keeps it from the sweep.
    app.stop_pipeline().await;
    let sent = send(&app, chat, alice, json!({ "attachments": [late] })).await;
    assert_eq!(sent.status, StatusCode::CREATED, "{}", sent.body);

    assert_eq!(
        app.attachments
            .sweep_unused(&app.pool, &app.write)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        app.attachments
            .sweep_unused(&app.pool, &app.write)
            .await
            .unwrap(),
        0
    );
    refused(&app, alice, chat, json!({ "attachments": [forgotten] })).await;
    app.start_pipeline().await;
    app.wait_for_projections().await;
    for (id, bytes) in [(kept, &b"kept"[..]), (late, &b"sent late"[..])] {
        let download = download(&app, chat, alice, id).await;
        assert_eq!(download.bytes().await.unwrap().as_ref(), bytes);
    }
}

/// A PNG of `width` × `height` pixels.
pub fn png(width: u32, height: u32) -> Vec<u8> {
    let picture = image::RgbImage::from_pixel(width, height, image::Rgb([20, 120, 200]));
    let mut bytes = std::io::Cursor::new(Vec::new());
    picture
        .write_to(&mut bytes, image::ImageFormat::Png)
        .unwrap();
    bytes.into_inner()
}

#[tokio::test]
async fn a_thumbnail_appears_for_an_image_and_bytes_that_are_no_image_are_set_aside() {
    let app = TestApp::spawn_with_payments().await;
    let alice = app.enroll(patient()).await;
    let chat = app.group_chat(alice, &[]).await;
    let picture = uploaded(&app, chat, alice, &png(600, 300)).await;
    let broken = uploaded(&app, chat, alice, b"not a png at all").await;
    let sent = send(&app, chat, alice, json!({ "attachments": [picture] })).await;
    assert_eq!(sent.status, StatusCode::CREATED, "{}", sent.body);
    let sent = send(&app, chat, alice, json!({ "attachments": [broken] })).await;
    assert_eq!(sent.status, StatusCode::CREATED, "{}", sent.body);

    let link = |id| link(&app, chat, alice, id);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let thumbnail_url = loop {
        let reply = link(picture).await;
        if let Some(url) = reply.body["thumbnail_url"].as_str() {
            break url.to_owned();
        }
        assert!(std::time::Instant::now() < deadline, "{}", reply.body);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let thumbnail = app.client.get(&thumbnail_url).send().await.unwrap();
    assert_eq!(thumbnail.headers()["content-type"], "image/png");
    let small = image::load_from_memory(&thumbnail.bytes().await.unwrap()).unwrap();
    assert_eq!((small.width(), small.height()), (256, 128));
    app.wait_for_projections().await;
    let page = app
        .send(
            reqwest::Method::GET,
            &format!("/api/v1/chats/{chat}/messages"),
            alice,
            None,
        )
        .await;
    assert_eq!(page.body["items"][1]["attachments"][0]["thumbnail"], true);
    assert_eq!(page.body["items"][0]["attachments"][0]["thumbnail"], false);

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let set_aside: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM projection_dead_letters WHERE projection = $1",
        )
        .bind(commands::thumbnails::CHECKPOINT)
        .fetch_one(&app.pool)
        .await
        .unwrap();
        if set_aside == 1 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no dead letter");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(link(broken).await.body["thumbnail_url"], Value::Null);
}
