//! Filling the outbox: the notifications after the cursor become e-mails to
//! those who want them, and the cursor moves past them, in one transaction
//! that holds the cursor row locked, so that workers of several processes
//! queue each notification once.
//!
//! A notification to one person is e-mailed when its row says so (their
//! setting when it happened). One to an audience is e-mailed to each active
//! member of the audience's roles who joined before it and whose settings
//! switch e-mail of its kind on.

use domain::user::NotificationSettings;
use domain::values::{NotificationKind, Role};
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// The most notifications one transaction queues, give or take the others at
/// the position it ends on.
const BATCH: i64 = 500;

/// What one transaction queued.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Queued {
    /// Notifications looked at; none when the cursor was at the newest.
    pub notifications: usize,
    /// E-mails added to the outbox.
    pub emails: u64,
}

/// A notification after the cursor.
#[derive(Debug, sqlx::FromRow)]
struct Fresh {
    id: Uuid,
    position: i64,
    /// None for everyone in the audience of its kind.
    user_id: Option<Uuid>,
    kind: String,
    /// Whether its one recipient wants it by e-mail.
    email: bool,
}

/// Someone in the audience of notifications to roles.
#[derive(Debug, sqlx::FromRow)]
struct Member {
    user_id: Uuid,
    /// The log position they joined at; they hear of nothing before it.
    joined_at: i64,
    settings: Json<NotificationSettings>,
}

/// An e-mail to queue.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Email {
    notification_id: Uuid,
    user_id: Uuid,
    kind: NotificationKind,
    position: i64,
}

/// Writes the cursor at the newest notification there is, unless a worker
/// did before: what happened before e-mail was set up is not sent.
pub(super) async fn start(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO notification_email_cursor (position)
         SELECT COALESCE(max(position), 0) FROM rm_notifications
         ON CONFLICT DO NOTHING",
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Queues the e-mails of the next notifications after the cursor and moves
/// the cursor past them.
pub(super) async fn queue(pool: &PgPool, audience: &[Role]) -> Result<Queued, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT declare_no_event_writes()")
        .execute(&mut *tx)
        .await?;
    let cursor: i64 =
        sqlx::query_scalar("SELECT position FROM notification_email_cursor FOR UPDATE")
            .fetch_one(&mut *tx)
            .await?;
    let fresh: Vec<Fresh> = sqlx::query_as(include_str!("fresh.sql"))
        .bind(cursor)
        .bind(BATCH)
        .fetch_all(&mut *tx)
        .await?;
    let Some(last) = fresh.last().map(|notification| notification.position) else {
        return Ok(Queued::default());
    };
    let members = if fresh
        .iter()
        .any(|notification| notification.user_id.is_none())
    {
        members_of(&mut tx, audience).await?
    } else {
        Vec::new()
    };
    let emails = insert(&mut tx, &emails_of(&fresh, &members)).await?;
    sqlx::query("UPDATE notification_email_cursor SET position = $1")
        .bind(last)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Queued {
        notifications: fresh.len(),
        emails,
    })
}

/// The active people in `roles`.
async fn members_of(conn: &mut PgConnection, roles: &[Role]) -> Result<Vec<Member>, sqlx::Error> {
    let roles: Vec<&str> = roles.iter().map(|role| role.as_str()).collect();
    sqlx::query_as(
        "SELECT user_id, joined_at, settings FROM rm_notification_people
          WHERE active AND role = ANY($1)",
    )
    .bind(roles)
    .fetch_all(conn)
    .await
}

/// The e-mails `fresh` notifications make, with `members` the audience of
/// those to roles.
fn emails_of(fresh: &[Fresh], members: &[Member]) -> Vec<Email> {
    let mut emails = Vec::new();
    for notification in fresh {
        let Ok(kind) = notification.kind.parse::<NotificationKind>() else {
            tracing::warn!(
                notification_id = %notification.id,
                kind = notification.kind,
                "a notification of a kind this Herald does not know is not e-mailed"
            );
            continue;
        };
        let email = |user_id| Email {
            notification_id: notification.id,
            user_id,
            kind,
            position: notification.position,
        };
        match notification.user_id {
            Some(user_id) if notification.email => emails.push(email(user_id)),
            Some(_) => {}
            None => emails.extend(
                members
                    .iter()
                    .filter(|member| {
                        member.joined_at < notification.position && member.settings.email_on(kind)
                    })
                    .map(|member| email(member.user_id)),
            ),
        }
    }
    emails
}

/// Adds `emails` to the outbox, those already there excepted; how many were
/// added.
async fn insert(conn: &mut PgConnection, emails: &[Email]) -> Result<u64, sqlx::Error> {
    if emails.is_empty() {
        return Ok(0);
    }
    let notifications: Vec<Uuid> = emails.iter().map(|e| e.notification_id).collect();
    let users: Vec<Uuid> = emails.iter().map(|e| e.user_id).collect();
    let kinds: Vec<&str> = emails.iter().map(|e| e.kind.as_str()).collect();
    let positions: Vec<i64> = emails.iter().map(|e| e.position).collect();
    let inserted = sqlx::query(
        "INSERT INTO notification_emails (notification_id, user_id, kind, position)
         SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::bigint[])
         ON CONFLICT DO NOTHING",
    )
    .bind(notifications)
    .bind(users)
    .bind(kinds)
    .bind(positions)
    .execute(conn)
    .await?;
    Ok(inserted.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh(position: i64, user_id: Option<Uuid>, kind: NotificationKind, email: bool) -> Fresh {
        Fresh {
            id: Uuid::from_u128(position as u128),
            position,
            user_id,
            kind: kind.as_str().to_owned(),
            email,
        }
    }

    fn member(user_id: Uuid, joined_at: i64, email: Option<bool>) -> Member {
        let mut settings = NotificationSettings::default();
        if let Some(on) = email {
            settings
                .email
                .insert(NotificationKind::BookingRequested, on);
        }
        Member {
            user_id,
            joined_at,
            settings: Json(settings),
        }
    }

    #[test]
    fn a_notification_to_one_person_is_emailed_only_when_its_row_says_so() {
        let (alice, bob) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let notifications = [
            fresh(10, Some(alice), NotificationKind::BookingAssigned, true),
            fresh(11, Some(bob), NotificationKind::PaymentFailed, false),
        ];
        let emails = emails_of(&notifications, &[]);
        assert_eq!(
            emails,
            [Email {
                notification_id: notifications[0].id,
                user_id: alice,
                kind: NotificationKind::BookingAssigned,
                position: 10,
            }]
        );
    }

    #[test]
    fn a_new_booking_is_emailed_to_members_who_joined_before_it_and_switched_its_email_on() {
        let (on, off, unset, late) = (
            Uuid::from_u128(1),
            Uuid::from_u128(2),
            Uuid::from_u128(3),
            Uuid::from_u128(4),
        );
        let members = [
            member(on, 5, Some(true)),
            member(off, 5, Some(false)),
            member(unset, 5, None),
            member(late, 20, Some(true)),
        ];
        let notifications = [fresh(10, None, NotificationKind::BookingRequested, false)];
        let recipients: Vec<Uuid> = emails_of(&notifications, &members)
            .iter()
            .map(|email| email.user_id)
            .collect();
        assert_eq!(recipients, [on]);
    }

    #[test]
    fn a_notification_of_an_unknown_kind_is_not_emailed() {
        let mut notification = fresh(
            10,
            Some(Uuid::from_u128(1)),
            NotificationKind::ChatMessages,
            true,
        );
        notification.kind = "carrier_pigeon".to_owned();
        assert_eq!(emails_of(&[notification], &[]), []);
    }
}
