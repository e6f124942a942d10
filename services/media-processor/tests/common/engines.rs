//! The real speech engines for tests, with a prompt store in memory.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use media_processor::ai::asr::{Asr, AsrConfig};
use media_processor::ai::metrics::AiMetrics;
use media_processor::ai::tts::{Tts, TtsConfig};
use media_processor::call::ivr::webhook::Webhooks;
use media_processor::call::ivr::{IvrContext, IvrMetrics, PromptAudio, PromptSource};

/// Prompts kept in memory.
#[derive(Default)]
pub struct MemoryPrompts(pub std::sync::Mutex<HashMap<String, PromptAudio>>);

#[async_trait::async_trait]
impl PromptSource for MemoryPrompts {
    async fn load(&self, id: &str) -> anyhow::Result<Option<PromptAudio>> {
        Ok(self.0.lock().unwrap().get(id).cloned())
    }
}

/// Engines and the IVR context built on them.
pub struct Engines {
    pub tts: Arc<Tts>,
    pub asr: Arc<Asr>,
    pub prompts: Arc<MemoryPrompts>,
    pub ivr: Arc<IvrContext>,
}

impl Engines {
    /// Keys counted as received from `source` (`dtmf`, `inband`) or sent.
    pub fn dtmf_count(&self, source: &str) -> u64 {
        self.ivr.metrics.dtmf.with_label_values(&[source]).get()
    }
}

/// espeak-ng and pocketsphinx as installed by scripts/test-env.sh, the TTS
/// cache under `dir`.
pub fn engines(dir: &Path) -> Arc<Engines> {
    let metrics = AiMetrics::new().unwrap();
    let tts = Arc::new(Tts::new(
        TtsConfig {
            cache_dir: dir.join("tts-cache"),
            ..TtsConfig::default()
        },
        metrics.clone(),
    ));
    tts.check()
        .expect("espeak-ng installed (scripts/test-env.sh installs it)");
    let asr = Arc::new(Asr::new(
        AsrConfig {
            tmp_dir: dir.to_path_buf(),
            ..AsrConfig::default()
        },
        metrics,
    ));
    let prompts = Arc::new(MemoryPrompts::default());
    let ivr = Arc::new(IvrContext {
        tts: tts.clone(),
        asr: asr.clone(),
        prompts: prompts.clone(),
        webhooks: Webhooks::new(
            b"test-webhook-secret".to_vec(),
            Duration::from_secs(2),
            true,
        )
        .unwrap(),
        messages: None,
        amd: dialstack_media::amd::AmdConfig::default(),
        metrics: IvrMetrics::new().unwrap(),
    });
    Arc::new(Engines {
        tts,
        asr,
        prompts,
        ivr,
    })
}
