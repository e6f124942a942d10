//! The speech engines: text to speech (espeak-ng) and speech recognition
//! (pocketsphinx), each run as a separate process (never linked: espeak-ng
//! is GPL), bounded in concurrency and time, and audio decoding for
//! uploaded prompts. Everything speaks 8 kHz mono 16-bit linear PCM, the
//! call path's format.
//!
//! # Layout
//! - [`audio`]: WAV and MP3 uploads to 8 kHz mono; 8 kHz mono to WAV
//! - [`tts`]: [`tts::Tts`], espeak-ng with a disk and memory cache, and
//!   the `{field}` templates of per-call prompts
//! - [`asr`]: [`asr::Asr`], pocketsphinx with grammars (yes/no, digits,
//!   keywords) for answers and the language model for transcripts
//! - [`metrics`]: the engines' Prometheus metrics
//!
//! Settings: `DIALSTACK_ESPEAK_BIN`, `DIALSTACK_AUDIO_CACHE`,
//! `DIALSTACK_TTS_CONCURRENCY` ([`tts::TtsConfig`]); `DIALSTACK_ASR_BIN`,
//! `DIALSTACK_ASR_MODEL_DIR`, `DIALSTACK_ASR_CONCURRENCY`
//! ([`asr::AsrConfig`]).

pub mod asr;
pub mod audio;
pub mod metrics;
pub mod tts;
