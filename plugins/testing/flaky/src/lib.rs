//! A test-only plugin (not shipped): each `flaky.event` payload says how to behave.
//! {"n": 7}                         → one row (n, attempt)
//! {"n": 7, "fail_first": true}    → transient failure on the first attempt, then a row
//! {"n": 7, "fail_until_ms": T}    → transient failure while the clock is before T
//! {"n": 7, "permanent": true}     → permanent failure
//! {"n": 7, "panic": true}         → panics (the whole call traps)

use serde::Deserialize;
use sluice_sdk::{Event, Failure, Manifest, Output, Plugin, Table};

sluice_sdk::table! {
    pub struct FlakyRow = "flaky_rows" {
        event_id: String = "String",
        n: u64 = "UInt64",
        attempt: u32 = "UInt32",
    }
}

#[derive(Deserialize)]
struct Payload {
    n: u64,
    #[serde(default)]
    fail_first: bool,
    #[serde(default)]
    fail_until_ms: Option<u64>,
    #[serde(default)]
    permanent: bool,
    #[serde(default)]
    panic: bool,
}

pub struct Flaky;

impl Plugin for Flaky {
    fn manifest() -> Manifest {
        Manifest::new("flaky", "1.0.0").subscribe("flaky.event").table(Table::of::<FlakyRow>().order_by(["event_id"]))
    }

    fn handle(event: &Event, out: &mut Output) -> Result<(), Failure> {
        let p: Payload = event.json()?;
        if p.panic {
            panic!("flaky: asked to panic on event {}", event.id);
        }
        if p.permanent {
            return Err(Failure::permanent(format!("flaky: event {} is permanently bad", event.id)));
        }
        if p.fail_first && event.attempt == 1 {
            return Err(Failure::transient("flaky: first attempt fails"));
        }
        if let Some(until) = p.fail_until_ms {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
            if now < until {
                return Err(Failure::transient(format!("flaky: failing until {until}, now {now}")));
            }
        }
        out.row(&FlakyRow { event_id: event.id.clone(), n: p.n, attempt: event.attempt })
    }
}

sluice_sdk::export_plugin!(Flaky);
