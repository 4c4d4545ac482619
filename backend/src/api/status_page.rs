//! `GET /health/ui`: the details snapshot as one self-contained HTML page for people.
//! Server-rendered from the same body `/health/details` serves, so the two never disagree;
//! no scripts, no external assets (the Content-Security-Policy forbids both). The page
//! reloads itself every health-check interval. Protected exactly like `/health/details`,
//! and answers with the same status code (503 when the overall status is fail).

use std::fmt::Write;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

use super::AppState;
use super::health::{details_body, details_refusal, status_code};

pub async fn page(State(state): State<AppState>, request: Request) -> Response {
    if let Some(refused) = details_refusal(&state, &request) {
        return refused;
    }
    let (status, body) = details_body(&state.health);
    let refresh_seconds = state.health.settings().interval.as_secs().max(1);
    let html = render(&body, refresh_seconds);
    let mut response = (status_code(status), html).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'"),
    );
    response
}

/// Members of a check entry shown in their own columns; every other member goes to
/// "details".
const COLUMNS: [&str; 8] = [
    "componentId",
    "componentType",
    "status",
    "observedValue",
    "observedUnit",
    "critical",
    "time",
    "output",
];

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}\
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.35em .6em;\
border-bottom:1px solid #ddd;vertical-align:top}th{background:#f4f4f4}\
.badge{display:inline-block;padding:.1em .6em;border-radius:.3em;color:#fff;font-weight:600}\
.pass .badge,.badge.pass{background:#2e7d32}.warn .badge,.badge.warn{background:#b26a00}\
.fail .badge,.badge.fail{background:#c62828}tr.warn{background:#fff8e1}tr.fail{background:#ffebee}\
.meta{color:#555}code{font-size:12px}";

/// The page for a details body (the `/health/details` JSON object).
fn render(body: &Map<String, Value>, refresh_seconds: u64) -> String {
    let text = |key: &str| body.get(key).map(plain).unwrap_or_default();
    let status = text("status");
    let mut html = String::with_capacity(8 * 1024);
    let _ = write!(
        html,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{refresh_seconds}\">\
         <title>{status} · backend health</title><style>{STYLE}</style></head><body>\
         <h1><span class=\"badge {status}\">{status}</span> {description}</h1>\
         <p class=\"meta\">version {version} · release {release} · service {service} · \
         refreshes every {refresh_seconds}s</p>",
        status = escape(&status),
        description = escape(&text("description")),
        version = escape(&text("version")),
        release = escape(&text("releaseId")),
        service = escape(&text("serviceId")),
    );
    if let Some(Value::Array(notes)) = body.get("notes") {
        let notes: Vec<String> = notes.iter().map(|n| escape(&plain(n))).collect();
        let _ = write!(html, "<p class=\"meta\">{}</p>", notes.join(" · "));
    }
    if let Some(output) = body.get("output") {
        let _ = write!(html, "<p><strong>{}</strong></p>", escape(&plain(output)));
    }
    html.push_str(
        "<table><thead><tr><th>check</th><th>component</th><th>status</th>\
         <th>observed</th><th>critical</th><th>measured</th><th>output</th><th>details</th>\
         </tr></thead><tbody>",
    );
    let empty = Map::new();
    let checks = match body.get("checks") {
        Some(Value::Object(checks)) => checks,
        _ => &empty,
    };
    for (key, entries) in checks {
        let Value::Array(entries) = entries else {
            continue;
        };
        for entry in entries.iter().filter_map(Value::as_object) {
            render_row(&mut html, key, entry);
        }
    }
    if checks.is_empty() {
        html.push_str("<tr><td colspan=\"8\">no round of checks has completed yet</td></tr>");
    }
    html.push_str("</tbody></table></body></html>\n");
    html
}

fn render_row(html: &mut String, key: &str, entry: &Map<String, Value>) {
    let field = |name: &str| entry.get(name).map(plain).unwrap_or_default();
    let status = escape(&field("status"));
    let component = match entry.get("componentId") {
        Some(id) => format!("{} ({})", plain(id), field("componentType")),
        None => field("componentType"),
    };
    let observed = match (entry.get("observedValue"), entry.get("observedUnit")) {
        (Some(value), Some(unit)) => format!("{} {}", plain(value), plain(unit)),
        (Some(value), None) => plain(value),
        _ => String::new(),
    };
    let critical = match entry.get("critical") {
        Some(Value::Bool(true)) => "yes",
        Some(Value::Bool(false)) => "no",
        _ => "",
    };
    let details: Vec<String> = entry
        .iter()
        .filter(|(name, _)| !COLUMNS.contains(&name.as_str()))
        .map(|(name, value)| format!("{name}={}", plain(value)))
        .collect();
    let _ = write!(
        html,
        "<tr class=\"{status}\"><td>{key}</td><td>{component}</td>\
         <td><span class=\"badge\">{status}</span></td><td>{observed}</td><td>{critical}</td>\
         <td>{time}</td><td>{output}</td><td><code>{details}</code></td></tr>",
        key = escape(key),
        component = escape(&component),
        observed = escape(&observed),
        time = escape(&field("time")),
        output = escape(&field("output")),
        details = escape(&details.join(" ")),
    );
}

/// A JSON value as text: strings without their quotes, everything else as JSON.
fn plain(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Escapes text for HTML element content and double-quoted attribute values.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn error_text_is_escaped_and_extra_fields_are_listed() {
        let body = json!({
            "status": "fail",
            "description": "health details",
            "checks": {
                "broker:connection": [{
                    "componentId": "paper",
                    "componentType": "component",
                    "status": "fail",
                    "observedValue": 3,
                    "observedUnit": "s",
                    "critical": true,
                    "output": "<script>alert(1)</script> & \"quoted\"",
                    "reconnects": 2
                }]
            }
        });
        let html = render(body.as_object().unwrap(), 5);
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt; &amp; &quot;quoted&quot;"));
        assert!(!html.contains("<script>"));
        assert!(
            html.contains(
                "<tr class=\"fail\"><td>broker:connection</td><td>paper (component)</td>"
            )
        );
        assert!(html.contains("<td>3 s</td><td>yes</td>"));
        assert!(html.contains("<code>reconnects=2</code>"));
        assert!(html.contains("content=\"5\""));
    }
}
