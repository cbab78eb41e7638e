//! A person who signs in to Herald.
//!
//! The log records that an account exists, in which role, and from when. The
//! person's e-mail address, name, phone and password hash are not in it: they
//! are written beside the event that records the account, in the same
//! transaction, to a table of their own, so that they can be erased later
//! without touching the log.

use chrono::{DateTime, Utc};
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{DomainError, Permission};
use crate::values::{Actor, Role};

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
    /// The user chose a new password.
    ChangePassword {
        /// Who asks: only the user themself.
        actor: Actor,
        /// When.
        at: DateTime<Utc>,
    },
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
    /// The user's password changed; the new hash is in their account, not here.
    PasswordChanged {
        /// When.
        at: DateTime<Utc>,
    },
}

impl DomainEvent for UserEvent {
    fn event_type(&self) -> String {
        match self {
            Self::UserRegistered { .. } => "UserRegistered",
            Self::PasswordChanged { .. } => "PasswordChanged",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

/// A user, as the log knows them: who, and their role.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    id: Uuid,
    role: Option<Role>,
}

impl User {
    /// The role the user acts in, once they exist.
    pub fn role(&self) -> Option<Role> {
        self.role
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
            UserCommand::ChangePassword { actor, at } => {
                if self.role.is_none() {
                    return Err(DomainError::UserNotFound);
                }
                if actor.user_id != self.id {
                    return Err(Permission::OnlyTheUserMayChangeTheirPassword.into());
                }
                Ok(vec![UserEvent::PasswordChanged { at }])
            }
        }
    }
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
            UserEvent::UserRegistered { user_id, role, .. } => {
                self.id = user_id;
                self.role = Some(role);
            }
            UserEvent::PasswordChanged { .. } => {}
        }
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
}
