//! Headless Chromium driven through the Chrome DevTools Protocol, to click through the console
//! as an operator would. The protocol runs over `--remote-debugging-pipe` (JSON messages ended
//! by a NUL byte, commands on the child's fd 3, answers and events on its fd 4): no port, no
//! websocket, nothing to download. Every call and every wait has a timeout.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

/// How long one protocol call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Browser {
    child: Child,
    commands: std::io::PipeWriter,
    messages: mpsc::Receiver<Value>,
    next_id: u64,
    _profile: tempfile::TempDir,
}

/// A tab, attached to with a flat session.
pub struct Page<'a> {
    browser: &'a mut Browser,
    session: String,
}

impl Browser {
    /// Starts `chromium --headless` (installed by `scripts/install-deps.sh test`).
    pub fn launch() -> Result<Browser> {
        let profile = tempfile::tempdir()?;
        let (to_child, commands) = std::io::pipe()?;
        let (answers, from_child) = std::io::pipe()?;
        let (in_fd, out_fd) = (to_child.as_raw_fd(), from_child.as_raw_fd());
        let mut cmd = Command::new("chromium");
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--remote-debugging-pipe",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("about:blank")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        // SAFETY: only async-signal-safe calls (fcntl, dup2) between fork and exec. The pipe
        // ends are first moved above 10, so that placing them at 3 and 4 cannot overwrite one
        // with the other; dup2 clears close-on-exec on the copies.
        unsafe {
            cmd.pre_exec(move || {
                let a = libc::fcntl(in_fd, libc::F_DUPFD, 10);
                let b = libc::fcntl(out_fd, libc::F_DUPFD, 10);
                if a < 0 || b < 0 || libc::dup2(a, 3) < 0 || libc::dup2(b, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().context("cannot run chromium (scripts/install-deps.sh test installs it)")?;
        // The child's ends are closed here, so that its exit is an end of file on ours.
        drop((to_child, from_child));
        let (tx, messages) = mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(answers);
            let mut buf = Vec::new();
            while r.read_until(0, &mut buf).is_ok_and(|n| n > 0) {
                if buf.last() == Some(&0) {
                    buf.pop();
                }
                if let Ok(v) = serde_json::from_slice::<Value>(&buf)
                    && tx.send(v).is_err()
                {
                    return;
                }
                buf.clear();
            }
        });
        Ok(Browser { child, commands, messages, next_id: 0, _profile: profile })
    }

    fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Result<Value> {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let mut bytes = serde_json::to_vec(&msg)?;
        bytes.push(0);
        self.commands.write_all(&bytes).with_context(|| format!("chromium is gone (sending {method})"))?;
        let deadline = Instant::now() + CALL_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let m = self
                .messages
                .recv_timeout(left)
                .map_err(|e| anyhow::anyhow!("no answer to {method} within {CALL_TIMEOUT:?}: {e}"))?;
            if m["id"].as_u64() != Some(id) {
                continue; // an event, or a late answer
            }
            if let Some(e) = m.get("error") {
                bail!("{method} failed: {e}");
            }
            return Ok(m["result"].clone());
        }
    }

    /// Opens `url` in a new tab.
    pub fn open(&mut self, url: &str) -> Result<Page<'_>> {
        let target = self.call(None, "Target.createTarget", json!({"url": url}))?;
        let target = target["targetId"].as_str().context("no targetId")?.to_string();
        let attached = self.call(None, "Target.attachToTarget", json!({"targetId": target, "flatten": true}))?;
        let session = attached["sessionId"].as_str().context("no sessionId")?.to_string();
        let mut page = Page { browser: self, session };
        page.call("Runtime.enable", json!({}))?;
        Ok(page)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Page<'_> {
    fn call(&mut self, method: &str, params: Value) -> Result<Value> {
        let session = self.session.clone();
        self.browser.call(Some(&session), method, params)
    }

    /// The value of a JavaScript expression (promises awaited); an exception is an error.
    pub fn eval(&mut self, expression: &str) -> Result<Value> {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true, "awaitPromise": true, "timeout": 10_000}),
        )?;
        if let Some(e) = r.get("exceptionDetails") {
            bail!("`{expression}` threw: {}", e["exception"]["description"].as_str().unwrap_or(&e.to_string()));
        }
        Ok(r["result"]["value"].clone())
    }

    /// Waits until `expression` is truthy; returns its value.
    pub fn wait_for(&mut self, what: &str, timeout: Duration, expression: &str) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        let mut last = Value::Null;
        while Instant::now() < deadline {
            // A page still loading may throw (no body yet): that is "not yet".
            let v = match self.eval(expression) {
                Ok(v) => v,
                Err(e) => {
                    last = Value::String(format!("an error: {e:#}"));
                    std::thread::sleep(Duration::from_millis(200));
                    continue;
                }
            };
            last = v;
            let truthy = match &last {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return Ok(last);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        bail!("timed out after {timeout:?} waiting for {what} (`{expression}` was {last})")
    }

    /// Clicks the element `selector` names (an error if there is none, or it is disabled).
    pub fn click(&mut self, selector: &str) -> Result<()> {
        let sel = serde_json::to_string(selector)?;
        let r = self.eval(&format!(
            "(() => {{ const e = document.querySelector({sel}); if (!e) return 'missing'; if (e.disabled) return 'disabled'; e.click(); return 'ok'; }})()"
        ))?;
        if r != "ok" {
            bail!("cannot click {selector}: {r}");
        }
        Ok(())
    }

    /// Sets the value of the form field `selector` names, as typing or choosing would
    /// (`input` and `change` events).
    pub fn set(&mut self, selector: &str, value: &str) -> Result<()> {
        let (sel, value) = (serde_json::to_string(selector)?, serde_json::to_string(value)?);
        let r = self.eval(&format!(
            "(() => {{ const e = document.querySelector({sel}); if (!e) return 'missing'; e.value = {value}; e.dispatchEvent(new Event('input')); e.dispatchEvent(new Event('change')); return 'ok'; }})()"
        ))?;
        if r != "ok" {
            bail!("cannot set {selector}: {r}");
        }
        Ok(())
    }

    /// The text of the element `selector` names.
    pub fn text(&mut self, selector: &str) -> Result<String> {
        let sel = serde_json::to_string(selector)?;
        let v = self.eval(&format!("(document.querySelector({sel}) || {{}}).textContent"))?;
        v.as_str().map(str::to_string).with_context(|| format!("no element {selector}"))
    }
}
