//! Value types shared by the aggregates.
//!
//! Each type can only be built through a fallible constructor, so holding one
//! is proof that its rules were checked. String-backed types deserialize
//! through the same constructor, which means events read back from the store
//! are re-validated instead of trusted.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use crate::error::ValidationError;

/// Largest amount, in minor units, that a single charge may carry; anything
/// bigger is a typo or an attack rather than a home visit.
const MAX_AMOUNT_MINOR: i64 = 1_000_000_000_000;

/// Who someone is in Herald, which decides what they may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Receives care, books and pays for visits.
    Patient,
    /// Performs visits and talks to patients.
    Doctor,
    /// Operates the platform and may override most rules.
    Admin,
    /// Has read-only oversight and must not change anything.
    Auditor,
    /// Herald itself, acting from process managers and webhooks; never issued
    /// to a person.
    System,
}

impl Role {
    /// Stable lowercase name, matching the serialized form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Patient => "patient",
            Self::Doctor => "doctor",
            Self::Admin => "admin",
            Self::Auditor => "auditor",
            Self::System => "system",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Parses a role claimed by a token. `system` is refused so that no token can
/// grant Herald's own internal authority.
impl FromStr for Role {
    type Err = ValidationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "patient" => Ok(Self::Patient),
            "doctor" => Ok(Self::Doctor),
            "admin" => Ok(Self::Admin),
            "auditor" => Ok(Self::Auditor),
            _ => Err(ValidationError::new(
                "role",
                "must be one of patient, doctor, admin, auditor",
            )),
        }
    }
}

/// The authenticated party behind a command, so decisions can apply
/// ownership and role rules without looking anything up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Actor {
    /// The user's id; nil for [`Actor::system`].
    pub user_id: Uuid,
    /// The role the user acts in.
    pub role: Role,
}

impl Actor {
    /// Pairs a user with the role they act in.
    pub fn new(user_id: Uuid, role: Role) -> Self {
        Self { user_id, role }
    }

    /// Herald itself, for commands issued by process managers and webhooks
    /// rather than by a person.
    pub fn system() -> Self {
        Self {
            user_id: Uuid::nil(),
            role: Role::System,
        }
    }

    /// Whether the actor may override ownership rules; Herald's own actor
    /// counts, since it acts on already-authorized facts.
    pub fn is_admin(&self) -> bool {
        matches!(self.role, Role::Admin | Role::System)
    }
}

/// An ISO 4217 currency code, so amounts are never mixed across currencies
/// by accident.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency(String);

