//! `sluice demo` as a user runs it: the real binary, a short run, stdout not a
//! terminal (so the live view is plain lines), then the report's numbers and
//! the SVG chart checked.
//!
//! The bound on the released peak: the report's peaks are the most requests
//! in any 1 s window (sliding by 100 ms), so the route's GCRA limiter
//! releases at most `rate x 1 s + burst` in one; the backend counts arrivals
//! a moment after release, so the test allows 10% of the rate on top for
//! timing: `released_peak <= rate * 1.1 + burst`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// The run must end by itself well within this.
const LIMIT: Duration = Duration::from_secs(60);

/// The text after `key` on the report line that starts with it.
fn line<'a>(stdout: &'a str, key: &str) -> &'a str {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no line starting {key:?} in:\n{stdout}"))
}

/// The first whole number in `text`.
fn first_number(text: &str) -> u64 {
    let digits: String = text
        .chars()
        .skip_while(|c| !c.is_ascii_digit())
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no number in {text:?}"))
}

/// Runs `sluice demo` with `args`, killing it past LIMIT; returns its exit
/// status, stdout, stderr and how long it took.
fn run_demo(args: &[&str], out: &Path) -> (std::process::ExitStatus, String, String, Duration) {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("demo")
        .args(args)
        .arg("--out")
        .arg(out)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the sluice binary starts");
    let read = |mut pipe: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut text = String::new();
            pipe.read_to_string(&mut text).expect("utf-8 output");
            text
        })
    };
    let stdout = read(Box::new(child.stdout.take().unwrap()));
    let stderr = read(Box::new(child.stderr.take().unwrap()));
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > LIMIT {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!(
                "sluice demo still running after {LIMIT:?}; stdout:\n{}",
                stdout.join().unwrap()
            );
        }
        thread::sleep(Duration::from_millis(50));
    };
    let elapsed = started.elapsed();
    (
        status,
        stdout.join().unwrap(),
        stderr.join().unwrap(),
        elapsed,
    )
}

fn demo_config() -> sluice::Config {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/demo.toml");
    sluice::Config::load(&path).unwrap()
}

fn out_path(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("demo");
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join(name);
    let _ = std::fs::remove_file(&out);
    out
}

#[test]
fn a_short_demo_shapes_the_spike_and_writes_a_valid_chart() {
    let out = out_path("demo.svg");
    let (status, stdout, stderr, elapsed) = run_demo(&["--duration", "6s"], &out);
    assert!(
        status.success(),
        "{status}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(elapsed < LIMIT, "took {elapsed:?}");
    println!("{stdout}");
    eprintln!("sluice demo --duration 6s took {elapsed:?}");

    // Not a terminal: plain lines, no progress bar redraws or colours.
    assert!(
        !stdout.contains('\r') && !stdout.contains('\x1b'),
        "{stdout:?}"
    );
    let live_lines = stdout.lines().filter(|l| l.starts_with("t=")).count();
    assert!(live_lines >= 5, "expected a live line a second:\n{stdout}");

    // The report's numbers agree with each other and with the config.
    let config = demo_config();
    let route = config.routes.iter().find(|r| r.name == "demo").unwrap();
    let limit = route.limit.unwrap();
    let (rate, burst) = (limit.rate, f64::from(limit.burst.get()));

    let offered_peak = first_number(line(&stdout, "offered peak:")) as f64;
    let released_peak = first_number(line(&stdout, "released peak:")) as f64;
    assert!(
        released_peak <= rate * 1.1 + burst,
        "released peak {released_peak}/s above {rate}/s x 1.1 + burst {burst}:\n{stdout}"
    );
    assert!(
        offered_peak >= rate * 3.0,
        "the spike should be far above the rate ({rate}/s):\n{stdout}"
    );

    // "outcomes: N offered = N ok (200) + N shed (503) + N limited (429) + N failed"
    let outcomes = line(&stdout, "outcomes:");
    let (offered, ends) = outcomes.split_once('=').unwrap();
    let offered = first_number(offered);
    let ends: Vec<u64> = ends.split('+').map(first_number).collect();
    assert_eq!(ends.len(), 4, "{outcomes}");
    let (ok, shed, failed) = (ends[0], ends[1], ends[3]);
    assert_eq!(ends.iter().sum::<u64>(), offered, "{outcomes}");
    assert!(ok > 0 && shed > 0, "{outcomes}");
    assert_eq!(
        failed, 0,
        "every request is answered 200 or 503: {outcomes}"
    );

    // sluice's own count: every request exactly once, and what it forwarded
    // is what the backend received and what the client got 200 for.
    let counted: Vec<(&str, u64)> = line(&stdout, "sluice counted:")
        .split(',')
        .map(|part| {
            let (outcome, count) = part.trim().rsplit_once(' ').unwrap();
            (outcome, count.parse().unwrap())
        })
        .collect();
    assert_eq!(
        counted.iter().map(|(_, n)| n).sum::<u64>(),
        offered,
        "{counted:?}"
    );
    let forwarded = counted
        .iter()
        .find(|(outcome, _)| *outcome == "forwarded")
        .map(|&(_, n)| n);
    let released = first_number(line(&stdout, "released to the backend:"));
    assert_eq!(forwarded, Some(ok), "{counted:?}");
    assert_eq!(released, ok);
    assert!(line(&stdout, "wait of the 200s:").contains("p99"));

    // The chart: at the printed path, well-formed SVG with the rate lines.
    let printed = PathBuf::from(line(&stdout, "chart:").trim());
    assert_eq!(
        std::fs::canonicalize(&printed).unwrap(),
        std::fs::canonicalize(&out).unwrap()
    );
    let svg = std::fs::read_to_string(&out).unwrap();
    assert!(svg.contains("<svg"), "{svg:.200}");
    let doc = roxmltree::Document::parse(&svg).expect("the chart is well-formed XML");
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "svg");
    assert!(root.attribute("width").is_some() && root.attribute("height").is_some());
    let lines = doc
        .descendants()
        .filter(|n| n.has_tag_name("polyline") || n.has_tag_name("path"))
        .count();
    assert!(
        lines >= 3,
        "expected the rate and queue lines, found {lines}"
    );
    let texts: String = doc
        .descendants()
        .filter(|n| n.has_tag_name("text"))
        .filter_map(|n| n.text())
        .collect::<Vec<_>>()
        .join("\n");
    for label in [
        "offered to sluice",
        "released to the backend",
        "queue depth",
    ] {
        assert!(texts.contains(label), "no {label:?} in the chart's text");
    }
}

