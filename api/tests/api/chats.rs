//! Chat commands: who may create, join, leave, write, edit, delete and read.
#![allow(clippy::unwrap_used)]

use crate::common;

use common::{admin, auditor, delete, doctor, patch, patient, post, Call, TestApp};
use domain::values::Actor;
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

fn create(body: Value) -> Call {
    post("/api/v1/chats", body)
}

fn add(chat: Uuid, user: Actor) -> Call {
    post(
        format!("/api/v1/chats/{chat}/members"),
        json!({ "user_id": user.user_id }),
    )
}

fn remove(chat: Uuid, user: Actor) -> Call {
    delete(format!("/api/v1/chats/{chat}/members/{}", user.user_id))
}

fn send(chat: Uuid, body: &str) -> Call {
    post(
        format!("/api/v1/chats/{chat}/messages"),
        json!({ "body": body }),
    )
}

fn edit(chat: Uuid, message: Uuid, body: &str) -> Call {
    patch(
        format!("/api/v1/chats/{chat}/messages/{message}"),
        json!({ "body": body }),
    )
}

fn delete_message(chat: Uuid, message: Uuid) -> Call {
    delete(format!("/api/v1/chats/{chat}/messages/{message}"))
}

fn read(chat: Uuid, up_to_seq: u64) -> Call {
    post(
        format!("/api/v1/chats/{chat}/read"),
        json!({ "up_to_seq": up_to_seq }),
    )
}

/// A group chat of alice (its creator) and bob, and a patient outside it.
struct Group {
    app: TestApp,
    chat: Uuid,
    alice: Actor,
    bob: Actor,
    outsider: Actor,
}

async fn group() -> Group {
    let app = TestApp::spawn().await;
    let (alice, bob) = (patient(), app.enroll(doctor()).await);
    let chat = app.group_chat(alice, &[bob]).await;
    Group {
        app,
        chat,
        alice,
        bob,
        outsider: patient(),
    }
}

impl Group {
    /// A message `author` sent to the chat, and its id.
    async fn message(&self, author: Actor) -> Uuid {
        self.app
            .accepts(author, send(self.chat, "hello"), StatusCode::CREATED)
            .await
            .reply
            .id()
    }
}

#[tokio::test]
async fn a_group_chat_is_created_with_its_creator_as_the_first_member() {
    let app = TestApp::spawn().await;
    let (alice, bob) = (patient(), app.enroll(doctor()).await);

    let created = app
        .accepts(
            alice,
            create(json!({ "kind": "group", "title": " Care team ", "members": [bob.user_id] })),
            StatusCode::CREATED,
        )
        .await;

    assert_eq!(created.reply.body["version"], 1);
    let event = created.event();
    assert_eq!(event.event_type, "ChatCreated");
    assert_eq!(event.aggregate_id, created.reply.id().to_string());
    assert_eq!(event.field("members"), &json!([alice.user_id, bob.user_id]));
    assert_eq!(event.field("title"), "Care team");
}

#[tokio::test]
async fn a_direct_chat_is_created_between_the_caller_and_one_other_person() {
    let app = TestApp::spawn().await;
    let (alice, bob) = (patient(), app.enroll(doctor()).await);

    let created = app
        .accepts(
            alice,
            create(json!({ "kind": "direct", "members": [bob.user_id, bob.user_id] })),
            StatusCode::CREATED,
        )
        .await;

    assert_eq!(
        created.event().field("members"),
        &json!([alice.user_id, bob.user_id])
    );
}