impl Currency {
    /// Accepts exactly three uppercase ASCII letters, the shape of an ISO
    /// 4217 code.
    pub fn parse(code: &str) -> Result<Self, ValidationError> {
        if code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase()) {
            Ok(Self(code.to_owned()))
        } else {
            Err(ValidationError::new(
                "currency",
                "must be a three-letter uppercase ISO 4217 code",
            ))
        }
    }

    /// A currency Herald takes new prices and charges in: one its payment
    /// provider settles. Stored events keep whatever valid code they hold.
    pub fn accept(code: &str) -> Result<Self, ValidationError> {
        let currency = Self::parse(code)?;
        if Self::SUPPORTED.contains(&code) {
            Ok(currency)
        } else {
            Err(ValidationError::new(
                "currency",
                format!("must be one of {}", Self::SUPPORTED.join(", ")),
            ))
        }
    }

    /// The currencies the payment provider settles in.
    pub const SUPPORTED: [&'static str; 3] = ["RUB", "USD", "EUR"];

    /// Russian rouble, the currency Herald bills in by default.
    pub fn rub() -> Self {
        Self("RUB".to_owned())
    }

    /// The code as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for Currency {
    fn default() -> Self {
        Self::rub()
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for Currency {
    type Error = ValidationError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<Currency> for String {
    fn from(value: Currency) -> Self {
        value.0
    }
}

/// A positive sum in minor units (kopecks, cents), kept as an integer so no
/// rounding ever creeps into what patients are charged.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "RawMoney", into = "RawMoney")]
pub struct Money {
    amount_minor: i64,
    currency: Currency,
}

/// Wire shape of [`Money`], validated on the way in.
#[derive(Serialize, Deserialize)]
struct RawMoney {
    amount_minor: i64,
    currency: Currency,
}

impl Money {
    /// Accepts amounts above zero and no larger than 10^12 minor units: a
    /// charge of nothing is meaningless and an enormous one is a mistake.
    pub fn new(amount_minor: i64, currency: Currency) -> Result<Self, ValidationError> {
        if amount_minor <= 0 {
            return Err(ValidationError::new("amount_minor", "must be positive"));
        }
        if amount_minor > MAX_AMOUNT_MINOR {
            return Err(ValidationError::new(
                "amount_minor",
                format!("must be at most {MAX_AMOUNT_MINOR}"),
            ));
        }
        Ok(Self {
            amount_minor,
            currency,
        })
    }

    /// The sum in minor units.
    pub fn amount_minor(&self) -> i64 {
        self.amount_minor
    }

    /// The currency the sum is in.
    pub fn currency(&self) -> &Currency {
        &self.currency
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.amount_minor, self.currency)
    }
}

impl TryFrom<RawMoney> for Money {
    type Error = ValidationError;

    fn try_from(raw: RawMoney) -> Result<Self, Self::Error> {
        Self::new(raw.amount_minor, raw.currency)
    }
}

impl From<Money> for RawMoney {
    fn from(money: Money) -> Self {
        Self {
            amount_minor: money.amount_minor,
            currency: money.currency,
        }
    }
}

/// Whether `c` shows nothing: white space, or a format character such as a
/// zero-width space or joiner, a word joiner or a byte-order mark. A text of
/// only these is as blank as an empty one.
fn is_invisible(c: char) -> bool {
    c.is_whitespace()
        || matches!(
            c,
            '\u{00AD}'
                | '\u{180E}'
                | '\u{200B}'..='\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2060}'..='\u{2064}'
                | '\u{FEFF}'
        )
}

/// Checks a text's length in characters after trimming, the length a person
/// would perceive.
fn check_text(raw: &str, field: &'static str, max_chars: usize) -> Result<(), ValidationError> {
    let trimmed = raw.trim();
    if trimmed.chars().all(is_invisible) {
        return Err(ValidationError::new(field, "must not be empty"));
    }
    if raw.contains('\0') {
        return Err(ValidationError::new(
            field,
            "must not contain the NUL character (U+0000)",
        ));
    }
    if trimmed.chars().count() > max_chars {
        return Err(ValidationError::new(
            field,
            format!("must be at most {max_chars} characters"),
        ));
    }
    Ok(())
}

/// Declares a string-backed value type whose serde form goes through `parse`.
macro_rules! text_value {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// The validated text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl TryFrom<String> for $name {
            type Error = ValidationError;

            fn try_from(value: String) -> Result<Self, Self::Error> {
                Self::parse(value)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> Self {
                value.0
            }
        }
    };
}
pub(crate) use text_value;

text_value!(
    /// Where a doctor should go for a home visit.
    Address
);

impl Address {
    /// Accepts 1 to 500 characters once surrounding whitespace is dropped,
    /// and stores the trimmed text so stray spaces never reach a doctor's
    /// route.
    pub fn parse(raw: impl Into<String>) -> Result<Self, ValidationError> {
        let raw = raw.into();
        check_text(&raw, "address", 500)?;
        Ok(Self(raw.trim().to_owned()))
    }
}

text_value!(
    /// The text of a chat message.
    MessageBody
);

impl MessageBody {
    /// Accepts 1 to 4000 characters once surrounding whitespace is ignored,
    /// but keeps the text exactly as written, since leading indentation or
    /// trailing newlines can be part of what the author meant.
    pub fn parse(raw: impl Into<String>) -> Result<Self, ValidationError> {
        let raw = raw.into();
        check_text(&raw, "body", 4000)?;
        Ok(Self(raw))
    }
}

text_value!(
    /// The name of a group chat.
    ChatTitle
);

impl ChatTitle {
    /// Accepts 1 to 200 characters once surrounding whitespace is dropped,
    /// and stores the trimmed text so titles list cleanly.
    pub fn parse(raw: impl Into<String>) -> Result<Self, ValidationError> {
        let raw = raw.into();
        check_text(&raw, "title", 200)?;
        Ok(Self(raw.trim().to_owned()))
    }
}

text_value!(
    /// Why someone cancelled or refunded something, kept for the audit trail.
    Reason
);

impl Reason {
    /// Accepts 1 to 500 characters once surrounding whitespace is dropped,
    /// and stores the trimmed text.
    pub fn parse(raw: impl Into<String>) -> Result<Self, ValidationError> {
        let raw = raw.into();
        check_text(&raw, "reason", 500)?;
        Ok(Self(raw.trim().to_owned()))
    }
}

text_value!(
    /// An e-mail address someone signs in with. Compared without regard to
    /// case, as people type it.
    Email
);

impl Email {
    /// Accepts `local@domain` of at most 254 characters once surrounding
    /// whitespace is dropped: one `@`, something on both sides, a dot in the
    /// domain, and no spaces or control characters.
    pub fn parse(raw: impl Into<String>) -> Result<Self, ValidationError> {
        let raw = raw.into();
        let email = raw.trim();
        let shaped = email.chars().count() <= 254
            && !email.chars().any(|c| c.is_whitespace() || c.is_control())
            && email.split_once('@').is_some_and(|(local, domain)| {
                !local.is_empty()
                    && !domain.contains('@')
                    && domain.split('.').count() >= 2
                    && domain.split('.').all(|label| !label.is_empty())
            });
        if !shaped {
            return Err(ValidationError::new(
                "email",
                "must be an e-mail address such as anna@example.com",
            ));
        }
        Ok(Self(email.to_owned()))
    }
}

text_value!(
    /// What a person is called, as they want to be shown.
    PersonName
);

impl PersonName {
    /// Accepts 1 to 200 characters once surrounding whitespace is dropped,
    /// and stores the trimmed text.
    pub fn parse(raw: impl Into<String>) -> Result<Self, ValidationError> {
        let raw = raw.into();
        check_text(&raw, "name", 200)?;
        Ok(Self(raw.trim().to_owned()))
    }
}

text_value!(
    /// What a doctor practises, as patients see it.
    Specialty
);

impl Specialty {
    /// Accepts 1 to 100 characters once surrounding whitespace is dropped,
    /// and stores the trimmed text.
    pub fn parse(raw: impl Into<String>) -> Result<Self, ValidationError> {
        let raw = raw.into();
        check_text(&raw, "specialty", 100)?;
        Ok(Self(raw.trim().to_owned()))
    }
}

text_value!(
    /// A doctor's short introduction of themself.
    Bio
);

impl Bio {
    /// Accepts 1 to 1000 characters once surrounding whitespace is dropped,
    /// and stores the trimmed text.
    pub fn parse(raw: impl Into<String>) -> Result<Self, ValidationError> {
        let raw = raw.into();
        check_text(&raw, "bio", 1000)?;
        Ok(Self(raw.trim().to_owned()))
    }
}

text_value!(
    /// A telephone number in international form, `+` and its digits.
    Phone
);

impl Phone {
    /// Accepts `+` and 7 to 15 digits (E.164), with spaces, dashes, dots and
    /// brackets between them as people write them; stores `+` and the digits.
    pub fn parse(raw: impl Into<String>) -> Result<Self, ValidationError> {
        let raw = raw.into();
        let refused = || {
            ValidationError::new(
                "phone",
                "must be + and 7 to 15 digits, such as +7 916 123-45-67",
            )
        };
        let rest = raw.trim().strip_prefix('+').ok_or_else(refused)?;
        if !rest
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, ' ' | '-' | '.' | '(' | ')'))
        {
            return Err(refused());
        }
        let digits: String = rest.chars().filter(char::is_ascii_digit).collect();
        if !(7..=15).contains(&digits.len()) {
            return Err(refused());
        }
        Ok(Self(format!("+{digits}")))
    }
}

