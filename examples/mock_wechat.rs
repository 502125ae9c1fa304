//! Runs the tests' `MockWechat` (`tests/support/mock_wechat.rs`) on a fixed port for load scripts and manual trials:
//!
//! ```text
//! cargo run --example mock_wechat -- [--port 9100] [--send-delay-ms 20]
//! KEFU_WECHAT_API_BASE=http://127.0.0.1:9100 kefu serve
//! ```
//!
//! It answers every API kefu uses with WeChat-shaped defaults; `--send-delay-ms` makes
//! `custom/send` take that long, like the real API under load. Stop it with Ctrl-C.

use std::net::SocketAddr;
use std::time::Duration;

#[path = "../tests/support/mock_wechat.rs"]
#[allow(dead_code)] // the example uses part of what the tests use
mod mock_wechat;

use mock_wechat::{MockResponse, MockWechat};

fn main() -> std::process::ExitCode {
    let mut port: u16 = 9100;
    let mut send_delay = Duration::ZERO;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let value = args.next();
        let parsed = match (a.as_str(), value.as_deref()) {
            ("--port", Some(v)) => v.parse().map(|p| port = p).is_ok(),
            ("--send-delay-ms", Some(v)) => {
                v.parse().map(|ms| send_delay = Duration::from_millis(ms)).is_ok()
            }
            _ => false,
        };
        if !parsed {
            eprintln!("usage: mock_wechat [--port PORT] [--send-delay-ms MS]");
            return std::process::ExitCode::from(2);
        }
    }
    let mock = match MockWechat::start_on(SocketAddr::from(([127, 0, 0, 1], port))) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("mock_wechat: cannot listen on 127.0.0.1:{port}: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    if !send_delay.is_zero() {
        mock.set_default("/cgi-bin/message/custom/send", MockResponse::ok().delayed(send_delay));
    }
    // Counters only: a long load run must not keep every request body in memory.
    mock.set_recording(false);
    println!("mock WeChat API listening on {}", mock.url());
    loop {
        std::thread::sleep(Duration::from_secs(60));
        println!(
            "requests so far: {} (custom/send {}, token fetches {})",
            mock.total_count(),
            mock.count("/cgi-bin/message/custom/send"),
            mock.token_fetches()
        );
    }
}
