//! Hook bodies: any bytes given to the JSON extractors of start, stop and batch either parse or
//! fail cleanly; never a panic.
#![no_main]

use keeptyping::api::typing::{BatchRequest, StartRequest, StopRequest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<StartRequest>(data);
    let _ = serde_json::from_slice::<StopRequest>(data);
    let _ = serde_json::from_slice::<BatchRequest>(data);
});
