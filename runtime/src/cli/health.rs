//! `sluice health`: asks a running host's admin API, for container health checks (the image has
//! no curl).

use std::time::Duration;

use anyhow::{Context, Result};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::HealthArgs;
use crate::config::defaults;

/// How long the admin API has to answer.
const TIMEOUT: Duration = Duration::from_secs(5);

/// GET /health or /ready on the admin address and print the body; Ok(true) on 200. A host that
/// cannot be reached, or does not answer in time, is unhealthy too (exit 1, as container health
/// checks expect: 2 is reserved there), said on stderr.
pub async fn health(args: HealthArgs) -> Result<bool> {
    let addr = args.admin_addr.unwrap_or_else(|| defaults::ADMIN_ADDR.into());
    // A host listening on every interface is asked on this machine's loopback.
    let addr = addr.replace("0.0.0.0", "127.0.0.1").replace("[::]", "[::1]");
    let url = format!("http://{addr}{}", if args.ready { "/ready" } else { "/health" });
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
    let uri: hyper::Uri = url.parse().with_context(|| format!("`{addr}` is not a host:port address"))?;
    let exchange = async {
        let resp = client.get(uri).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, body))
    };
    let answer = tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| anyhow::anyhow!("no answer from {addr} within {TIMEOUT:?}"))
        .and_then(|r| r.with_context(|| format!("cannot reach the admin API at {addr}")));
    let (status, body) = match answer {
        Ok(a) => a,
        Err(e) => {
            eprintln!("unhealthy: {e:#}");
            return Ok(false);
        }
    };
    println!("{}", String::from_utf8_lossy(&body).trim());
    Ok(status == hyper::StatusCode::OK)
}
