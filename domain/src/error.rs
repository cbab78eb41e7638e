//! Typed reasons a value or a command can be refused.
//!
//! Every refusal is a variant rather than a string so that callers can map it
//! to a transport status (via [`ErrorKind`]) and tests can assert on it
//! exactly, while the `Display` text stays a sentence that is safe to show to
//! an API client.

use crate::booking::BookingStatus;
use crate::payment::PaymentStatus;
use crate::values::Money;

/// Why a piece of input could not become a domain value.
///
/// Carries the offending field's name so that an API can point the client at
/// the exact input to fix instead of returning a generic failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    /// Name of the input field that was rejected, as the client spelled it.
    pub field: String,
    /// Human explanation of what the field must look like.
    pub message: String,
}

impl ValidationError {
    /// Builds the error from any string-like pair so call sites stay short.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Coarse class of a refusal, so transports can choose a status code without
/// matching on every variant of [`DomainError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The input itself is malformed or out of range (HTTP 422).
    Invalid,
    /// The actor is not allowed to do this (HTTP 403).
    Forbidden,
    /// The thing the command targets does not exist (HTTP 404).
    NotFound,
    /// The command clashes with the current state (HTTP 409).
    Conflict,
}

/// The authorization rule an actor broke.
///
/// Naming the rule, rather than returning a bare "forbidden", tells both the
/// client and the reader of a test which policy was applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Permission {
    /// Auditors have read-only access and must not start conversations.
    #[error("auditors may not create chats")]
    AuditorsCannotCreateChats,
    /// Outsiders must not be able to pull people into a conversation.
    #[error("only members of the chat or admins may add members")]
    OnlyMembersMayAddMembers,
    /// People leave chats themselves; only admins may remove someone else.
    #[error("only the member themself or an admin may remove a member")]
    OnlyTheMemberOrAnAdminMayRemove,
    /// Only current participants speak in a chat, admins included.
    #[error("only members of the chat may send messages")]
    OnlyMembersMaySendMessages,
    /// Files are shared among the chat's participants only.
    #[error("only members of the chat may attach files")]
    OnlyMembersMayAttachFiles,
    /// Nobody may put words in another person's mouth.
    #[error("only the author of a message may edit it")]
    OnlyTheAuthorMayEdit,
    /// A former member no longer speaks in the chat, even to correct themself.
    #[error("only current members of the chat may edit their messages")]
    OnlyMembersMayEdit,
    /// Authors retract their own words; admins moderate.
    #[error("only the author of a message or an admin may delete it")]
    OnlyTheAuthorOrAnAdminMayDelete,
    /// Reminders of unread messages are Herald's to send.
    #[error("only Herald itself reminds members of unread messages")]
    OnlyHeraldReminds,
    /// Thumbnails are made by Herald from the stored bytes.
    #[error("only Herald itself records thumbnails")]
    OnlyHeraldRecordsThumbnails,
    /// Unused uploads are swept by Herald.
    #[error("only Herald itself gives up unused uploads")]
    OnlyHeraldExpiresAttachments,
    /// Read markers only make sense for participants.
    #[error("only members of the chat may mark messages as read")]
    OnlyMembersMayMarkRead,
    /// Visits are booked by the patient who will receive them.
    #[error("only patients may book visits")]
    OnlyPatientsMayBook,
    /// Assignment is an operator's or a doctor's decision.
    #[error("only admins or doctors may assign a doctor to a booking")]
    OnlyAdminsOrDoctorsMayAssign,
    /// A doctor may take a visit but not hand it to a colleague.
    #[error("doctors may only assign themselves to a booking")]
    DoctorsMayOnlyAssignThemselves,
    /// Only the doctor who made the visit can vouch that it happened.
    #[error("only the assigned doctor may complete the booking")]
    OnlyTheAssignedDoctorMayComplete,
    /// A booking belongs to its patient; admins handle exceptions.
    #[error("only the patient who booked the visit or an admin may cancel it")]
    OnlyThePatientOrAnAdminMayCancel,
    /// Patients pay for their own visits only.
    #[error("only the patient who booked the visit may pay for it")]
    OnlyThePatientMayPay,
    /// Returning money is an operator decision.
    #[error("only admins may request a refund")]
    OnlyAdminsMayRefund,
    /// Auditors oversee through the event log; visits are none of their
    /// business one by one.
    #[error("auditors read the event log, not bookings")]
    AuditorsReadTheLogNotBookings,
    /// Roles and access are the platform operators' to give and take.
    #[error("only admins may manage users")]
    OnlyAdminsManageUsers,
    /// Where notifications go outside Herald is the operators' to say.
    #[error("only admins manage webhooks")]
    OnlyAdminsManageIntegrations,
    /// Business figures (bookings, revenue, messages) are the operators'.
    #[error("only admins see the dashboard's business figures")]
    OnlyAdminsSeeBusinessFigures,
    /// The log's health is what auditors and operators answer for.
    #[error("only admins and auditors see the pipeline's health")]
    OnlyAdminsAndAuditorsSeeThePipeline,
    /// Applying set-aside events again changes read models: an operator's act.
    #[error("only admins may retry dead letters")]
    OnlyAdminsRetryDeadLetters,
    /// An admin who demotes or deactivates themself may leave nobody in charge.
    #[error("admins may not change their own role or deactivate themselves")]
    AdminsDoNotManageThemselves,
    /// What an account shows of a person is theirs to say.
    #[error("only the user themself may change their profile")]
    OnlyTheUserMayChangeTheirProfile,
    /// A password is known to its owner only.
    #[error("only the user themself may change their password")]
    OnlyTheUserMayChangeTheirPassword,
}

