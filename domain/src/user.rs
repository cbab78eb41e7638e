//! A person who signs in to Herald.
//!
//! The log records that an account exists, in which role, whether it may
//! sign in, and who changed that and when. The person's e-mail address, name,
//! phone and password hash are not in it: they are written beside the event
//! that records the account, in the same transaction, to a table of their own,
//! so that they can be erased later without touching the log.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::access::may_manage_users;
use crate::error::{DomainError, Permission, ValidationError};
use crate::values::{Actor, NotificationKind, Role};

/// What can be asked of a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserCommand {
    /// Someone signs up as a patient.
    Register {
        /// The new user's id.
        user_id: Uuid,
        /// When.
        at: DateTime<Utc>,
    },
    /// An admin opens an account for someone in a given role.
    Create {
        /// The new user's id.
        user_id: Uuid,
        /// The role they will act in.
        role: Role,
        /// Who creates them: an admin, or Herald itself.
        actor: Actor,
        /// When.
        at: DateTime<Utc>,
    },
    /// The user chose a new password.
    ChangePassword {
        /// Who asks: only the user themself.
        actor: Actor,
        /// When.
        at: DateTime<Utc>,
    },
    /// The user changes what their account shows of them.
    ChangeProfile {
        /// Who asks: only the user themself.
        actor: Actor,
        /// The fields that change (`name`, `phone`, and a doctor's
        /// `specialty` and `bio`); their values go to the account, not to the
        /// log.
        fields: Vec<String>,
        /// When.
        at: DateTime<Utc>,
    },
    /// An admin gives the user another role.
    ChangeRole {
        /// The new role.
        role: Role,
        /// Who: an admin, not about themself.
        actor: Actor,
        /// When.
        at: DateTime<Utc>,
    },
    /// An admin stops the user from signing in.
    Deactivate {
        /// Who: an admin, not about themself.
        actor: Actor,
        /// When.
        at: DateTime<Utc>,
    },
    /// An admin lets a deactivated user sign in again.
    Reactivate {
        /// Who: an admin.
        actor: Actor,
        /// When.
        at: DateTime<Utc>,
    },
    /// The user chooses which notifications they get and how.
    ChangeNotificationSettings {
        /// Who asks: only the user themself.
        actor: Actor,
        /// What to switch on or off.
        changes: NotificationSettings,
        /// When.
        at: DateTime<Utc>,
    },
    /// The user has seen their notifications up to one.
    ReadNotifications {
        /// Who asks: only the user themself.
        actor: Actor,
        /// The log position of the newest notification read.
        up_to: i64,
        /// When.
        at: DateTime<Utc>,
    },
}

/// Switches of a user's notifications: `true` turns one on (or mutes a
/// chat), `false` off; what is not named stays as it was. As a user's
/// settings, the switches they made: everything else is as
/// [`NotificationSettings::feed_on`] and [`NotificationSettings::email_on`]
/// say by default, and no chat is muted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationSettings {
    /// Notifications shown in the app, by kind.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub feed: BTreeMap<NotificationKind, bool>,
    /// Notifications sent by e-mail, by kind.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub email: BTreeMap<NotificationKind, bool>,
    /// Chats that notify of nothing, by id.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub muted_chats: BTreeMap<Uuid, bool>,
}

impl NotificationSettings {
    /// Whether it switches nothing.
    pub fn is_empty(&self) -> bool {
        self.feed.is_empty() && self.email.is_empty() && self.muted_chats.is_empty()
    }
}

impl NotificationSettings {
    /// Whether notifications of `kind` are shown in the app.
    pub fn feed_on(&self, kind: NotificationKind) -> bool {
        self.feed.get(&kind).copied().unwrap_or(true)
    }

    /// Whether notifications of `kind` are sent by e-mail: all but new
    /// bookings, which every doctor would get, until switched.
    pub fn email_on(&self, kind: NotificationKind) -> bool {
        let default = kind != NotificationKind::BookingRequested;
        self.email.get(&kind).copied().unwrap_or(default)
    }

