//! Upgrade requests pass through: a WebSocket echo through sluice, admitted
//! by the shaper like any request, then tunneled.

use std::time::Duration;

use crate::common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

/// A WebSocket echo server on 127.0.0.1; returns its address.
async fn echo_server() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(message)) = ws.next().await {
                    if (message.is_text() || message.is_binary()) && ws.send(message).await.is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_echoes_through_sluice() {
    let backend = echo_server().await;
    let config = config(&[backend]);
    let sluice = TestSluice::start(&config).await;
    let stream = tokio::net::TcpStream::connect(sluice.proxy_addr())
        .await
        .unwrap();
    let url = format!("ws://{}/chat", sluice.proxy_addr());
    let (mut ws, response) = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_tungstenite::client_async(url, stream),
    )
    .await
    .expect("handshake in time")
    .expect("handshake succeeds");
    assert_eq!(response.status(), http::StatusCode::SWITCHING_PROTOCOLS);
    for i in 0..3 {
        ws.send(Message::text(format!("hello {i}"))).await.unwrap();
        let echoed = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("echo in time")
            .unwrap()
            .unwrap();
        assert_eq!(echoed, Message::text(format!("hello {i}")));
    }
    ws.close(None).await.unwrap();
    // The upgrade was admitted and counted like any request.
    let client = client();
    let counted = outcomes(&client, sluice.admin_addr(), "main").await;
    assert_eq!(counted.get("forwarded"), Some(&1), "{counted:?}");
}