/// What a command tried to do to a booking, for transition errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BookingAction {
    /// Assigning a doctor.
    AssignDoctor,
    /// Completing the visit.
    Complete,
    /// Cancelling the visit.
    Cancel,
}

impl BookingAction {
    fn verb(self) -> &'static str {
        match self {
            Self::AssignDoctor => "assign a doctor to",
            Self::Complete => "complete",
            Self::Cancel => "cancel",
        }
    }
}

/// What a command tried to do to a payment, for transition errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PaymentAction {
    /// Confirming the payment as successful.
    Succeed,
    /// Asking for the money back.
    RequestRefund,
    /// Confirming the refund went through.
    CompleteRefund,
}

impl PaymentAction {
    fn verb(self) -> &'static str {
        match self {
            Self::Succeed => "confirm",
            Self::RequestRefund => "refund",
            Self::CompleteRefund => "complete a refund of",
        }
    }
}

fn describe_payment(status: PaymentStatus) -> &'static str {
    match status {
        PaymentStatus::Pending => "pending",
        PaymentStatus::Succeeded => "succeeded",
        PaymentStatus::Failed => "failed",
        PaymentStatus::RefundPending => "awaiting a refund",
        PaymentStatus::Refunded => "refunded",
    }
}

/// Every reason the domain refuses a command.
///
/// Variants are specific so callers and tests can tell refusals apart; the
/// `Display` text is written for API clients and never exposes internals.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// Some input failed validation.
    #[error("{0}")]
    Invalid(ValidationError),
    /// The actor is not allowed to do this.
    #[error("{0}")]
    Forbidden(Permission),

    /// The chat was never created.
    #[error("the chat does not exist")]
    ChatNotFound,
    /// Chat ids are chosen by the caller, so a retry or clash must be caught.
    #[error("a chat with this id already exists")]
    ChatAlreadyExists,
    /// The user to remove is not in the chat.
    #[error("the user is not a member of the chat")]
    NotAMember,
    /// The user to add is already in the chat.
    #[error("the user is already a member of the chat")]
    AlreadyAMember,
    /// A direct chat is a private line between exactly two people.
    #[error("the members of a direct chat cannot be changed")]
    DirectChatMembersAreFixed,
    /// No message with this id was sent in the chat.
    #[error("the message does not exist")]
    MessageNotFound,
    /// Message ids are chosen by the caller; reusing one would be ambiguous.
    #[error("a message with this id already exists")]
    MessageAlreadyExists,
    /// Attachment ids are Herald's to choose; one is announced once.
    #[error("an attachment with this id already exists")]
    AttachmentAlreadyExists,
    /// A message carries the attachment, so its bytes are kept.
    #[error("a message carries the attachment")]
    AttachmentInUse,
    /// A deleted message can be neither edited nor deleted again.
    #[error("the message has already been deleted")]
    MessageAlreadyDeleted,

    /// The booking was never requested.
    #[error("the booking does not exist")]
    BookingNotFound,
    /// Booking ids are chosen by the caller, so a retry or clash must be caught.
    #[error("a booking with this id already exists")]
    BookingAlreadyExists,
    /// The booking's status does not allow the requested step.
    #[error("cannot {} a booking that is {}", .action.verb(), .from.as_str())]
    BookingTransition {
        /// Status the booking was in.
        from: BookingStatus,
        /// Step that was attempted.
        action: BookingAction,
    },
    /// A visit is paid for once; a second payment would charge twice.
    #[error("the booking has already been paid")]
    BookingAlreadyPaid,
    /// Cancelled visits are not paid for.
    #[error("the booking has been cancelled")]
    BookingCancelled,
    /// A booking has one active payment at a time, so a patient who clicks
    /// "pay" twice is never charged twice; a failed payment frees the booking.
    #[error("a payment for this booking is already in progress")]
    PaymentInProgress,

    /// The payment was never initiated.
    #[error("the payment does not exist")]
    PaymentNotFound,
    /// Payment ids are chosen by the caller, so a retry or clash must be caught.
    #[error("a payment with this id already exists")]
    PaymentAlreadyExists,
    /// The payment's status does not allow the requested step.
    #[error("cannot {} a payment that is {}", .action.verb(), describe_payment(*.from))]
    PaymentTransition {
        /// Status the payment was in.
        from: PaymentStatus,
        /// Step that was attempted.
        action: PaymentAction,
    },
    /// The provider reported on a charge or refund that is not the one Herald
    /// asked it for. Which charge Herald expected is not said: it is not the
    /// sender's business.
    #[error("the notification is not about the charge Herald asked the provider for")]
    UnknownProviderCharge,
    /// The provider reported a different sum than the one we asked for.
    #[error("the amount paid does not match the amount due")]
    AmountMismatch {
        /// What the payment asked for.
        expected: Money,
        /// What the provider reported.
        received: Money,
    },

    /// No user has this id.
    #[error("the user does not exist")]
    UserNotFound,
    /// User ids are minted by Herald, so a clash is a retry or a bug.
    #[error("a user with this id already exists")]
    UserAlreadyExists,
    /// One account per e-mail address, whatever its case.
    #[error("an account with this e-mail address already exists")]
    EmailTaken,
}

