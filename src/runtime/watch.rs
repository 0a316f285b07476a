//! Noticing that the config file changed, so the running process can reload it.
//!
//! The file's directory is watched (editors and config managers often replace
//! a file by renaming a new one over it), events for other files are ignored,
//! and a burst of events becomes one reload after a short settling delay.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// Events closer together than this make one reload.
const SETTLE: Duration = Duration::from_millis(200);

/// Watches one config file. Keep it alive for as long as changes matter.
pub struct FileWatch {
    _watcher: RecommendedWatcher,
    changes: mpsc::Receiver<()>,
}

impl FileWatch {
    pub fn new(path: &Path) -> notify::Result<FileWatch> {
        let file: PathBuf = path.file_name().map(PathBuf::from).unwrap_or_default();
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let (tx, changes) = mpsc::channel(1);
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let relevant = match event {
                    Ok(event) => {
                        !event.kind.is_access()
                            && event
                                .paths
                                .iter()
                                .any(|p| p.file_name() == Some(file.as_os_str()))
                    }
                    Err(_) => true, // let the reload find out what is wrong
                };
                if relevant {
                    // A full channel already holds a pending change.
                    let _pending = tx.try_send(());
                }
            })?;
        watcher.watch(&dir, RecursiveMode::NonRecursive)?;
        Ok(FileWatch {
            _watcher: watcher,
            changes,
        })
    }

    /// Resolves after the file changed and then stayed quiet for a moment.
    pub async fn changed(&mut self) {
        if self.changes.recv().await.is_none() {
            std::future::pending::<()>().await;
        }
        loop {
            tokio::time::sleep(SETTLE).await;
            if self.changes.try_recv().is_err() {
                return;
            }
        }
    }
}
