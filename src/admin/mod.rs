//! The admin dashboard at `/admin`: one HTML page, a stylesheet and a
//! script, compiled into the binary (no build step, nothing from a CDN).
//! The page itself is public; everything it shows comes from the admin
//! REST API with the key the operator signs in with.

use actix_web::http::header;
use actix_web::{web, HttpResponse};

const INDEX: &str = include_str!("index.html");
const SCRIPT: &str = include_str!("app.js");
const STYLE: &str = include_str!("app.css");

/// Registers `/admin`, `/admin/`, `/admin/app.js` and `/admin/app.css`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/admin", web::get().to(index))
        .route("/admin/", web::get().to(index))
        .route("/admin/app.js", web::get().to(script))
        .route("/admin/app.css", web::get().to(style));
}

/// Only this server's own scripts, styles and API; never framed.
fn asset(content_type: &str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
        ))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(body)
}

async fn index() -> HttpResponse {
    asset("text/html; charset=utf-8", INDEX)
}

async fn script() -> HttpResponse {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

async fn style() -> HttpResponse {
    asset("text/css; charset=utf-8", STYLE)
}
