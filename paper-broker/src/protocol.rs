//! The JSON dialect spoken over `/ws` (documented in the crate's README). Every frame is
//! a text frame holding one object with a `type`.

use serde::{Deserialize, Serialize};

/// Fixed reasons an order is rejected for.
pub const REJECT_REASONS: [&str; 5] = [
    "insufficient_funds",
    "market_closed",
    "invalid_symbol",
    "risk_limit",
    "rate_limited",
];

/// What a client sends.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    Auth {
        key: String,
        secret: String,
    },
    Subscribe {
        symbols: Vec<String>,
    },
    Order {
        client_order_id: String,
        symbol: String,
        side: String,
        order_type: String,
        quantity: String,
        #[serde(default)]
        limit_price: Option<String>,
    },
}

/// What the server sends.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    Hello {
        server: String,
        protocol: u32,
    },
    AuthOk,
    Subscribed {
        symbols: Vec<String>,
    },
    Tick {
        symbol: String,
        price: f64,
        /// Unix milliseconds.
        ts: u64,
    },
    Ack {
        client_order_id: String,
        broker_order_id: String,
    },
    Fill {
        client_order_id: String,
        broker_order_id: String,
        price: f64,
        quantity: String,
    },
    Reject {
        client_order_id: String,
        reason: String,
    },
    Error {
        code: String,
        message: String,
    },
}

/// Error codes of [`ServerMessage::Error`].
pub mod codes {
    pub const BAD_REQUEST: &str = "bad_request";
    pub const UNKNOWN_TYPE: &str = "unknown_type";
    pub const NOT_AUTHENTICATED: &str = "not_authenticated";
    pub const AUTH_FAILED: &str = "auth_failed";
    pub const INVALID_SYMBOL: &str = "invalid_symbol";
}

/// A symbol the simulator accepts: 1-10 uppercase letters, digits or dots.
pub fn valid_symbol(s: &str) -> bool {
    (1..=10).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_as_tagged_json() {
        let m = ServerMessage::Tick {
            symbol: "AAPL".into(),
            price: 1.5,
            ts: 7,
        };
        let text = serde_json::to_string(&m).unwrap();
        assert_eq!(
            text,
            r#"{"type":"tick","symbol":"AAPL","price":1.5,"ts":7}"#
        );
        assert_eq!(serde_json::from_str::<ServerMessage>(&text).unwrap(), m);
        let auth: ClientMessage =
            serde_json::from_str(r#"{"type":"auth","key":"k","secret":"s"}"#).unwrap();
        assert_eq!(
            auth,
            ClientMessage::Auth {
                key: "k".into(),
                secret: "s".into()
            }
        );
    }

    #[test]
    fn symbols() {
        assert!(valid_symbol("AAPL"));
        assert!(valid_symbol("BRK.B"));
        assert!(!valid_symbol("aapl"));
        assert!(!valid_symbol("A B"));
        assert!(!valid_symbol(""));
    }
}
