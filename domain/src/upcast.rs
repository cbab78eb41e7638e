//! Schema evolution: stored events keep the shape they were written in, and
//! every reader brings older shapes up to the current one through these pure
//! functions, so the write side, the read models and the auditors' views of an
//! aggregate all agree on what an old event means.
//!
//! An event's shape is named by its `event_version`. The one older shape so far:
//! `BookingRequested` version `"0"` carried the price as a bare integer `amount`
//! in kopecks, with no currency (every price was in roubles); version `"1"`
//! carries `price: { amount_minor, currency }`.

use serde_json::{Map, Value};

/// The version every event is written in today.
pub const CURRENT_VERSION: &str = "1";

/// Whether a stored event of `event_type` at `event_version` is in an older
/// shape that [`upcast`] rewrites.
pub fn is_outdated(event_type: &str, event_version: &str) -> bool {
    event_type == "BookingRequested" && event_version == "0"
}

/// The payload of a stored event in the current shape. Payloads already
/// current, or not in the shape their version promises, are returned as they
/// are, so decoding them reports what is wrong.
pub fn upcast(event_type: &str, event_version: &str, payload: Value) -> Value {
    if !is_outdated(event_type, event_version) {
        return payload;
    }
    booking_requested_v0_to_v1(payload)
}

/// A stored event decoded into its domain type, brought up to the current
/// shape first: the one way every reader of the log decodes an event, so an
/// upcaster added here reaches them all.
pub fn decode<E: serde::de::DeserializeOwned>(
    event_type: &str,
    event_version: &str,
    payload: Value,
) -> Result<E, serde_json::Error> {
    serde_json::from_value(upcast(event_type, event_version, payload))
}

/// [`decode`] of a payload as the JSON text it is stored as: an event in the
/// current shape is read straight into its type, without building a
/// [`Value`] first.
pub fn decode_text<E: serde::de::DeserializeOwned>(
    event_type: &str,
    event_version: &str,
    payload: &str,
) -> Result<E, serde_json::Error> {
    if is_outdated(event_type, event_version) {
        decode(event_type, event_version, serde_json::from_str(payload)?)
    } else {
        serde_json::from_str(payload)
    }
}

/// `{"BookingRequested": {.., "amount": 150000}}` becomes
/// `{"BookingRequested": {.., "price": {"amount_minor": 150000, "currency": "RUB"}}}`.
fn booking_requested_v0_to_v1(mut payload: Value) -> Value {
    let Some(fields) = payload
        .get_mut("BookingRequested")
        .and_then(Value::as_object_mut)
    else {
        return payload;
    };
    let Some(amount) = fields.remove("amount") else {
        return payload;
    };
    let mut price = Map::new();
    price.insert("amount_minor".to_owned(), amount);
    price.insert("currency".to_owned(), Value::from("RUB"));
    fields.insert("price".to_owned(), Value::Object(price));
    payload
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::booking::BookingEvent;
    use serde_json::json;

    fn v0() -> Value {
        json!({"BookingRequested": {
            "booking_id": "00000000-0000-0000-0000-000000000001",
            "patient_id": "00000000-0000-0000-0000-000000000002",
            "call_type": "urgent",
            "address": "Tverskaya 1, Moscow",
            "amount": 150000,
            "scheduled_at": null,
            "requested_at": "2025-01-01T10:00:00Z"
        }})
    }

    #[test]
    fn a_version_0_booking_request_decodes_as_a_rouble_price_after_upcasting() {
        assert!(serde_json::from_value::<BookingEvent>(v0()).is_err());
        let upcast = upcast("BookingRequested", "0", v0());
        let BookingEvent::BookingRequested { price, .. } =
            serde_json::from_value::<BookingEvent>(upcast).unwrap()
        else {
            panic!("not a BookingRequested");
        };
        assert_eq!(price.amount_minor(), 150_000);
        assert_eq!(price.currency().as_str(), "RUB");
    }

    #[test]
    fn current_events_and_other_types_pass_through_unchanged() {
        assert_eq!(upcast("BookingRequested", "1", v0()), v0());
        assert_eq!(upcast("DoctorAssigned", "0", v0()), v0());
    }

    #[test]
    fn decoding_the_stored_text_agrees_with_decoding_the_value() {
        let text = v0().to_string();
        let from_text: BookingEvent = decode_text("BookingRequested", "0", &text).unwrap();
        let from_value: BookingEvent = decode("BookingRequested", "0", v0()).unwrap();
        assert_eq!(from_text, from_value);
        assert!(decode_text::<BookingEvent>("BookingRequested", "1", &text).is_err());
    }
}
