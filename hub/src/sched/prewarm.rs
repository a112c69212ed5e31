//! Pre-warming: loading a model ahead of the tasks that wait for it.
//!
//! When a model's tasks have waited longer than it takes to load it, and a host that has it
//! cold sits idle with room for it, loading it there now means the next of those tasks to find
//! an agent there starts warm. [`target`] says where; the core asks that sidecar (an Ollama
//! preload) and records it as a decision of the waiting tasks.

use super::{DEFAULT_LOAD_BYTES_PER_MS, Fleet};
use crate::domain::Task;
use crate::fleet::{EndpointKind, Owner};

/// Where to load a model ahead of its tasks.
#[derive(Clone, Debug, PartialEq)]
pub struct Prewarm {
    pub sidecar_id: String,
    pub endpoint_id: String,
    pub model: String,
    /// The load time expected there (learned, or from the model's size).
    pub load_ms: f64,
}

/// Where `model` should be loaded now for tasks that have waited `waited_ms` (the oldest of
/// them is `oldest`, whose tags and host the host must match), or `None`. The endpoint must
/// be a healthy Ollama server of an open, uncordoned sidecar that runs LLM work, with the model
/// downloaded and cold, nothing in flight, and free memory (GPU memory, or RAM without GPUs)
/// for the whole model: a pre-warm never evicts. The tasks must have waited longer than the
/// load takes there. Of those, the quickest load wins, then the smaller endpoint id. `copies`
/// is how many idle warm copies there are already (nothing in flight): no more are made than
/// tasks wait.
pub fn target(
    oldest: &Task,
    model: &str,
    waiting: usize,
    copies: usize,
    waited_ms: i64,
    fleet: &Fleet<'_>,
) -> Option<Prewarm> {
    if waiting <= copies {
        return None;
    }
    let placement = &oldest.spec.placement;
    let mut best: Option<Prewarm> = None;
    for e in fleet.offering(model) {
        let Owner::Sidecar(sidecar_id) = &e.owner else { continue };
        if e.kind != EndpointKind::Ollama || !e.healthy || fleet.in_flight(&e.id) > 0 {
            continue;
        }
        let Some(listed) = e.models.iter().find(|m| m.name == model && !m.loaded) else { continue };
        let admitted = fleet.sidecar(sidecar_id).is_some_and(|s| s.runs("llm") && s.admits(sidecar_id, placement));
        if !admitted || fleet.cordoned(sidecar_id) {
            continue;
        }
        let size = listed.size_vram_bytes.max(listed.size_bytes);
        if fleet.free_memory(sidecar_id).is_none_or(|free| size > free) {
            continue;
        }
        let observed = fleet.learned.get(sidecar_id, model);
        let load_ms = observed.load_ms.unwrap_or(size as f64 / DEFAULT_LOAD_BYTES_PER_MS);
        if waited_ms as f64 <= load_ms {
            continue;
        }
        let better = best.as_ref().is_none_or(|b| (load_ms, &e.id) < (b.load_ms, &b.endpoint_id));
        if better {
            best = Some(Prewarm {
                sidecar_id: sidecar_id.clone(),
                endpoint_id: e.id.clone(),
                model: model.to_owned(),
                load_ms,
            });
        }
    }
    best
}
