//! Both listeners bound what a client can hold: a request head must arrive within
//! `header_read_timeout` (which also ends idle keep-alive connections), and connections beyond
//! `max_connections` are closed at once and counted. Slow clients are cut while hooks keep
//! answering and typing keeps going. The hook listener, on a thread of its own, answers while the
//! engine's runtime is busy.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::helpers::*;

const HALF_A_HEADER: &[u8] = b"POST /v1/typing/start HTTP/1.1\r\nHost: keeptyping\r\nContent-Ty";

/// Opens `n` connections to `addr` that each send half a request header and then nothing.
async fn slow_clients(addr: &str, n: usize) -> Vec<TcpStream> {
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        let mut c = TcpStream::connect(addr).await.unwrap();
        // A refused connection may already be closed: the write may fail, which is fine.
        let _ = c.write_all(HALF_A_HEADER).await;
        conns.push(c);
    }
    conns
}

/// Whether the server closed `conn` (EOF or reset) within `within`.
async fn closed_within(conn: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 512];
    let deadline = Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            // A 408 or 400 answer before the close is fine; keep reading to the close.
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn slow_clients_are_cut_and_counted_while_hooks_answer_and_typing_goes_on() {
    // Arrange: a short header timeout and a cap of 100 hook connections; a chat typing.
    let app = spawn_with(
        Opts::default()
            .env("KEEPTYPING__SERVER__HEADER_READ_TIMEOUT", "1s")
            .env("KEEPTYPING__SERVER__MAX_CONNECTIONS", "100")
            .env("KEEPTYPING__ADMIN__HEADER_READ_TIMEOUT", "1s")
            .env("KEEPTYPING__ADMIN__MAX_CONNECTIONS", "20"),
    )
    .await;
    assert_eq!(app.start("95001").await.0, 200);
    let refused =
        |t: &str, l: &str| metric_value(t, "keeptyping_connections_refused_total", &format!("listener=\"{l}\""));
    let before = app.metrics().await;
    let hook_addr = app.hook.trim_start_matches("http://").to_owned();
    let admin_addr = app.admin.trim_start_matches("http://").to_owned();

    // Act: 200 clients send half a header to the hook port, 40 to the admin port.
    let attack_started = app.now_ms();
    let mut hooks = slow_clients(&hook_addr, 200).await;
    let mut admin = slow_clients(&admin_addr, 40).await;

    // Assert: every one of them is closed within the header timeout (plus slack) ...
    let t = Instant::now();
    for (i, conn) in hooks.iter_mut().chain(admin.iter_mut()).enumerate() {
        let left = Duration::from_secs(3).saturating_sub(t.elapsed());
        assert!(closed_within(conn, left).await, "slow connection {i} still open after {:?}", t.elapsed());
    }
    // ... those beyond the caps at once, and counted per listener.
    let after = app.metrics().await;
    assert!(refused(&after, "hooks") - refused(&before, "hooks") >= 90.0, "hooks refusals not counted");
    assert!(refused(&after, "admin") - refused(&before, "admin") >= 15.0, "admin refusals not counted");
    // Hooks answer (the test client's kept-alive connection or a new one) and the admin port too.
    assert_eq!(app.start("95002").await.0, 200);
    assert_eq!(app.admin_status("/readyz").await, 200);
    // Typing went on throughout: the chat kept its cadence during the attack.
    let during: Vec<f64> =
        app.calls("95001").iter().map(|r| r.t_ms).filter(|t| *t > attack_started && *t < app.now_ms()).collect();
    assert!(during.len() >= 3, "typing stalled during the attack: {during:?}");
    assert!(gaps(&app.calls("95001")).iter().all(|g| *g < LIFETIME_MS as f64), "{:?}", gaps(&app.calls("95001")));
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_header_read_timeout() {
    let app = spawn_with(Opts::default().env("KEEPTYPING__SERVER__HEADER_READ_TIMEOUT", "500ms")).await;
    let mut conn = TcpStream::connect(app.hook.trim_start_matches("http://")).await.unwrap();
    // One complete request on a kept-alive connection, then silence.
    conn.write_all(b"GET /openapi.json HTTP/1.1\r\nHost: keeptyping\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let n = conn.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let idle_from = Instant::now();

    let closed = closed_within(&mut conn, Duration::from_secs(3)).await;

    assert!(closed, "an idle kept-alive connection stayed open");
    assert!(idle_from.elapsed() >= Duration::from_millis(400), "closed too early: {:?}", idle_from.elapsed());
}

/// Sends one start for `chat` to `addr` over a blocking socket and returns the whole answer.
fn blocking_start(addr: &str, chat: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let body = chat_body(chat).to_string();
    let mut conn = std::net::TcpStream::connect(addr)?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        conn,
        "POST /v1/typing/start HTTP/1.1\r\nHost: keeptyping\r\nAuthorization: Bearer {HOOK_TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut answer = String::new();
    conn.read_to_string(&mut answer)?;
    Ok(answer)
}

/// Hooks do not wait for the runtime that runs the engine: a start is answered while every
/// worker of that runtime is busy. Here the runtime is this test's single thread, held by a
/// blocking wait that only the answer ends.
#[tokio::test]
async fn a_start_is_answered_while_the_engine_runtime_is_busy() {
    // Arrange
    let app = spawn_app().await;
    assert_eq!(app.start("2001").await.1["outcome"], "started");
    let addr = app.hook.trim_start_matches("http://").to_owned();
    let (tx, rx) = std::sync::mpsc::channel();
    let client = std::thread::spawn(move || {
        let _ = tx.send(blocking_start(&addr, "2002"));
    });

    // Act: hold the engine's runtime until the answer arrives (or the bound runs out).
    let answer = rx.recv_timeout(Duration::from_secs(10));
    client.join().unwrap();

    // Assert
    let answer = answer.expect("no answer to a start while the engine's runtime was busy").unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"started\""), "{answer}");
    assert_eq!(app.engine.active_count(), 2);
    // The hook listener's thread stops with the service.
    let (_, stopped, _) = app.trigger_shutdown().await;
    stopped.unwrap();
}
