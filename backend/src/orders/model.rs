//! Orders as validated values: a request is parsed into [`NewOrder`] (every field checked,
//! errors naming the field) before anything is stored; [`Order`] is a stored row.

use serde::Serialize;
use serde_json::Value;

/// Largest quantity one order may carry.
const MAX_QUANTITY: f64 = 1_000_000.0;
/// Largest limit price accepted.
const MAX_PRICE: f64 = 10_000_000.0;
/// Decimal places kept by the database (`NUMERIC(20, 8)`).
const MAX_DECIMALS: usize = 8;

/// A field that failed validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: &'static str,
    pub problem: String,
}

fn field_error(field: &'static str, problem: impl Into<String>) -> FieldError {
    FieldError {
        field,
        problem: problem.into(),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Buy,
    Sell,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Buy => "buy",
            Side::Sell => "sell",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OrderType {
    Market,
    Limit,
}

impl OrderType {
    pub fn as_str(self) -> &'static str {
        match self {
            OrderType::Market => "market",
            OrderType::Limit => "limit",
        }
    }
}

/// A positive decimal with at most 8 decimals, kept as its canonical text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decimal(String);

impl Decimal {
    fn parse(field: &'static str, value: &Value, max: f64) -> Result<Self, FieldError> {
        let text = match value {
            Value::String(s) => s.trim().to_owned(),
            Value::Number(n) => n.to_string(),
            _ => return Err(field_error(field, "must be a number or a decimal string")),
        };
        let (int, frac) = text.split_once('.').unwrap_or((&text, ""));
        let well_formed = !int.is_empty()
            && int.chars().all(|c| c.is_ascii_digit())
            && frac.chars().all(|c| c.is_ascii_digit())
            && !(text.contains('.') && frac.is_empty());
        if !well_formed {
            return Err(field_error(
                field,
                format!("{text:?} is not a positive decimal number"),
            ));
        }
        if frac.len() > MAX_DECIMALS {
            return Err(field_error(
                field,
                format!("at most {MAX_DECIMALS} decimal places"),
            ));
        }
        let number: f64 = text
            .parse()
            .map_err(|_| field_error(field, "not a number"))?;
        if number <= 0.0 {
            return Err(field_error(field, "must be greater than 0"));
        }
        if number > max {
            return Err(field_error(field, format!("must be at most {max}")));
        }
        // Canonical: no leading zeros, no trailing fractional zeros.
        let int = int.trim_start_matches('0');
        let frac = frac.trim_end_matches('0');
        let int = if int.is_empty() { "0" } else { int };
        Ok(Self(if frac.is_empty() {
            int.to_owned()
        } else {
            format!("{int}.{frac}")
        }))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A validated order request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewOrder {
    pub client_order_id: String,
    pub broker: String,
    pub symbol: String,
    pub side: Side,
    pub order_type: OrderType,
    pub quantity: Decimal,
    pub limit_price: Option<Decimal>,
}

fn text<'a>(
    body: &'a serde_json::Map<String, Value>,
    field: &'static str,
) -> Result<&'a str, FieldError> {
    match body.get(field) {
        Some(Value::String(s)) => Ok(s.as_str()),
        None | Some(Value::Null) => Err(field_error(field, "is required")),
        Some(_) => Err(field_error(field, "must be a string")),
    }
}

impl NewOrder {
    /// Parses a JSON body. `brokers` are the configured broker names.
    pub fn parse(body: &Value, brokers: &[&str]) -> Result<Self, FieldError> {
        let Some(body) = body.as_object() else {
            return Err(field_error("body", "must be a JSON object"));
        };
        let known = [
            "client_order_id",
            "broker",
            "symbol",
            "side",
            "type",
            "quantity",
            "limit_price",
        ];
        if let Some(unknown) = body.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(FieldError {
                field: "body",
                problem: format!("unknown field {unknown:?}"),
            });
        }

        let client_order_id = text(body, "client_order_id")?;
        let id_ok = (1..=64).contains(&client_order_id.len())
            && client_order_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
        if !id_ok {
            return Err(field_error(
                "client_order_id",
                "must be 1-64 characters of A-Z, a-z, 0-9, -, _, ., :",
            ));
        }

        let broker = text(body, "broker")?;
        if !brokers.contains(&broker) {
            return Err(field_error(
                "broker",
                format!("unknown broker {broker:?}; configured: {brokers:?}"),
            ));
        }

        let symbol = text(body, "symbol")?;
        if !paper_broker::protocol::valid_symbol(symbol) {
            return Err(field_error(
                "symbol",
                "must be 1-10 characters of A-Z, 0-9 or .",
            ));
        }

        let side = match text(body, "side")? {
            "buy" => Side::Buy,
            "sell" => Side::Sell,
            other => return Err(field_error("side", format!("{other:?} is not buy or sell"))),
        };
        let order_type = match text(body, "type")? {
            "market" => OrderType::Market,
            "limit" => OrderType::Limit,
            other => {
                return Err(field_error(
                    "type",
                    format!("{other:?} is not market or limit"),
                ));
            }
        };

        let quantity = match body.get("quantity") {
            None | Some(Value::Null) => return Err(field_error("quantity", "is required")),
            Some(v) => Decimal::parse("quantity", v, MAX_QUANTITY)?,
        };
        let limit_price = match (order_type, body.get("limit_price")) {
            (OrderType::Limit, None | Some(Value::Null)) => {
                return Err(field_error("limit_price", "is required for limit orders"));
            }
            (OrderType::Limit, Some(v)) => Some(Decimal::parse("limit_price", v, MAX_PRICE)?),
            (OrderType::Market, None | Some(Value::Null)) => None,
            (OrderType::Market, Some(_)) => {
                return Err(field_error(
                    "limit_price",
                    "must be absent for market orders",
                ));
            }
        };
        Ok(Self {
            client_order_id: client_order_id.to_owned(),
            broker: broker.to_owned(),
            symbol: symbol.to_owned(),
            side,
            order_type,
            quantity,
            limit_price,
        })
    }
}

