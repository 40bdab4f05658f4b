//! A component of a contract version the host does not implement: the host must refuse it and
//! say how to fix it, not fail with a linker message.

wit_bindgen::generate!({
    inline: r#"
        package sluice:plugin@0.9.0;
        interface handler {
            handle-batch: func(payloads: list<string>) -> u32;
        }
        world plugin {
            export handler;
        }
    "#,
});

struct Future;

impl exports::sluice::plugin::handler::Guest for Future {
    fn handle_batch(payloads: Vec<String>) -> u32 {
        payloads.len() as u32
    }
}

export!(Future);