    /// Whether the chat is muted.
    pub fn muted(&self, chat_id: Uuid) -> bool {
        self.muted_chats.get(&chat_id).copied().unwrap_or(false)
    }

    /// The switches of `changes` that change something in these settings.
    pub fn changed_by(&self, changes: NotificationSettings) -> NotificationSettings {
        NotificationSettings {
            feed: (changes.feed.into_iter())
                .filter(|(kind, on)| self.feed_on(*kind) != *on)
                .collect(),
            email: (changes.email.into_iter())
                .filter(|(kind, on)| self.email_on(*kind) != *on)
                .collect(),
            muted_chats: (changes.muted_chats.into_iter())
                .filter(|(chat, muted)| self.muted(*chat) != *muted)
                .collect(),
        }
    }

    /// Applies switches that were decided; a chat no longer muted is
    /// forgotten.
    pub fn apply(&mut self, changes: &NotificationSettings) {
        self.feed.extend(&changes.feed);
        self.email.extend(&changes.email);
        for (chat, muted) in &changes.muted_chats {
            if *muted {
                self.muted_chats.insert(*chat, true);
            } else {
                self.muted_chats.remove(chat);
            }
        }
    }
}

/// What happened to a user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum UserEvent {
    /// A patient signed up.
    UserRegistered {
        /// The user's id.
        user_id: Uuid,
        /// The role they act in: `patient`.
        role: Role,
        /// When.
        at: DateTime<Utc>,
    },
    /// An admin opened an account for someone.
    UserCreated {
        /// The user's id.
        user_id: Uuid,
        /// The role they act in.
        role: Role,
        /// The admin who created them (nil for Herald itself).
        created_by: Uuid,
        /// When.
        at: DateTime<Utc>,
    },
    /// The user's password changed; the new hash is in their account, not here.
    PasswordChanged {
        /// When.
        at: DateTime<Utc>,
    },
    /// The user changed their profile; the new values are in their account.
    ProfileChanged {
        /// Which fields changed.
        fields: Vec<String>,
        /// When.
        at: DateTime<Utc>,
    },
    /// The user's role changed.
    RoleChanged {
        /// The role before.
        from: Role,
        /// The role now.
        to: Role,
        /// The admin who changed it.
        by: Uuid,
        /// When.
        at: DateTime<Utc>,
    },
    /// The user may no longer sign in; their sessions and tokens stop working.
    UserDeactivated {
        /// The admin who deactivated them.
        by: Uuid,
        /// When.
        at: DateTime<Utc>,
    },
    /// The user may sign in again.
    UserReactivated {
        /// The admin who reactivated them.
        by: Uuid,
        /// When.
        at: DateTime<Utc>,
    },
    /// The user switched notifications on or off.
    NotificationSettingsChanged {
        /// The switches that changed something.
        changes: NotificationSettings,
        /// When.
        at: DateTime<Utc>,
    },
    /// The user has seen their notifications up to one.
    NotificationsRead {
        /// The log position of the newest notification read.
        up_to: i64,
        /// When.
        at: DateTime<Utc>,
    },
}