/// Reasons an order ends rejected (a fixed set: metric label values).
pub const REJECT_REASONS: [&str; 8] = [
    "insufficient_funds",
    "market_closed",
    "invalid_symbol",
    "risk_limit",
    "rate_limited",
    "broker_unavailable",
    "ack_timeout",
    "other",
];

/// Maps a broker's reason onto the fixed set.
pub fn reject_reason(raw: &str) -> &'static str {
    REJECT_REASONS
        .iter()
        .copied()
        .find(|r| *r == raw)
        .unwrap_or("other")
}

/// A stored order, as the API returns it.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct Order {
    pub id: String,
    pub client_order_id: String,
    pub broker: String,
    pub symbol: String,
    pub side: String,
    #[serde(rename = "type")]
    pub order_type: String,
    pub quantity: String,
    pub limit_price: Option<String>,
    pub status: String,
    pub reject_reason: Option<String>,
    pub broker_order_id: Option<String>,
    pub filled_quantity: Option<String>,
    pub fill_price: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

impl Order {
    /// Whether `new` describes the same order (an idempotent retry).
    pub fn same_request(&self, new: &NewOrder) -> bool {
        self.broker == new.broker
            && self.symbol == new.symbol
            && self.side == new.side.as_str()
            && self.order_type == new.order_type.as_str()
            && self.quantity == new.quantity.as_str()
            && self.limit_price.as_deref() == new.limit_price.as_ref().map(Decimal::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<NewOrder, FieldError> {
        NewOrder::parse(&v, &["paper"])
    }

    fn market() -> Value {
        json!({"client_order_id": "c-1", "broker": "paper", "symbol": "AAPL", "side": "buy", "type": "market", "quantity": 10})
    }

    fn field_of(v: Value) -> &'static str {
        parse(v).unwrap_err().field
    }

    #[test]
    fn a_valid_market_order_parses() {
        let o = parse(market()).unwrap();
        assert_eq!(o.quantity.as_str(), "10");
        assert_eq!(o.limit_price, None);
    }

    #[test]
    fn every_bad_field_is_named() {
        let with = |k: &str, v: Value| {
            let mut m = market();
            m[k] = v;
            m
        };
        assert_eq!(field_of(with("quantity", json!(-5))), "quantity");
        assert_eq!(field_of(with("quantity", json!("0"))), "quantity");
        assert_eq!(field_of(with("quantity", json!("1e3"))), "quantity");
        assert_eq!(field_of(with("quantity", json!("0.000000001"))), "quantity");
        assert_eq!(field_of(with("quantity", json!(2_000_000))), "quantity");
        assert_eq!(field_of(with("broker", json!("alpaca"))), "broker");
        assert_eq!(field_of(with("symbol", json!("AA PL"))), "symbol");
        assert_eq!(field_of(with("side", json!("hold"))), "side");
        assert_eq!(field_of(with("type", json!("stop"))), "type");
        assert_eq!(
            field_of(with("client_order_id", json!("has space"))),
            "client_order_id"
        );
        assert_eq!(field_of(with("limit_price", json!("10"))), "limit_price");
        assert_eq!(field_of(with("type", json!("limit"))), "limit_price");
        assert_eq!(field_of(with("extra", json!(1))), "body");
        assert_eq!(field_of(json!([1, 2])), "body");
    }

    #[test]
    fn decimals_are_canonical() {
        let mut m = market();
        m["quantity"] = json!("007.50");
        assert_eq!(parse(m).unwrap().quantity.as_str(), "7.5");
        let mut l = market();
        l["type"] = json!("limit");
        l["limit_price"] = json!(187.25);
        assert_eq!(parse(l).unwrap().limit_price.unwrap().as_str(), "187.25");
    }

    #[test]
    fn reasons_map_onto_the_fixed_set() {
        assert_eq!(reject_reason("risk_limit"), "risk_limit");
        assert_eq!(reject_reason("solar flare"), "other");
    }
}