/// Passwords so common that they are the first ones tried.
const COMMON_PASSWORDS: &[&str] = &[
    "12345678",
    "123456789",
    "1234567890",
    "password",
    "password1",
    "password123",
    "qwerty123",
    "qwertyuiop",
    "11111111",
    "00000000",
    "iloveyou",
    "abc12345",
    "12341234",
    "87654321",
    "11223344",
    "sunshine",
    "princess",
    "football",
    "baseball",
    "welcome1",
    "letmein1",
    "passw0rd",
    "1q2w3e4r",
    "1qaz2wsx",
    "qwerty12",
    "asdfghjk",
    "zaq12wsx",
    "superman",
    "trustno1",
    "admin123",
];

/// A password as chosen, before it is hashed. It is neither printed nor
/// serialized: it lives only as long as the request that carries it.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    /// Accepts 8 to 128 characters that are not among the most common
    /// passwords, compared without regard to case.
    pub fn parse(raw: impl Into<String>) -> Result<Self, ValidationError> {
        let raw = raw.into();
        let length = raw.chars().count();
        if !(8..=128).contains(&length) {
            return Err(ValidationError::new(
                "password",
                "must be 8 to 128 characters",
            ));
        }
        if raw.contains('\0') {
            return Err(ValidationError::new(
                "password",
                "must not contain the NUL character (U+0000)",
            ));
        }
        let lower = raw.to_lowercase();
        if COMMON_PASSWORDS.contains(&lower.as_str()) {
            return Err(ValidationError::new(
                "password",
                "is one of the most common passwords; choose another",
            ));
        }
        Ok(Self(raw))
    }

    /// The password, for hashing or checking against a hash.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(…)")
    }
}