#[tokio::test]
async fn a_direct_chat_needs_exactly_two_distinct_members() {
    let app = TestApp::spawn().await;
    let alice = patient();

    for members in [
        json!([]),
        json!([alice.user_id]),
        json!([doctor().user_id, doctor().user_id]),
    ] {
        app.refuses(
            alice,
            create(json!({ "kind": "direct", "members": members })),
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await
        .assert_names("members");
    }
}

#[tokio::test]
async fn each_invalid_chat_field_is_named_and_nothing_is_stored() {
    let app = TestApp::spawn().await;
    let members = json!([doctor().user_id]);
    let cases = [
        (json!({ "kind": "channel", "members": members }), "kind"),
        (json!({ "kind": "Group", "members": members }), "kind"),
        (json!({ "members": members }), "kind"),
        (json!({ "kind": "group" }), "members"),
        (
            json!({ "kind": "group", "title": "  ", "members": members }),
            "title",
        ),
        (
            json!({ "kind": "group", "title": "t".repeat(201), "members": members }),
            "title",
        ),
    ];

    for (body, field) in cases {
        app.refuses(patient(), create(body), StatusCode::UNPROCESSABLE_ENTITY)
            .await
            .assert_names(field);
    }
}

#[tokio::test]
async fn auditors_may_not_create_chats() {
    let app = TestApp::spawn().await;

    app.refuses(
        auditor(),
        create(json!({ "kind": "group", "members": [patient().user_id] })),
        StatusCode::FORBIDDEN,
    )
    .await;
}

#[tokio::test]
async fn a_chat_id_chosen_by_the_client_is_used_and_cannot_be_used_again() {
    let app = TestApp::spawn().await;
    let id = Uuid::new_v4();
    let doctor = app.enroll(doctor()).await;
    let body = json!({ "id": id, "kind": "group", "members": [doctor.user_id] });

    let created = app
        .accepts(patient(), create(body.clone()), StatusCode::CREATED)
        .await;
    assert_eq!(created.reply.id(), id);

    app.refuses(patient(), create(body), StatusCode::CONFLICT)
        .await;
}

#[tokio::test]
async fn a_member_adds_someone_to_a_group_chat() {
    let g = group().await;
    let newcomer = g.app.enroll(patient()).await;

    let added = g
        .app
        .accepts(g.bob, add(g.chat, newcomer), StatusCode::OK)
        .await;

    assert_eq!(added.reply.id(), g.chat);
    assert_eq!(added.event().event_type, "MemberAdded");
    assert_eq!(added.event().field("user_id"), &json!(newcomer.user_id));
    g.app
        .accepts(newcomer, send(g.chat, "hi all"), StatusCode::CREATED)
        .await;
}

#[tokio::test]
async fn an_admin_outside_a_group_chat_adds_someone_to_it() {
    let g = group().await;

    g.app
        .accepts(
            admin(),
            add(g.chat, g.app.enroll(patient()).await),
            StatusCode::OK,
        )
        .await;
}

#[tokio::test]
async fn someone_outside_a_group_chat_may_not_add_members() {
    let g = group().await;

    for outsider in [g.outsider, doctor(), auditor()] {
        g.app
            .refuses(outsider, add(g.chat, outsider), StatusCode::FORBIDDEN)
            .await;
    }
}

#[tokio::test]
async fn adding_someone_already_in_the_chat_is_a_conflict() {
    let g = group().await;

    g.app
        .refuses(g.alice, add(g.chat, g.bob), StatusCode::CONFLICT)
        .await;
}

#[tokio::test]
async fn only_active_users_join_a_chat() {
    let g = group().await;
    let deactivated = g.app.enroll(patient()).await;
    g.app
        .accepts(
            admin(),
            post(
                format!("/api/v1/users/{}/deactivate", deactivated.user_id),
                json!({}),
            ),
            StatusCode::OK,
        )
        .await;

    for stranger in [patient(), deactivated] {
        g.app
            .refuses(
                g.alice,
                add(g.chat, stranger),
                StatusCode::UNPROCESSABLE_ENTITY,
            )
            .await
            .assert_names("user_id");
        for kind in ["direct", "group"] {
            let body = json!({ "kind": kind, "members": [stranger.user_id] });
            g.app
                .refuses(g.alice, create(body), StatusCode::UNPROCESSABLE_ENTITY)
                .await
                .assert_names("members");
        }
    }
}

#[tokio::test]
async fn adding_a_member_needs_a_user_id() {
    let g = group().await;
    let call = post(format!("/api/v1/chats/{}/members", g.chat), json!({}));

    g.app
        .refuses(g.alice, call, StatusCode::UNPROCESSABLE_ENTITY)
        .await
        .assert_names("user_id");
}

#[tokio::test]
async fn the_members_of_a_direct_chat_cannot_change() {
    let app = TestApp::spawn().await;
    let (alice, bob) = (patient(), app.enroll(doctor()).await);
    let chat = app
        .accepts(
            alice,
            create(json!({ "kind": "direct", "members": [bob.user_id] })),
            StatusCode::CREATED,
        )
        .await
        .reply
        .id();

    app.refuses(alice, add(chat, patient()), StatusCode::CONFLICT)
        .await;
    app.refuses(admin(), add(chat, patient()), StatusCode::CONFLICT)
        .await;
    app.refuses(bob, remove(chat, bob), StatusCode::CONFLICT)
        .await;
}

#[tokio::test]
async fn a_member_leaves_a_group_chat_and_then_may_no_longer_write_in_it() {
    let g = group().await;

    let left = g
        .app
        .accepts(g.bob, remove(g.chat, g.bob), StatusCode::OK)
        .await;
    assert_eq!(left.event().event_type, "MemberRemoved");
    assert_eq!(left.event().field("removed_by"), &json!(g.bob.user_id));

    g.app
        .refuses(g.bob, send(g.chat, "still here?"), StatusCode::FORBIDDEN)
        .await;
}

#[tokio::test]
async fn an_admin_removes_a_member_from_a_group_chat() {
    let g = group().await;

    g.app
        .accepts(admin(), remove(g.chat, g.bob), StatusCode::OK)
        .await;
}

#[tokio::test]
async fn a_member_may_not_remove_someone_else() {
    let g = group().await;

    g.app
        .refuses(g.alice, remove(g.chat, g.bob), StatusCode::FORBIDDEN)
        .await;
    g.app
        .refuses(g.outsider, remove(g.chat, g.bob), StatusCode::FORBIDDEN)
        .await;
}

#[tokio::test]
async fn removing_someone_who_is_not_a_member_is_a_conflict() {
    let g = group().await;

    g.app
        .refuses(g.outsider, remove(g.chat, g.outsider), StatusCode::CONFLICT)
        .await;
}

#[tokio::test]
async fn members_send_messages_numbered_from_one_without_gaps() {
    let g = group().await;
    let chosen = Uuid::new_v4();

    let first = g
        .app
        .accepts(g.alice, send(g.chat, "first"), StatusCode::CREATED)
        .await;
    let second = g
        .app
        .accepts(
            g.bob,
            post(
                format!("/api/v1/chats/{}/messages", g.chat),
                json!({ "id": chosen, "body": "second" }),
            ),
            StatusCode::CREATED,
        )
        .await;

    assert_eq!(first.reply.body["seq"], 1);
    assert_eq!(first.reply.body["chat_id"], g.chat.to_string());
    assert_eq!(first.event().event_type, "MessageSent");
    assert_eq!(first.event().field("message_id"), &json!(first.reply.id()));
    assert_eq!(second.reply.body["seq"], 2);
    assert_eq!(second.reply.id(), chosen);
    assert_eq!(second.event().field("author"), &json!(g.bob.user_id));
}

#[tokio::test]
async fn a_message_id_chosen_by_the_client_cannot_be_used_twice() {
    let g = group().await;
    let call = post(
        format!("/api/v1/chats/{}/messages", g.chat),
        json!({ "id": Uuid::new_v4(), "body": "once" }),
    );

    g.app
        .accepts(g.alice, call.clone(), StatusCode::CREATED)
        .await;
    g.app.refuses(g.bob, call, StatusCode::CONFLICT).await;
}

#[tokio::test]
async fn a_message_id_another_chat_used_is_refused_and_every_message_is_read() {
    let app = TestApp::spawn_with_pipeline().await;
    let (alice, bob) = (patient(), app.enroll(doctor()).await);
    let first = app.group_chat(alice, &[bob]).await;
    let second = app.group_chat(alice, &[bob]).await;
    let id = Uuid::new_v4();
    let sent = |chat: Uuid, body: &str| {
        post(
            format!("/api/v1/chats/{chat}/messages"),
            json!({ "id": id, "body": body }),
        )
    };

    app.accepts(alice, sent(first, "first"), StatusCode::CREATED)
        .await;
    let refused = app
        .refuses(bob, sent(second, "second"), StatusCode::CONFLICT)
        .await;
    assert_eq!(
        refused.body["detail"],
        "a message with this id already exists"
    );

    app.wait_for_projections().await;
    let dead: i64 = sqlx::query_scalar("SELECT count(*) FROM projection_dead_letters")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(dead, 0);
    let read = app
        .send(
            reqwest::Method::GET,
            &format!("/api/v1/chats/{first}/messages"),
            alice,
            None,
        )
        .await;
    assert_eq!(read.body["items"][0]["body"], "first", "{}", read.body);
}

#[tokio::test]
async fn only_members_send_messages_not_even_admins() {
    let g = group().await;

    for outsider in [g.outsider, admin()] {
        g.app
            .refuses(outsider, send(g.chat, "let me in"), StatusCode::FORBIDDEN)
            .await;
    }
}

#[tokio::test]
async fn an_empty_or_blank_message_body_is_invalid() {
    let g = group().await;

    for body in ["", "   ", " \n\t "] {
        g.app
            .refuses(
                g.alice,
                send(g.chat, body),
                StatusCode::UNPROCESSABLE_ENTITY,
            )
            .await
            .assert_names("body");
    }
    let without_body = post(format!("/api/v1/chats/{}/messages", g.chat), json!({}));
    g.app
        .refuses(g.alice, without_body, StatusCode::UNPROCESSABLE_ENTITY)
        .await
        .assert_names("body");
}

#[tokio::test]
async fn a_message_body_may_have_4000_characters_but_not_4001() {
    let g = group().await;

    g.app
        .accepts(
            g.alice,
            send(g.chat, &"ж".repeat(4000)),
            StatusCode::CREATED,
        )
        .await;
    g.app
        .refuses(
            g.alice,
            send(g.chat, &"ж".repeat(4001)),
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await
        .assert_names("body");
}

#[tokio::test]
async fn a_message_body_is_stored_verbatim() {
    let g = group().await;
    let text = "  indented line\n\ttabbed \"quoted\" <b>not html</b> 🙂\n\n";

    let sent = g
        .app
        .accepts(g.alice, send(g.chat, text), StatusCode::CREATED)
        .await;
    let message = sent.reply.id();
    assert_eq!(sent.event().field("body"), text);

    let edited_text = "\n  edited  ";
    let edited = g
        .app
        .accepts(g.alice, edit(g.chat, message, edited_text), StatusCode::OK)
        .await;
    assert_eq!(edited.event().field("body"), edited_text);
}

#[tokio::test]
async fn the_author_edits_their_message() {
    let g = group().await;
    let message = g.message(g.bob).await;

    let edited = g
        .app
        .accepts(g.bob, edit(g.chat, message, "corrected"), StatusCode::OK)
        .await;

    assert_eq!(edited.reply.id(), message);
    assert_eq!(edited.event().event_type, "MessageEdited");
    assert_eq!(edited.event().field("seq"), 1);
}

#[tokio::test]
async fn only_the_author_may_edit_a_message() {
    let g = group().await;
    let message = g.message(g.bob).await;

    for other in [g.alice, admin(), g.outsider] {
        g.app
            .refuses(
                other,
                edit(g.chat, message, "not mine"),
                StatusCode::FORBIDDEN,
            )
            .await;
    }
}

#[tokio::test]
async fn an_edit_needs_a_valid_body() {
    let g = group().await;
    let message = g.message(g.bob).await;

    for body in ["  ", &"x".repeat(4001)] {
        g.app
            .refuses(
                g.bob,
                edit(g.chat, message, body),
                StatusCode::UNPROCESSABLE_ENTITY,
            )
            .await
            .assert_names("body");
    }
}

#[tokio::test]
async fn the_author_deletes_their_message() {
    let g = group().await;
    let message = g.message(g.bob).await;

    let deleted = g
        .app
        .accepts(g.bob, delete_message(g.chat, message), StatusCode::OK)
        .await;

    assert_eq!(deleted.reply.id(), message);
    assert_eq!(deleted.event().event_type, "MessageDeleted");
}

#[tokio::test]
async fn an_admin_deletes_anyones_message() {
    let g = group().await;
    let message = g.message(g.bob).await;

    let moderator = admin();
    let deleted = g
        .app
        .accepts(moderator, delete_message(g.chat, message), StatusCode::OK)
        .await;

    assert_eq!(
        deleted.event().field("deleted_by"),
        &json!(moderator.user_id)
    );
}

#[tokio::test]
async fn only_the_author_or_an_admin_may_delete_a_message() {
    let g = group().await;
    let message = g.message(g.bob).await;

    for other in [g.alice, g.outsider, auditor()] {
        g.app
            .refuses(
                other,
                delete_message(g.chat, message),
                StatusCode::FORBIDDEN,
            )
            .await;
    }
}

#[tokio::test]
async fn a_deleted_message_can_be_neither_edited_nor_deleted_again() {
    let g = group().await;
    let message = g.message(g.bob).await;
    g.app
        .accepts(g.bob, delete_message(g.chat, message), StatusCode::OK)
        .await;

    g.app
        .refuses(g.bob, edit(g.chat, message, "undo"), StatusCode::CONFLICT)
        .await;
    g.app
        .refuses(g.bob, delete_message(g.chat, message), StatusCode::CONFLICT)
        .await;
}

#[tokio::test]
async fn editing_or_deleting_an_unknown_message_is_not_found() {
    let g = group().await;
    g.message(g.bob).await;
    let unknown = Uuid::new_v4();

    g.app
        .refuses(g.bob, edit(g.chat, unknown, "hm"), StatusCode::NOT_FOUND)
        .await;
    g.app
        .refuses(
            g.bob,
            delete_message(g.chat, unknown),
            StatusCode::NOT_FOUND,
        )
        .await;
}

#[tokio::test]
async fn a_member_marks_messages_as_read_and_a_repeat_stores_nothing() {
    let g = group().await;
    g.message(g.alice).await;
    g.message(g.alice).await;

    let marked = g.app.accepts(g.bob, read(g.chat, 2), StatusCode::OK).await;
    assert_eq!(marked.event().event_type, "ReadUpTo");
    assert_eq!(marked.event().field("up_to_seq"), 2);

    for up_to_seq in [2, 1, 0] {
        let reply = g
            .app
            .stores_nothing(g.app.call(g.bob, &read(g.chat, up_to_seq)))
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    }
}

#[tokio::test]
async fn reading_beyond_the_last_message_is_invalid() {
    let g = group().await;
    g.message(g.alice).await;

    g.app
        .refuses(g.bob, read(g.chat, 2), StatusCode::UNPROCESSABLE_ENTITY)
        .await
        .assert_names("up_to_seq");
    let without_seq = post(format!("/api/v1/chats/{}/read", g.chat), json!({}));
    g.app
        .refuses(g.bob, without_seq, StatusCode::UNPROCESSABLE_ENTITY)
        .await
        .assert_names("up_to_seq");
}

#[tokio::test]
async fn someone_outside_the_chat_may_not_mark_it_read() {
    let g = group().await;
    g.message(g.alice).await;

    for outsider in [g.outsider, admin()] {
        g.app
            .refuses(outsider, read(g.chat, 1), StatusCode::FORBIDDEN)
            .await;
    }
}

#[tokio::test]
async fn every_command_on_an_unknown_chat_is_not_found() {
    let app = TestApp::spawn().await;
    let (chat, message, alice) = (Uuid::new_v4(), Uuid::new_v4(), admin());

    for call in [
        add(chat, patient()),
        remove(chat, alice),
        send(chat, "anyone?"),
        edit(chat, message, "anyone?"),
        delete_message(chat, message),
        read(chat, 0),
    ] {
        app.refuses(alice, call, StatusCode::NOT_FOUND).await;
    }
}

#[tokio::test]
async fn a_malformed_id_in_the_path_is_not_found() {
    let g = group().await;
    let chat = g.chat;
    let user = g.bob.user_id;

    for call in [
        post(
            "/api/v1/chats/not-a-uuid/members",
            json!({ "user_id": user }),
        ),
        delete(format!("/api/v1/chats/{chat}/members/not-a-uuid")),
        delete(format!("/api/v1/chats/12345/members/{user}")),
        post("/api/v1/chats/not-a-uuid/messages", json!({ "body": "hi" })),
        patch(
            format!("/api/v1/chats/{chat}/messages/not-a-uuid"),
            json!({ "body": "hi" }),
        ),
        delete(format!("/api/v1/chats/{chat}/messages/not-a-uuid")),
        post("/api/v1/chats/not-a-uuid/read", json!({ "up_to_seq": 0 })),
    ] {
        g.app.refuses(g.alice, call, StatusCode::NOT_FOUND).await;
    }
}
