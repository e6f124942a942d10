//! A recorder writing into a local store, for tests that check what a call
//! sent or heard.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dialstack_common::config::Env;
use dialstack_common::recordings::RecordingStore;
use dialstack_contract::{CallTranscript, DialCommand, RecordingReady};
use media_processor::call::CallContext;
use media_processor::recording::{Announce, Recorder, RecordingMetrics};

/// What the recorder announced.
#[derive(Default)]
pub struct Announced {
    pub ready: Mutex<Vec<RecordingReady>>,
    pub transcripts: Mutex<Vec<CallTranscript>>,
}

#[async_trait::async_trait]
impl Announce for Announced {
    async fn ready(&self, r: &RecordingReady) -> Result<(), String> {
        self.ready.lock().unwrap().push(r.clone());
        Ok(())
    }

    async fn transcript(&self, t: &CallTranscript) -> Result<(), String> {
        self.transcripts.lock().unwrap().push(t.clone());
        Ok(())
    }
}

/// A recorder on `ctx` storing under `dir/store`.
pub struct Recorded {
    pub store_dir: PathBuf,
    pub announced: Arc<Announced>,
    pub recorder: Arc<Recorder>,
}

impl Recorded {
    /// The stored WAV of `cmd`'s call, once announced (at most 20 s).
    pub async fn wait_for(&self, cmd: &DialCommand) -> Vec<u8> {
        for _ in 0..200 {
            if self
                .announced
                .ready
                .lock()
                .unwrap()
                .iter()
                .any(|r| r.call.call_id == cmd.call_id)
            {
                let path = self
                    .store_dir
                    .join(&cmd.campaign_id)
                    .join(format!("{}.wav", cmd.call_id));
                return std::fs::read(&path).unwrap();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the recording of {} was never stored", cmd.call_id);
    }

    /// The transcript of `cmd`'s call, once announced (at most 30 s).
    pub async fn transcript_of(&self, cmd: &DialCommand) -> CallTranscript {
        for _ in 0..300 {
            if let Some(t) = self
                .announced
                .transcripts
                .lock()
                .unwrap()
                .iter()
                .find(|t| t.call.call_id == cmd.call_id)
            {
                return t.clone();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no transcript of {}", cmd.call_id);
    }
}

/// Gives `ctx` a recorder with a local store under `dir`.
pub async fn local_recorder(ctx: &mut CallContext, dir: &Path) -> Recorded {
    let store_dir = std::path::absolute(dir.join("store")).unwrap();
    std::fs::create_dir_all(&store_dir).unwrap();
    let env = Env::from_pairs([(
        "DIALSTACK_RECORDINGS_URL",
        format!("file://{}", store_dir.display()),
    )]);
    let store = RecordingStore::from_env(&env).expect("store");
    let announced = Arc::new(Announced::default());
    let recorder = Recorder::start(
        dir.join("spool"),
        10,
        Arc::new(store),
        announced.clone(),
        RecordingMetrics::new().unwrap(),
        tokio_util::sync::CancellationToken::new(),
    )
    .unwrap();
    let media = media_processor::rtp::stream::MediaContext {
        jitter: ctx.media.jitter.clone(),
        latch: ctx.media.latch,
        metrics: ctx.media.metrics.clone(),
        recorder: Some(recorder.clone()),
    };
    ctx.media = Arc::new(media);
    Recorded {
        store_dir,
        announced,
        recorder,
    }
}

/// RMS of a frame.
pub fn rms(f: &[i16]) -> f64 {
    if f.is_empty() {
        return 0.0;
    }
    (f.iter().map(|&s| f64::from(s) * f64::from(s)).sum::<f64>() / f.len() as f64).sqrt()
}