impl DomainError {
    /// Classifies the refusal so transports can pick a status code.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Invalid(_) | Self::AmountMismatch { .. } | Self::UnknownProviderCharge => {
                ErrorKind::Invalid
            }
            Self::Forbidden(_) => ErrorKind::Forbidden,
            Self::ChatNotFound
            | Self::MessageNotFound
            | Self::BookingNotFound
            | Self::PaymentNotFound
            | Self::UserNotFound => ErrorKind::NotFound,
            Self::ChatAlreadyExists
            | Self::NotAMember
            | Self::AlreadyAMember
            | Self::DirectChatMembersAreFixed
            | Self::MessageAlreadyExists
            | Self::AttachmentAlreadyExists
            | Self::AttachmentInUse
            | Self::MessageAlreadyDeleted
            | Self::BookingAlreadyExists
            | Self::BookingTransition { .. }
            | Self::BookingAlreadyPaid
            | Self::BookingCancelled
            | Self::PaymentInProgress
            | Self::PaymentAlreadyExists
            | Self::PaymentTransition { .. }
            | Self::UserAlreadyExists
            | Self::EmailTaken => ErrorKind::Conflict,
        }
    }

    /// The field-level detail, when the refusal is about one input field, so
    /// an API can report which field to fix.
    pub fn validation(&self) -> Option<&ValidationError> {
        match self {
            Self::Invalid(error) => Some(error),
            _ => None,
        }
    }
}

impl From<ValidationError> for DomainError {
    fn from(error: ValidationError) -> Self {
        Self::Invalid(error)
    }
}

impl From<Permission> for DomainError {
    fn from(permission: Permission) -> Self {
        Self::Forbidden(permission)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_of_refusal_maps_to_its_class() {
        let invalid = DomainError::Invalid(ValidationError::new("body", "must not be empty"));
        assert_eq!(invalid.kind(), ErrorKind::Invalid);
        assert_eq!(
            DomainError::Forbidden(Permission::OnlyPatientsMayBook).kind(),
            ErrorKind::Forbidden
        );
        assert_eq!(DomainError::ChatNotFound.kind(), ErrorKind::NotFound);
        assert_eq!(DomainError::BookingAlreadyPaid.kind(), ErrorKind::Conflict);
    }

    #[test]
    fn only_validation_failures_expose_a_field() {
        let invalid = DomainError::Invalid(ValidationError::new("body", "must not be empty"));
        assert_eq!(invalid.validation().map(|v| v.field.as_str()), Some("body"));
        assert_eq!(DomainError::ChatNotFound.validation(), None);
    }

    #[test]
    fn refusals_read_as_sentences_for_clients() {
        assert_eq!(
            DomainError::Invalid(ValidationError::new("body", "must not be empty")).to_string(),
            "body: must not be empty"
        );
        assert_eq!(
            DomainError::Forbidden(Permission::OnlyPatientsMayBook).to_string(),
            "only patients may book visits"
        );
        assert_eq!(
            DomainError::BookingTransition {
                from: BookingStatus::Completed,
                action: BookingAction::Cancel
            }
            .to_string(),
            "cannot cancel a booking that is completed"
        );
        assert_eq!(
            DomainError::PaymentTransition {
                from: PaymentStatus::RefundPending,
                action: PaymentAction::RequestRefund
            }
            .to_string(),
            "cannot refund a payment that is awaiting a refund"
        );
    }
}