impl DomainEvent for UserEvent {
    fn event_type(&self) -> String {
        match self {
            Self::UserRegistered { .. } => "UserRegistered",
            Self::UserCreated { .. } => "UserCreated",
            Self::PasswordChanged { .. } => "PasswordChanged",
            Self::ProfileChanged { .. } => "ProfileChanged",
            Self::RoleChanged { .. } => "RoleChanged",
            Self::UserDeactivated { .. } => "UserDeactivated",
            Self::UserReactivated { .. } => "UserReactivated",
            Self::NotificationSettingsChanged { .. } => "NotificationSettingsChanged",
            Self::NotificationsRead { .. } => "NotificationsRead",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

/// The most chats one person may mute.
pub const MAX_MUTED_CHATS: usize = 1000;

/// The profile fields only a doctor has.
pub const DOCTORS_ONLY: [&str; 2] = ["specialty", "bio"];

/// A user, as the log knows them: who, their role, and whether they may
/// sign in.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    id: Uuid,
    role: Option<Role>,
    deactivated: bool,
    #[serde(default)]
    notifications: NotificationSettings,
    #[serde(default)]
    notifications_read: i64,
}

impl User {
    /// The role the user acts in, once they exist.
    pub fn role(&self) -> Option<Role> {
        self.role
    }

    /// Whether the user exists and may sign in.
    pub fn is_active(&self) -> bool {
        self.role.is_some() && !self.deactivated
    }

    /// How the user wants to be notified.
    pub fn notifications(&self) -> &NotificationSettings {
        &self.notifications
    }

    /// The events `command` leads to, or why it is refused.
    pub fn decide(&self, command: UserCommand) -> Result<Vec<UserEvent>, DomainError> {
        match command {
            UserCommand::Register { user_id, at } => {
                if self.role.is_some() {
                    return Err(DomainError::UserAlreadyExists);
                }
                Ok(vec![UserEvent::UserRegistered {
                    user_id,
                    role: Role::Patient,
                    at,
                }])
            }
            UserCommand::Create {
                user_id,
                role,
                actor,
                at,
            } => {
                may_manage_users(actor)?;
                let role = person_role(role)?;
                if self.role.is_some() {
                    return Err(DomainError::UserAlreadyExists);
                }
                Ok(vec![UserEvent::UserCreated {
                    user_id,
                    role,
                    created_by: actor.user_id,
                    at,
                }])
            }
            UserCommand::ChangePassword { actor, at } => {
                self.existing()?;
                if actor.user_id != self.id {
                    return Err(Permission::OnlyTheUserMayChangeTheirPassword.into());
                }
                Ok(vec![UserEvent::PasswordChanged { at }])
            }
            UserCommand::ChangeProfile { actor, fields, at } => {
                if self.themself(actor)? != Role::Doctor {
                    if let Some(field) = fields.iter().find(|f| DOCTORS_ONLY.contains(&f.as_str()))
                    {
                        return Err(ValidationError::new(
                            field.as_str(),
                            "only a doctor's profile has a specialty and a bio",
                        )
                        .into());
                    }
                }
                if fields.is_empty() {
                    return Ok(vec![]);
                }
                Ok(vec![UserEvent::ProfileChanged { fields, at }])
            }
            UserCommand::ChangeRole { role, actor, at } => {
                let from = self.administered_by(actor)?;
                let to = person_role(role)?;
                if from == to {
                    return Ok(vec![]);
                }
                Ok(vec![UserEvent::RoleChanged {
                    from,
                    to,
                    by: actor.user_id,
                    at,
                }])
            }
            UserCommand::Deactivate { actor, at } => {
                self.administered_by(actor)?;
                if self.deactivated {
                    return Ok(vec![]);
                }
                Ok(vec![UserEvent::UserDeactivated {
                    by: actor.user_id,
                    at,
                }])
            }
            UserCommand::Reactivate { actor, at } => {
                may_manage_users(actor)?;
                self.existing()?;
                if !self.deactivated {
                    return Ok(vec![]);
                }
                Ok(vec![UserEvent::UserReactivated {
                    by: actor.user_id,
                    at,
                }])
            }
            UserCommand::ChangeNotificationSettings { actor, changes, at } => {
                self.themself(actor)?;
                let changes = self.notifications.changed_by(changes);
                if changes.is_empty() {
                    return Ok(vec![]);
                }
                let mut after = self.notifications.clone();
                after.apply(&changes);
                if after.muted_chats.len() > MAX_MUTED_CHATS {
                    return Err(ValidationError::new(
                        "muted_chats",
                        format!("at most {MAX_MUTED_CHATS} chats may be muted"),
                    )
                    .into());
                }
                Ok(vec![UserEvent::NotificationSettingsChanged { changes, at }])
            }
            UserCommand::ReadNotifications { actor, up_to, at } => {
                self.themself(actor)?;
                if up_to <= self.notifications_read {
                    return Ok(vec![]);
                }
                Ok(vec![UserEvent::NotificationsRead { up_to, at }])
            }
        }
    }

    /// The user's role, when `actor` is the user themself: what is theirs
    /// alone to say.
    fn themself(&self, actor: Actor) -> Result<Role, DomainError> {
        let role = self.existing()?;
        if actor.user_id != self.id {
            return Err(Permission::OnlyTheUserMayChangeTheirProfile.into());
        }
        Ok(role)
    }

    /// The user's role, once they exist.
    fn existing(&self) -> Result<Role, DomainError> {
        self.role.ok_or(DomainError::UserNotFound)
    }

    /// The user's role, when `actor` may manage them: an admin, about
    /// someone else, so that no admin locks themself out.
    fn administered_by(&self, actor: Actor) -> Result<Role, DomainError> {
        may_manage_users(actor)?;
        let role = self.existing()?;
        if actor.user_id == self.id {
            return Err(Permission::AdminsDoNotManageThemselves.into());
        }
        Ok(role)
    }
}

/// `role` when a person can have it: any but Herald's own.
fn person_role(role: Role) -> Result<Role, ValidationError> {
    if role == Role::System {
        return Err(ValidationError::new(
            "role",
            "must be one of patient, doctor, admin, auditor",
        ));
    }
    Ok(role)
}

impl Aggregate for User {
    const TYPE: &'static str = "User";
    type Command = UserCommand;
    type Event = UserEvent;
    type Error = DomainError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &cqrs_es::event_sink::EventSink<Self>,
    ) -> Result<(), Self::Error> {
        for event in self.decide(command)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            UserEvent::UserRegistered { user_id, role, .. }
            | UserEvent::UserCreated { user_id, role, .. } => {
                self.id = user_id;
                self.role = Some(role);
            }
            UserEvent::PasswordChanged { .. } | UserEvent::ProfileChanged { .. } => {}
            UserEvent::RoleChanged { to, .. } => self.role = Some(to),
            UserEvent::UserDeactivated { .. } => self.deactivated = true,
            UserEvent::UserReactivated { .. } => self.deactivated = false,
            UserEvent::NotificationSettingsChanged { changes, .. } => {
                self.notifications.apply(&changes);
            }
            UserEvent::NotificationsRead { up_to, .. } => self.notifications_read = up_to,
        }
    }
}

