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

use crate::error::DomainError;
use crate::values::Role;

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
}

impl DomainEvent for UserEvent {
    fn event_type(&self) -> String {
        match self {
            Self::UserRegistered { .. } => "UserRegistered",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

/// A user, as the log knows them: their role.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
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
            UserEvent::UserRegistered { role, .. } => self.role = Some(role),
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
}
