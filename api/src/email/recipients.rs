//! Who a notification is e-mailed to.
//!
//! A notification to one person is e-mailed when its row says so (their
//! setting when it happened). One to an audience is e-mailed to each active
//! member of the audience's roles who joined before it and whose settings
//! switch e-mail of its kind on. Only people with an account, and so an
//! address, whose access is active are e-mailed: service accounts, whose
//! tokens are minted without one, never are.

use std::collections::HashSet;

use domain::user::NotificationSettings;
use domain::values::{NotificationKind, Role};
use projections::notifications::Fresh;
use sqlx::types::Json;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::deliveries::Target;

/// Someone in the audience of notifications to roles.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct Member {
    user_id: Uuid,
    /// The log position they joined at; they hear of nothing before it.
    joined_at: i64,
    settings: Json<NotificationSettings>,
}

/// The e-mails of `fresh` notifications, the audience of those to roles
/// read in `conn`.
pub(super) async fn emails(
    conn: &mut PgConnection,
    fresh: &[Fresh],
    audience: &[Role],
) -> Result<Vec<Target>, sqlx::Error> {
    let members = if fresh
        .iter()
        .any(|notification| notification.user_id.is_none())
    {
        members_of(conn, audience).await?
    } else {
        Vec::new()
    };
    let mut emails = emails_of(fresh, &members);
    let people: Vec<Uuid> = emails.iter().map(|email| email.target).collect();
    let reachable: HashSet<Uuid> = commands::accounts::active_among(conn, &people)
        .await?
        .into_iter()
        .collect();
    emails.retain(|email| reachable.contains(&email.target));
    Ok(emails)
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
fn emails_of(fresh: &[Fresh], members: &[Member]) -> Vec<Target> {
    let mut emails = Vec::new();
    for notification in fresh {
        let Ok(kind) = notification.notification.kind.parse::<NotificationKind>() else {
            tracing::warn!(
                notification_id = %notification.notification.id,
                kind = notification.notification.kind,
                "a notification of a kind this Herald does not know is not e-mailed"
            );
            continue;
        };
        match notification.user_id {
            Some(user_id) if notification.email => {
                emails.push(Target::of(notification, user_id));
            }
            Some(_) => {}
            None => emails.extend(
                members
                    .iter()
                    .filter(|member| {
                        member.joined_at < notification.notification.seq
                            && member.settings.email_on(kind)
                    })
                    .map(|member| Target::of(notification, member.user_id)),
            ),
        }
    }
    emails
}

#[cfg(test)]
mod tests {
    use projections::notifications::NotificationRow;

    use super::*;

    fn fresh(position: i64, user_id: Option<Uuid>, kind: NotificationKind, email: bool) -> Fresh {
        Fresh {
            user_id,
            email,
            notification: NotificationRow {
                id: Uuid::from_u128(position as u128),
                seq: position,
                kind: kind.as_str().to_owned(),
                booking_id: None,
                payment_id: None,
                chat_id: None,
                messages: None,
                read: false,
                created_at: chrono::DateTime::UNIX_EPOCH,
            },
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
        assert_eq!(
            emails_of(&notifications, &[]),
            [Target {
                notification_id: notifications[0].notification.id,
                target: alice,
                kind: "booking_assigned".to_owned(),
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
            .map(|email| email.target)
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
        notification.notification.kind = "carrier_pigeon".to_owned();
        assert_eq!(emails_of(&[notification], &[]), []);
    }
}