#[test]
fn bad_options_fail_at_once_with_a_message() {
    let out = out_path("never.svg");
    for args in [&["--duration", "1s"][..], &["--burst", "0"]] {
        let (status, _, stderr, elapsed) = run_demo(args, &out);
        assert_eq!(status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains("error: --"), "{args:?}: {stderr}");
        assert!(elapsed < Duration::from_secs(5), "{args:?}: {elapsed:?}");
    }
    assert!(!out.exists());
}

/// `sluice demo --async`: the burst is answered `202` (all of it: the
/// capacity, 5000, is far above it), faster than the backend takes it, and
/// delivered at the route's rate; the journal's temporary directory is gone
/// afterwards.
#[test]
fn an_async_demo_accepts_the_burst_at_once_and_delivers_it_at_the_rate() {
    let out = out_path("demo-async.svg");
    let args = ["--async", "--duration", "6s", "--burst", "10"];
    let (status, stdout, stderr, elapsed) = run_demo(&args, &out);
    assert!(
        status.success(),
        "{status}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    println!("{stdout}");
    eprintln!("sluice demo --async --duration 6s took {elapsed:?}");
    let journal = line(&stdout, "  journal  ").split("  ").next().unwrap();
    assert!(!Path::new(journal).exists(), "{journal} left behind");

    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/demo-async.toml");
    let config = sluice::Config::load(&path).unwrap();
    let limit = config.routes[0].limit.unwrap();
    let (rate, burst) = (limit.rate, f64::from(limit.burst.get()));

    // Every request answered 202, each delivered once, none expired.
    let outcomes = line(&stdout, "outcomes:");
    let offered = first_number(outcomes);
    assert!(
        outcomes.ends_with(&format!(
            "{offered} ok (202) + 0 shed (503) + 0 limited (429) + 0 failed"
        )),
        "{outcomes}"
    );
    assert_eq!(
        line(&stdout, "sluice counted:").trim(),
        format!("accepted {offered}")
    );
    assert_eq!(
        first_number(line(&stdout, "released to the backend:")),
        offered
    );
    let delivered = line(&stdout, "delivered:");
    assert!(
        delivered.starts_with(&format!(" {offered} (sluice counted; expired 0")),
        "{delivered}"
    );

    // Accepted faster than delivered; delivered no faster than the rate;
    // a backlog built up and drained.
    let accepted_peak = first_number(
        line(&stdout, "accepted:")
            .split("busiest 1 s:")
            .nth(1)
            .unwrap(),
    );
    let released_peak = first_number(line(&stdout, "released peak:")) as f64;
    assert!(
        released_peak <= rate * 1.1 + burst,
        "released peak {released_peak}/s above {rate}/s x 1.1 + burst {burst}:\n{stdout}"
    );
    assert!(
        accepted_peak as f64 > released_peak * 1.5,
        "accepted peak {accepted_peak}/s not well above the delivery's {released_peak}/s:\n{stdout}"
    );
    let backlog = line(&stdout, "backlog peak:");
    assert!(first_number(backlog) >= 100, "{backlog}");
    assert!(backlog.contains("; empty "), "{backlog}");

    let svg = std::fs::read_to_string(&out).unwrap();
    let doc = roxmltree::Document::parse(&svg).expect("the chart is well-formed XML");
    let texts: Vec<&str> = doc
        .descendants()
        .filter(|n| n.has_tag_name("text"))
        .filter_map(|n| n.text())
        .collect();
    for label in [
        "accepted (202)",
        "delivered to the backend",
        "backlog (left axis)",
    ] {
        assert!(
            texts.iter().any(|t| t.contains(label)),
            "no {label:?} in the chart's text"
        );
    }
}