/// Someone another aggregate's command names (a booking's doctor, a chat's
/// member), as the write side finds them in the lookup table the User events
/// fill in their own transaction: the role they act in while their account
/// is active, and nothing when they have no account or it is deactivated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Named {
    /// Who is named.
    pub user_id: Uuid,
    /// Their role, if they may act.
    pub active_as: Option<Role>,
}

impl Named {
    /// Whether they have an account that may act.
    pub fn is_active(&self) -> bool {
        self.active_as.is_some()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn register(user_id: Uuid) -> UserCommand {
        UserCommand::Register {
            user_id,
            at: DateTime::<Utc>::UNIX_EPOCH,
        }
    }

    #[test]
    fn someone_who_registers_is_a_patient_and_cannot_register_again() {
        let id = Uuid::new_v4();
        let mut user = User::default();
        let events = user.decide(register(id)).unwrap();
        assert_eq!(
            events,
            [UserEvent::UserRegistered {
                user_id: id,
                role: Role::Patient,
                at: DateTime::<Utc>::UNIX_EPOCH,
            }]
        );
        for event in events {
            user.apply(event);
        }
        assert_eq!(user.role(), Some(Role::Patient));
        assert_eq!(
            user.decide(register(id)),
            Err(DomainError::UserAlreadyExists)
        );
    }

    #[test]
    fn only_a_doctor_has_a_specialty_and_a_bio() {
        let id = Uuid::new_v4();
        let change = |role, fields: &[&str]| {
            let mut user = User::default();
            let create = UserCommand::Create {
                user_id: id,
                role,
                actor: Actor::system(),
                at: DateTime::<Utc>::UNIX_EPOCH,
            };
            for event in user.decide(create).unwrap() {
                user.apply(event);
            }
            user.decide(UserCommand::ChangeProfile {
                actor: Actor::new(id, role),
                fields: fields.iter().map(|f| (*f).to_owned()).collect(),
                at: DateTime::<Utc>::UNIX_EPOCH,
            })
        };
        assert_eq!(
            change(Role::Doctor, &["specialty", "bio"]).unwrap(),
            [UserEvent::ProfileChanged {
                fields: vec!["specialty".to_owned(), "bio".to_owned()],
                at: DateTime::<Utc>::UNIX_EPOCH,
            }]
        );
        for role in [Role::Patient, Role::Admin, Role::Auditor] {
            for field in DOCTORS_ONLY {
                let refused = change(role, &["name", field]).unwrap_err();
                assert_eq!(refused.validation().map(|v| v.field.as_str()), Some(field));
            }
            assert!(change(role, &["name"]).is_ok());
        }
    }

    #[test]
    fn only_an_admin_creates_a_user_in_a_role_a_person_can_have() {
        let id = Uuid::new_v4();
        let create = |role, actor| UserCommand::Create {
            user_id: id,
            role,
            actor,
            at: DateTime::<Utc>::UNIX_EPOCH,
        };
        let admin = Actor::new(Uuid::new_v4(), Role::Admin);
        let mut user = User::default();
        assert_eq!(
            user.decide(create(
                Role::Doctor,
                Actor::new(Uuid::new_v4(), Role::Doctor)
            )),
            Err(DomainError::Forbidden(Permission::OnlyAdminsManageUsers))
        );
        assert!(matches!(
            user.decide(create(Role::System, admin)),
            Err(DomainError::Invalid(_))
        ));
        for event in user.decide(create(Role::Doctor, admin)).unwrap() {
            user.apply(event);
        }
        assert_eq!(user.role(), Some(Role::Doctor));
        assert_eq!(
            user.decide(create(Role::Doctor, admin)),
            Err(DomainError::UserAlreadyExists)
        );
    }

    #[test]
    fn an_admin_deactivates_reactivates_and_changes_the_role_of_others_but_not_themself() {
        let id = Uuid::new_v4();
        let admin = Actor::new(Uuid::new_v4(), Role::Admin);
        let mut user = User::default();
        let at = DateTime::<Utc>::UNIX_EPOCH;
        for event in user.decide(register(id)).unwrap() {
            user.apply(event);
        }
        let mut run = |command| {
            let events = user.decide(command)?;
            for event in events.clone() {
                user.apply(event);
            }
            Ok::<_, DomainError>(events)
        };
        assert_eq!(
            run(UserCommand::Deactivate {
                actor: Actor::new(Uuid::new_v4(), Role::Doctor),
                at
            }),
            Err(DomainError::Forbidden(Permission::OnlyAdminsManageUsers))
        );
        assert_eq!(
            run(UserCommand::Deactivate { actor: admin, at }).unwrap(),
            [UserEvent::UserDeactivated {
                by: admin.user_id,
                at
            }]
        );
        assert_eq!(
            run(UserCommand::Deactivate { actor: admin, at }).unwrap(),
            []
        );
        assert_eq!(
            run(UserCommand::Reactivate { actor: admin, at }).unwrap(),
            [UserEvent::UserReactivated {
                by: admin.user_id,
                at
            }]
        );
        assert_eq!(
            run(UserCommand::ChangeRole {
                role: Role::Doctor,
                actor: admin,
                at
            })
            .unwrap(),
            [UserEvent::RoleChanged {
                from: Role::Patient,
                to: Role::Doctor,
                by: admin.user_id,
                at
            }]
        );
        assert_eq!(user.role(), Some(Role::Doctor));
        assert!(user.is_active());
        let myself = Actor::new(id, Role::Admin);
        assert_eq!(
            user.decide(UserCommand::Deactivate { actor: myself, at }),
            Err(DomainError::Forbidden(
                Permission::AdminsDoNotManageThemselves
            ))
        );
    }

    #[test]
    fn only_the_user_changes_their_password() {
        let id = Uuid::new_v4();
        let mut user = User::default();
        let change = |actor| UserCommand::ChangePassword {
            actor,
            at: DateTime::<Utc>::UNIX_EPOCH,
        };
        assert_eq!(
            user.decide(change(Actor::new(id, Role::Patient))),
            Err(DomainError::UserNotFound)
        );
        for event in user.decide(register(id)).unwrap() {
            user.apply(event);
        }
        assert_eq!(
            user.decide(change(Actor::new(id, Role::Patient))).unwrap(),
            [UserEvent::PasswordChanged {
                at: DateTime::<Utc>::UNIX_EPOCH
            }]
        );
        assert_eq!(
            user.decide(change(Actor::new(Uuid::new_v4(), Role::Admin))),
            Err(DomainError::Forbidden(
                Permission::OnlyTheUserMayChangeTheirPassword
            ))
        );
    }

    #[test]
    fn notification_settings_record_only_what_changes_and_the_read_marker_only_moves_on() {
        use crate::values::NotificationKind::{BookingAssigned, BookingRequested};
        let id = Uuid::new_v4();
        let me = Actor::new(id, Role::Doctor);
        let mut user = User::default();
        let create = UserCommand::Create {
            user_id: id,
            role: Role::Doctor,
            actor: Actor::system(),
            at: DateTime::<Utc>::UNIX_EPOCH,
        };
        for event in user.decide(create).unwrap() {
            user.apply(event);
        }
        assert!(!user.notifications().email_on(BookingRequested));
        assert!(user.notifications().email_on(BookingAssigned));
        let chat = Uuid::new_v4();
        let change = |changes| UserCommand::ChangeNotificationSettings {
            actor: me,
            changes,
            at: DateTime::<Utc>::UNIX_EPOCH,
        };
        let asked = NotificationSettings {
            feed: BTreeMap::from([(BookingRequested, true)]),
            email: BTreeMap::from([(BookingAssigned, false)]),
            muted_chats: BTreeMap::from([(chat, true)]),
        };
        let events = user.decide(change(asked.clone())).unwrap();
        let expected = NotificationSettings {
            feed: BTreeMap::new(),
            ..asked.clone()
        };
        assert_eq!(
            events,
            [UserEvent::NotificationSettingsChanged {
                changes: expected,
                at: DateTime::<Utc>::UNIX_EPOCH,
            }]
        );
        for event in events {
            user.apply(event);
        }
        assert!(user.notifications().muted(chat));
        assert_eq!(user.decide(change(asked)).unwrap(), []);
        let someone_else = UserCommand::ChangeNotificationSettings {
            actor: Actor::new(Uuid::new_v4(), Role::Admin),
            changes: NotificationSettings::default(),
            at: DateTime::<Utc>::UNIX_EPOCH,
        };
        assert!(user.decide(someone_else).is_err());

        let read = |up_to| UserCommand::ReadNotifications {
            actor: me,
            up_to,
            at: DateTime::<Utc>::UNIX_EPOCH,
        };
        for event in user.decide(read(7)).unwrap() {
            user.apply(event);
        }
        assert_eq!(user.decide(read(5)).unwrap(), []);
        assert_eq!(user.decide(read(7)).unwrap(), []);
        assert_eq!(user.decide(read(8)).unwrap().len(), 1);
    }
}
