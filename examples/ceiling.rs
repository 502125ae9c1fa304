//! The ceiling for the load scenario (`scripts/load.sh`): the smallest actix-web server, which
//! answers every POST with `success` and does nothing else. It is built like `kefu serve` (a
//! multi-thread tokio runtime driving `HttpServer` with its default worker count, one per
//! available CPU), so the ratio kefu / ceiling measures what the push path costs, not how the
//! server is set up.
//!
//! ```text
//! cargo run --release --example ceiling -- [--port 9311]
//! ```

use std::net::SocketAddr;

use actix_web::{App, HttpResponse, HttpServer, web};

async fn success(_body: web::Bytes) -> HttpResponse {
    // Reading the body (as kefu does) keeps the comparison honest for the larger safe-mode posts.
    HttpResponse::Ok().content_type("text/plain; charset=utf-8").body("success")
}

fn main() -> std::process::ExitCode {
    let mut port: u16 = 9311;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let parsed = match (a.as_str(), args.next()) {
            ("--port", Some(v)) => v.parse().map(|p| port = p).is_ok(),
            _ => false,
        };
        if !parsed {
            eprintln!("usage: ceiling [--port PORT]");
            return std::process::ExitCode::from(2);
        }
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ceiling: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let served = rt.block_on(async move {
        let server = HttpServer::new(|| App::new().default_service(web::post().to(success)))
            .bind(addr)?
            .run();
        let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        println!("ceiling listening on http://{addr} ({workers} workers, actix default)");
        server.await
    });
    match served {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ceiling: cannot serve on {addr}: {e}");
            std::process::ExitCode::from(1)
        }
    }
}