/// Declares a closed set of names with `as_str` and `FromStr`; each name is
/// its variant's in snake case, as it is serialized.
macro_rules! name_enum {
    (
        $(#[$doc:meta])* $name:ident, field = $field:literal,
        { $($(#[$vdoc:meta])* $variant:ident => $text:literal),+ $(,)? }
    ) => {
        $(#[$doc])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
            utoipa::ToSchema,
        )]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $($(#[$vdoc])* $variant),+
        }

        impl $name {
            /// Every one, in declaration order.
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            /// Stable lowercase name, matching the serialized form.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text),+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = ValidationError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok(Self::$variant),)+
                    _ => Err(ValidationError::new(
                        $field,
                        concat!("must be one of", $(" ", $text),+),
                    )),
                }
            }
        }
    };
}

name_enum!(
    /// How soon and why a doctor is needed, which drives scheduling rules.
    CallType, field = "call_type", {
        /// As soon as possible.
        Urgent => "urgent",
        /// At an agreed future time.
        Scheduled => "scheduled",
        /// A consultation without a fixed slot.
        Consultation => "consultation",
    }
);

name_enum!(
    /// Whether a chat is a fixed one-to-one line or an open group.
    ChatKind, field = "kind", {
        /// Exactly two people; membership never changes.
        Direct => "direct",
        /// Any number of people who can come and go.
        Group => "group",
    }
);

name_enum!(
    /// How a patient pays, which decides the provider flow.
    PaymentMethod, field = "method", {
        /// Bank card.
        Card => "card",
        /// Russia's Faster Payments System.
        Sbp => "sbp",
    }
);

name_enum!(
    /// What a notification tells its recipient about.
    NotificationKind, field = "kind", {
        /// A new booking waits for a doctor (to doctors and admins).
        BookingRequested => "booking_requested",
        /// A doctor took the patient's booking.
        BookingAssigned => "booking_assigned",
        /// The visit is done.
        BookingCompleted => "booking_completed",
        /// The booking was cancelled (to its patient and its doctor).
        BookingCancelled => "booking_cancelled",
        /// The patient's payment went through.
        PaymentSucceeded => "payment_succeeded",
        /// The patient's payment was declined.
        PaymentFailed => "payment_failed",
        /// The patient's money was returned.
        PaymentRefunded => "payment_refunded",
        /// Messages in a chat went unread for a while.
        ChatMessages => "chat_messages",
    }
);

impl NotificationKind {
    /// One line that names what happened, for every way a notification is
    /// shown or sent. It never carries the details (a message's text, a
    /// cancellation's reason, an address): those are seen only in the app,
    /// by those allowed to see them.
    pub fn summary(self) -> &'static str {
        match self {
            Self::BookingRequested => "A new booking is waiting for a doctor",
            Self::BookingAssigned => "A doctor was assigned to your visit",
            Self::BookingCompleted => "Your visit was completed",
            Self::BookingCancelled => "A visit was cancelled",
            Self::PaymentSucceeded => "Your payment went through",
            Self::PaymentFailed => "Your payment was declined",
            Self::PaymentRefunded => "Your payment was refunded",
            Self::ChatMessages => "You have new messages in a chat",
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn field_of<T: fmt::Debug>(result: Result<T, ValidationError>) -> String {
        result.unwrap_err().field
    }

    #[test]
    fn roles_from_tokens_exclude_the_system_role() {
        assert_eq!("patient".parse::<Role>().unwrap(), Role::Patient);
        assert_eq!("doctor".parse::<Role>().unwrap(), Role::Doctor);
        assert_eq!("admin".parse::<Role>().unwrap(), Role::Admin);
        assert_eq!("auditor".parse::<Role>().unwrap(), Role::Auditor);
        assert_eq!(field_of("system".parse::<Role>()), "role");
        assert_eq!(field_of("Admin".parse::<Role>()), "role");
    }

    #[test]
    fn the_system_actor_counts_as_admin_but_auditors_do_not() {
        assert!(Actor::system().is_admin());
        assert_eq!(Actor::system().user_id, Uuid::nil());
        assert!(Actor::new(Uuid::from_u128(1), Role::Admin).is_admin());
        assert!(!Actor::new(Uuid::from_u128(1), Role::Auditor).is_admin());
        assert!(!Actor::new(Uuid::from_u128(1), Role::Doctor).is_admin());
    }

    #[test]
    fn currency_must_be_three_uppercase_letters() {
        assert_eq!(Currency::parse("USD").unwrap().as_str(), "USD");
        assert_eq!(Currency::default(), Currency::rub());
        for bad in ["", "us", "usd", "USDT", "U5D", "ЕВР"] {
            assert_eq!(field_of(Currency::parse(bad)), "currency", "{bad}");
        }
    }

    #[test]
    fn money_must_be_positive_and_bounded() {
        let max = Money::new(MAX_AMOUNT_MINOR, Currency::rub()).unwrap();
        assert_eq!(max.amount_minor(), MAX_AMOUNT_MINOR);
        assert_eq!(max.currency(), &Currency::rub());
        assert!(Money::new(1, Currency::rub()).is_ok());
        for bad in [0, -1, MAX_AMOUNT_MINOR + 1] {
            assert_eq!(field_of(Money::new(bad, Currency::rub())), "amount_minor");
        }
    }

    #[test]
    fn money_serializes_flat_and_revalidates_on_load() {
        let money = Money::new(150_000, Currency::rub()).unwrap();
        let json = serde_json::to_value(&money).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"amount_minor": 150_000, "currency": "RUB"})
        );
        assert_eq!(serde_json::from_value::<Money>(json).unwrap(), money);
        let negative = serde_json::json!({"amount_minor": -5, "currency": "RUB"});
        assert!(serde_json::from_value::<Money>(negative).is_err());
        let lowercase = serde_json::json!({"amount_minor": 5, "currency": "rub"});
        assert!(serde_json::from_value::<Money>(lowercase).is_err());
    }

    #[test]
    fn every_notification_kind_has_a_summary_of_one_short_plain_line() {
        let mut seen = std::collections::BTreeSet::new();
        for kind in NotificationKind::ALL {
            let summary = kind.summary();
            assert!(seen.insert(summary), "{kind} shares its summary");
            assert!(summary.len() <= 60, "{kind}: {summary}");
            assert!(summary.is_ascii() && !summary.contains('\n'), "{kind}");
        }
    }

    #[test]
    fn address_allows_500_characters_after_trimming_and_stores_them_trimmed() {
        let at_limit = "я".repeat(500);
        let address = Address::parse(format!("  {at_limit}\n")).unwrap();
        assert_eq!(address.as_str(), at_limit);
        assert_eq!(field_of(Address::parse("я".repeat(501))), "address");
        assert_eq!(field_of(Address::parse(" \t\n ")), "address");
        assert_eq!(field_of(Address::parse("")), "address");
    }

    #[test]
    fn texts_of_only_invisible_characters_are_blank_and_nul_is_refused() {
        for blank in ["\u{200B}", " \u{200D}\u{FEFF} ", "\u{2060}\n"] {
            assert_eq!(
                MessageBody::parse(blank).unwrap_err(),
                ValidationError::new("body", "must not be empty"),
                "{blank:?}"
            );
            assert_eq!(field_of(Address::parse(blank)), "address");
        }
        assert_eq!(
            MessageBody::parse("a\0b").unwrap_err(),
            ValidationError::new("body", "must not contain the NUL character (U+0000)")
        );
        assert!(MessageBody::parse("a\u{200D}b").is_ok());
    }

    #[test]
    fn new_prices_take_only_the_currencies_the_provider_settles() {
        assert_eq!(Currency::accept("RUB").unwrap(), Currency::rub());
        for unsupported in ["XXX", "BTC"] {
            assert!(Currency::parse(unsupported).is_ok());
            assert_eq!(field_of(Currency::accept(unsupported)), "currency");
        }
    }

    #[test]
    fn message_body_allows_4000_characters_after_trimming_and_keeps_them_verbatim() {
        let at_limit = format!("\n  {}  \n", "ж".repeat(4000));
        assert_eq!(
            MessageBody::parse(at_limit.clone()).unwrap().as_str(),
            at_limit
        );
        assert_eq!(field_of(MessageBody::parse("ж".repeat(4001))), "body");
        assert_eq!(field_of(MessageBody::parse("   ")), "body");
        assert_eq!(MessageBody::parse(" hi ").unwrap().to_string(), " hi ");
    }

    #[test]
    fn chat_title_allows_200_characters_after_trimming() {
        assert_eq!(ChatTitle::parse(" Team ").unwrap().as_str(), "Team");
        assert!(ChatTitle::parse("t".repeat(200)).is_ok());
        assert_eq!(field_of(ChatTitle::parse("t".repeat(201))), "title");
        assert_eq!(field_of(ChatTitle::parse(" ")), "title");
    }

    #[test]
    fn reason_allows_500_characters_after_trimming() {
        assert_eq!(Reason::parse(" ill ").unwrap().as_str(), "ill");
        assert!(Reason::parse("r".repeat(500)).is_ok());
        assert_eq!(field_of(Reason::parse("r".repeat(501))), "reason");
        assert_eq!(field_of(Reason::parse("")), "reason");
    }

    #[test]
    fn stored_text_is_revalidated_on_load() {
        let body: MessageBody = serde_json::from_str("\" hello \"").unwrap();
        assert_eq!(body.as_str(), " hello ");
        assert!(serde_json::from_str::<MessageBody>("\"  \"").is_err());
        assert!(serde_json::from_str::<Address>("\"\"").is_err());
        assert!(serde_json::from_str::<Currency>("\"rub\"").is_err());
    }

    #[test]
    fn closed_name_sets_parse_their_lowercase_names_only() {
        assert_eq!(
            "scheduled".parse::<CallType>().unwrap(),
            CallType::Scheduled
        );
        assert_eq!(CallType::Consultation.as_str(), "consultation");
        assert_eq!(field_of("later".parse::<CallType>()), "call_type");
        assert_eq!("group".parse::<ChatKind>().unwrap(), ChatKind::Group);
        assert_eq!(field_of("Group".parse::<ChatKind>()), "kind");
        assert_eq!("sbp".parse::<PaymentMethod>().unwrap(), PaymentMethod::Sbp);
        assert_eq!(field_of("cash".parse::<PaymentMethod>()), "method");
        assert_eq!(
            serde_json::to_string(&PaymentMethod::Card).unwrap(),
            "\"card\""
        );
    }

    #[test]
    fn e_mail_addresses_need_one_at_and_a_dotted_domain() {
        assert_eq!(
            Email::parse("  Anna@Example.com ").unwrap().as_str(),
            "Anna@Example.com"
        );
        for refused in [
            "anna",
            "@example.com",
            "anna@",
            "anna@example",
            "a b@c.d",
            "a@b@c.d",
            "a@b..c",
        ] {
            assert_eq!(field_of(Email::parse(refused)), "email", "{refused}");
        }
    }

    #[test]
    fn phones_keep_plus_and_their_digits() {
        assert_eq!(
            Phone::parse("+7 (916) 123-45-67").unwrap().as_str(),
            "+79161234567"
        );
        for refused in ["79161234567", "+7 916", "+7916123456712345", "+7 916 ABC"] {
            assert_eq!(field_of(Phone::parse(refused)), "phone", "{refused}");
        }
    }

    #[test]
    fn passwords_are_8_to_128_characters_and_not_the_most_common_ones() {
        assert!(Password::parse("correct horse").is_ok());
        for refused in ["short", "Password1", "12345678", &"x".repeat(129)] {
            assert_eq!(field_of(Password::parse(refused)), "password", "{refused}");
        }
        assert_eq!(
            format!("{:?}", Password::parse("correct horse").unwrap()),
            "Password(…)"
        );
    }
}
