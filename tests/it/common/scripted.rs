//! A backend on a raw socket whose every answer a test scripts byte for
//! byte: for what hyper-based backends cannot say (interim responses,
//! trailers, bodies without a length, a close in the middle of a body).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the backend does after writing an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum After {
    /// Waits for the next request on the connection.
    KeepOpen,
    /// Closes the connection (without saying so in the answer).
    Close,
    /// Echoes whatever comes next until the peer closes (a tunnel).
    Echo,
}

/// One scripted answer.
#[derive(Clone, Debug)]
pub struct Reply {
    pub bytes: Vec<u8>,
    pub after: After,
}

impl Reply {
    pub fn keep(bytes: &[u8]) -> Reply {
        Reply {
            bytes: bytes.to_vec(),
            after: After::KeepOpen,
        }
    }

    pub fn close(bytes: &[u8]) -> Reply {
        Reply {
            bytes: bytes.to_vec(),
            after: After::Close,
        }
    }

    pub fn echo(bytes: &[u8]) -> Reply {
        Reply {
            bytes: bytes.to_vec(),
            after: After::Echo,
        }
    }
}

type Script = Arc<dyn Fn(usize, &str) -> Reply + Send + Sync>;

/// A raw backend: `script(n, head)` answers its `n`th request (from 0,
/// over all connections), given the request head as text.
pub struct ScriptedBackend {
    pub addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl ScriptedBackend {
    pub async fn start(script: impl Fn(usize, &str) -> Reply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let script: Script = Arc::new(script);
        let (count, done, seen) = (connections.clone(), closed.clone(), requests.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let (script, seen, done) = (script.clone(), seen.clone(), done.clone());
                tokio::spawn(async move {
                    serve(stream, script, seen).await;
                    done.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        ScriptedBackend {
            addr,
            connections,
            closed,
            requests,
            task,
        }
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Waits (at most 5 s) until the backend has closed `n` connections.
    pub async fn closed(&self, n: usize) {
        let waited = tokio::time::timeout(Duration::from_secs(5), async {
            while self.closed.load(Ordering::SeqCst) < n {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await;
        assert!(waited.is_ok(), "the backend closed {n} connections");
    }

    /// The request heads (and bodies) received so far, as text.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for ScriptedBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(mut stream: TcpStream, script: Script, seen: Arc<Mutex<Vec<String>>>) {
    let mut buf = Vec::new();
    loop {
        let Some(end) = read_until(&mut stream, &mut buf, b"\r\n\r\n").await else {
            return;
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        let lower = head.to_ascii_lowercase();
        let mut request = head.clone();
        if let Some(len) = lower
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
        {
            while buf.len() < len {
                if !read_more(&mut stream, &mut buf).await {
                    return;
                }
            }
            request.push_str(&String::from_utf8_lossy(&buf[..len]));
            buf.drain(..len);
        } else if lower.contains("transfer-encoding: chunked") {
            let Some(end) = read_until(&mut stream, &mut buf, b"0\r\n\r\n").await else {
                return;
            };
            request.push_str(&String::from_utf8_lossy(&buf[..end]));
            buf.drain(..end);
        }
        let reply = {
            let mut seen = seen.lock().unwrap();
            seen.push(request);
            script(seen.len() - 1, &head)
        };
        if stream.write_all(&reply.bytes).await.is_err() {
            return;
        }
        match reply.after {
            After::KeepOpen => {}
            After::Close => return,
            After::Echo => {
                if !buf.is_empty() && stream.write_all(&buf).await.is_err() {
                    return;
                }
                let mut chunk = [0u8; 4096];
                while let Ok(Ok(n)) =
                    tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk)).await
                {
                    if n == 0 || stream.write_all(&chunk[..n]).await.is_err() {
                        return;
                    }
                }
                return;
            }
        }
    }
}

/// Reads until `buf` holds `marker`; the index just past it.
async fn read_until(stream: &mut TcpStream, buf: &mut Vec<u8>, marker: &[u8]) -> Option<usize> {
    loop {
        if let Some(at) = buf.windows(marker.len()).position(|w| w == marker) {
            return Some(at + marker.len());
        }
        if !read_more(stream, buf).await {
            return None;
        }
    }
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 4096];
    match stream.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}
