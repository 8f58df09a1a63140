//! HTTP requests by route and status, for `GET /metrics`: a middleware
//! that counts each answered request under its route pattern (never its
//! raw path, which would grow without bound).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::LazyLock;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use parking_lot::Mutex;

/// Requests by (route pattern, status).
static REQUESTS: LazyLock<Mutex<HashMap<(String, u16), u64>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// The middleware (`App::wrap(from_fn(count))`).
pub async fn count(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let response = next.call(req).await?;
    let route = response
        .request()
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_owned());
    let status = response.status().as_u16();
    *REQUESTS.lock().entry((route, status)).or_insert(0) += 1;
    Ok(response)
}

/// Appends `realtime_http_requests_total{route, status}`.
pub fn render(out: &mut String) {
    let mut counts: Vec<((String, u16), u64)> = REQUESTS
        .lock()
        .iter()
        .map(|(key, count)| (key.clone(), *count))
        .collect();
    counts.sort_unstable();
    let _ = writeln!(
        out,
        "# HELP realtime_http_requests_total HTTP requests answered, by route pattern and status.\n# TYPE realtime_http_requests_total counter"
    );
    for ((route, status), count) in counts {
        let route = route.replace('\\', "\\\\").replace('"', "\\\"");
        let _ = writeln!(
            out,
            "realtime_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {count}"
        );
    }
}
