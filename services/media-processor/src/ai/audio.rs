//! Uploaded audio to the service's format (8 kHz mono 16-bit linear PCM),
//! and that format back to a WAV file.
//!
//! [`decode`] sniffs the bytes: `RIFF`/`WAVE` is read by the chunk walker
//! here (PCM 8/16/24/32-bit, IEEE float 32/64-bit, A-law, µ-law, and
//! `WAVE_FORMAT_EXTENSIBLE` wrapping any of them); an ID3 tag or an MPEG
//! frame sync is decoded as MP3 with symphonia. Channels are averaged and
//! any rate from 8 to 48 kHz is resampled to 8 kHz. Nothing in the input
//! can make it panic or allocate more than the input's size allows: every
//! size field is checked against the bytes that are really there. The
//! caller bounds the input size; [`MAX_SECONDS`] bounds the duration.

use std::io::Cursor;

use dialstack_media::g711;
use dialstack_media::resample::resample;

/// The service's sample rate.
pub const RATE: u32 = 8_000;
/// Longest audio [`decode`] accepts (s).
pub const MAX_SECONDS: u32 = 300;
/// Lowest input rate accepted (Hz).
pub const MIN_INPUT_RATE: u32 = 8_000;
/// Highest input rate accepted (Hz).
pub const MAX_INPUT_RATE: u32 = 48_000;
/// Most channels a WAV may have.
const MAX_CHANNELS: u16 = 32;
/// `WAVE_FORMAT_EXTENSIBLE` sub-format GUIDs end with these 14 bytes.
const GUID_TAIL: [u8; 14] = [
    0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x80, 0x00, 0x00, 0xAA, 0x00, 0x38, 0x9B, 0x71,
];

/// Why audio could not be decoded. The message is fit for an API client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AudioError {
    /// Neither a RIFF/WAVE header nor an ID3 tag or MPEG frame sync.
    #[error("not a WAV or MP3 file")]
    NotAudio,
    /// The file ends inside a header.
    #[error("WAV is truncated: {0}")]
    Truncated(&'static str),
    /// No `fmt ` chunk.
    #[error("WAV has no fmt chunk")]
    NoFormat,
    /// No `data` chunk.
    #[error("WAV has no data chunk")]
    NoData,
    /// A chunk declares more bytes than the file has (other than a
    /// streamed `data` chunk, which is read to the end of the file).
    #[error("WAV chunk {id:?} at byte {offset} declares {declared} bytes but only {left} remain")]
    ChunkOverrun {
        /// The chunk id, e.g. `fmt `.
        id: String,
        /// Where its header starts.
        offset: usize,
        /// Its size field.
        declared: u32,
        /// Bytes after its header.
        left: usize,
    },
    /// A format tag (or extensible sub-format) that is not PCM, float,
    /// A-law or µ-law.
    #[error("unsupported WAV format tag {0}")]
    FormatTag(u16),
    /// A sample size the format does not come in.
    #[error("unsupported WAV sample size: {bits} bits in {container} bytes for format tag {tag}")]
    SampleSize {
        /// Format tag.
        tag: u16,
        /// Bits per sample from the header.
        bits: u16,
        /// Bytes per sample container.
        container: u16,
    },
    /// Zero or too many channels.
    #[error("WAV has {0} channels (1 to 32 are supported)")]
    Channels(u16),
    /// A sample rate outside [`MIN_INPUT_RATE`]..=[`MAX_INPUT_RATE`].
    #[error("sample rate {0} Hz is outside 8000-48000 Hz")]
    Rate(u32),
    /// Longer than the limit.
    #[error("audio is longer than {0} s")]
    TooLong(u32),
    /// The MP3 decoder gave up.
    #[error("MP3 could not be decoded: {0}")]
    Mp3(String),
}

/// `bytes` (a WAV or MP3 file) as 8 kHz mono samples, at most
/// [`MAX_SECONDS`] long. CPU-heavy for long files: call it off the async
/// runtime (`spawn_blocking`) on request paths.
pub fn decode(bytes: &[u8]) -> Result<Vec<i16>, AudioError> {
    let (pcm, rate) = decode_native(bytes, MAX_SECONDS)?;
    Ok(resample(&pcm, rate, RATE))
}

/// `bytes` as mono samples at their own rate, at most `max_seconds` long.
pub(crate) fn decode_native(bytes: &[u8], max_seconds: u32) -> Result<(Vec<i16>, u32), AudioError> {
    if bytes.starts_with(b"RIFF") {
        if bytes.len() < 12 {
            return Err(AudioError::Truncated("RIFF header"));
        }
        if &bytes[8..12] == b"WAVE" {
            return wav_mono(bytes, max_seconds);
        }
        return Err(AudioError::NotAudio);
    }
    if looks_like_mp3(bytes) {
        return mp3_mono(bytes, max_seconds);
    }
    Err(AudioError::NotAudio)
}

/// `pcm` (8 kHz mono) as a WAV file: PCM, 16-bit, 44-byte header.
pub fn wav_8k(pcm: &[i16]) -> Vec<u8> {
    let data_len = u32::try_from(pcm.len() * 2).unwrap_or(u32::MAX - 36) & !1;
    let mut out = Vec::with_capacity(44 + pcm.len() * 2);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&RATE.to_le_bytes());
    out.extend_from_slice(&(RATE * 2).to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    for s in &pcm[..data_len as usize / 2] {
        out.extend_from_slice(&s.to_le_bytes());
    }
    out
}

/// How one sample is stored.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Encoding {
    U8,
    I16,
    I24,
    I32,
    F32,
    F64,
    Alaw,
    Ulaw,
}

impl Encoding {
    fn bytes(self) -> usize {
        match self {
            Encoding::U8 | Encoding::Alaw | Encoding::Ulaw => 1,
            Encoding::I16 => 2,
            Encoding::I24 => 3,
            Encoding::I32 | Encoding::F32 => 4,
            Encoding::F64 => 8,
        }
    }

    /// One sample on the i16 scale.
    fn read(self, b: &[u8]) -> f32 {
        match self {
            Encoding::U8 => (f32::from(b[0]) - 128.0) * 256.0,
            Encoding::Alaw => f32::from(g711::alaw_to_linear(b[0])),
            Encoding::Ulaw => f32::from(g711::ulaw_to_linear(b[0])),
            Encoding::I16 => f32::from(i16::from_le_bytes([b[0], b[1]])),
            Encoding::I24 => i32::from_le_bytes([0, b[0], b[1], b[2]]) as f32 / 65_536.0,
            Encoding::I32 => i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32 / 65_536.0,
            Encoding::F32 => finite(f32::from_le_bytes([b[0], b[1], b[2], b[3]])) * 32_768.0,
            Encoding::F64 => {
                let v = f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
                finite(v as f32) * 32_768.0
            }
        }
    }
}

fn finite(v: f32) -> f32 {
    if v.is_finite() {
        v
    } else {
        0.0
    }
}

/// What the `fmt ` chunk says.
#[derive(Debug, Clone, Copy)]
struct Format {
    encoding: Encoding,
    channels: u16,
    rate: u32,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn parse_format(body: &[u8]) -> Result<Format, AudioError> {
    if body.len() < 16 {
        return Err(AudioError::Truncated("fmt chunk shorter than 16 bytes"));
    }
    let mut tag = u16_at(body, 0);
    let channels = u16_at(body, 2);
    let rate = u32_at(body, 4);
    let block_align = u16_at(body, 12);
    let bits = u16_at(body, 14);
    if tag == 0xFFFE {
        if body.len() < 40 {
            return Err(AudioError::Truncated(
                "WAVE_FORMAT_EXTENSIBLE fmt chunk shorter than 40 bytes",
            ));
        }
        if body[26..40] != GUID_TAIL {
            return Err(AudioError::FormatTag(0xFFFE));
        }
        tag = u16_at(body, 24);
    }
    if channels == 0 || channels > MAX_CHANNELS {
        return Err(AudioError::Channels(channels));
    }
    if !(MIN_INPUT_RATE..=MAX_INPUT_RATE).contains(&rate) {
        return Err(AudioError::Rate(rate));
    }
    // The container is what block_align says when it is consistent (24-bit
    // samples may sit in 32-bit containers), else the bits rounded up.
    let from_bits = bits.div_ceil(8);
    let container = if block_align != 0
        && block_align % channels == 0
        && (1..=8).contains(&(block_align / channels))
        && block_align / channels >= from_bits
    {
        block_align / channels
    } else {
        from_bits
    };
    let encoding = match (tag, container) {
        (1, 1) => Encoding::U8,
        (1, 2) => Encoding::I16,
        (1, 3) => Encoding::I24,
        (1, 4) => Encoding::I32,
        (3, 4) => Encoding::F32,
        (3, 8) => Encoding::F64,
        (6, 1) => Encoding::Alaw,
        (7, 1) => Encoding::Ulaw,
        (1 | 3 | 6 | 7, _) => {
            return Err(AudioError::SampleSize {
                tag,
                bits,
                container,
            })
        }
        _ => return Err(AudioError::FormatTag(tag)),
    };
    if bits == 0 || usize::from(bits) > encoding.bytes() * 8 {
        return Err(AudioError::SampleSize {
            tag,
            bits,
            container,
        });
    }
    Ok(Format {
        encoding,
        channels,
        rate,
    })
}

/// The chunks of a RIFF/WAVE file, mixed down to mono at the file's rate.
fn wav_mono(bytes: &[u8], max_seconds: u32) -> Result<(Vec<i16>, u32), AudioError> {
    let mut format: Option<Format> = None;
    let mut data: Option<&[u8]> = None;
    let mut pos = 12usize;
    while bytes.len().saturating_sub(pos) >= 8 {
        let id = &bytes[pos..pos + 4];
        let declared = u32_at(bytes, pos + 4);
        let body_start = pos + 8;
        let left = bytes.len() - body_start;
        let size = usize::try_from(declared).unwrap_or(usize::MAX);
        if size > left {
            if id == b"data" && data.is_none() {
                // Streaming writers (espeak-ng to a pipe) cannot seek back
                // to fix the size: the data runs to the end of the file.
                data = Some(&bytes[body_start..]);
                break;
            }
            if format.is_some() && data.is_some() {
                // A damaged chunk after everything needed.
                break;
            }
            return Err(AudioError::ChunkOverrun {
                id: String::from_utf8_lossy(id).into_owned(),
                offset: pos,
                declared,
                left,
            });
        }
        let body = &bytes[body_start..body_start + size];
        match id {
            b"fmt " if format.is_none() => format = Some(parse_format(body)?),
            b"data" if data.is_none() => data = Some(body),
            _ => {}
        }
        // Chunks are padded to an even size.
        pos = body_start + size + (size & 1);
    }
    let format = format.ok_or(AudioError::NoFormat)?;
    let data = data.ok_or(AudioError::NoData)?;
    let sample = format.encoding.bytes();
    let channels = usize::from(format.channels);
    let frame = sample * channels;
    let frames = data.len() / frame;
    if frames as u64 > u64::from(max_seconds) * u64::from(format.rate) {
        return Err(AudioError::TooLong(max_seconds));
    }
    let mut out = Vec::with_capacity(frames);
    for f in data.chunks_exact(frame) {
        let sum: f32 = f
            .chunks_exact(sample)
            .map(|s| format.encoding.read(s))
            .sum();
        out.push(to_i16(sum / channels as f32));
    }
    Ok((out, format.rate))
}

fn to_i16(v: f32) -> i16 {
    v.round().clamp(f32::from(i16::MIN), f32::from(i16::MAX)) as i16
}

/// An ID3v2 tag, or an MPEG audio frame header (sync, a layer, a bit rate
/// and a sample rate that exist).
fn looks_like_mp3(b: &[u8]) -> bool {
    if b.starts_with(b"ID3") {
        return true;
    }
    b.len() >= 4
        && b[0] == 0xFF
        && b[1] & 0xE0 == 0xE0
        && (b[1] >> 3) & 0x3 != 0x1
        && (b[1] >> 1) & 0x3 != 0
        && b[2] >> 4 != 0xF
        && (b[2] >> 2) & 0x3 != 0x3
}

/// Bytes taken by a leading ID3v2 tag (header, body, footer).
fn id3v2_len(b: &[u8]) -> usize {
    if b.len() < 10 || !b.starts_with(b"ID3") {
        return 0;
    }
    let size = b[6..10]
        .iter()
        .fold(0usize, |acc, &x| (acc << 7) | usize::from(x & 0x7F));
    let footer = if b[5] & 0x10 != 0 { 10 } else { 0 };
    (10 + size + footer).min(b.len())
}

fn mp3_mono(bytes: &[u8], max_seconds: u32) -> Result<(Vec<i16>, u32), AudioError> {
    // The decoder is third-party code fed with untrusted bytes: a panic in
    // it is a rejected upload, never a crashed request task.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        mp3_mono_inner(bytes, max_seconds)
    }))
    .unwrap_or_else(|_| {
        Err(AudioError::Mp3(
            "the decoder failed on malformed data".into(),
        ))
    })
}

fn mp3_mono_inner(bytes: &[u8], max_seconds: u32) -> Result<(Vec<i16>, u32), AudioError> {
    use symphonia::core::audio::SampleBuffer;
    use symphonia::core::codecs::{Decoder, DecoderOptions};
    use symphonia::core::errors::Error;
    use symphonia::core::formats::{FormatOptions, FormatReader};
    use symphonia::core::io::MediaSourceStream;
    use symphonia::default::codecs::MpaDecoder;
    use symphonia::default::formats::MpaReader;

    let body = bytes[id3v2_len(bytes)..].to_vec();
    let source = MediaSourceStream::new(Box::new(Cursor::new(body)), Default::default());
    let mut reader =
        MpaReader::try_new(source, &FormatOptions::default()).map_err(|e| match e {
            Error::IoError(_) => AudioError::Mp3("no MPEG audio frame found".into()),
            e => AudioError::Mp3(e.to_string()),
        })?;
    let params = reader
        .tracks()
        .first()
        .map(|t| t.codec_params.clone())
        .ok_or_else(|| AudioError::Mp3("no audio track".into()))?;
    let rate = params
        .sample_rate
        .ok_or_else(|| AudioError::Mp3("no sample rate".into()))?;
    if !(MIN_INPUT_RATE..=MAX_INPUT_RATE).contains(&rate) {
        return Err(AudioError::Rate(rate));
    }
    let mut decoder = MpaDecoder::try_new(&params, &DecoderOptions::default())
        .map_err(|e| AudioError::Mp3(e.to_string()))?;
    let max_frames = u64::from(max_seconds) * u64::from(rate);
    let mut out: Vec<i16> = Vec::new();
    let mut buf: Option<SampleBuffer<f32>> = None;
    let mut bad_frames = 0usize;
    loop {
        let packet = match reader.next_packet() {
            Ok(p) => p,
            // The end of the stream (or of the bytes that are there).
            Err(Error::IoError(_)) => break,
            Err(e) => return Err(AudioError::Mp3(e.to_string())),
        };
        let decoded = match decoder.decode(&packet) {
            Ok(d) => d,
            // A damaged frame is skipped, as players do.
            Err(Error::DecodeError(_)) => {
                bad_frames += 1;
                continue;
            }
            Err(e) => return Err(AudioError::Mp3(e.to_string())),
        };
        let spec = *decoded.spec();
        let channels = spec.channels.count().max(1);
        let capacity = decoded.capacity() as u64;
        let b = match &mut buf {
            Some(b) if b.capacity() >= decoded.capacity() * channels => b,
            _ => buf.insert(SampleBuffer::new(capacity, spec)),
        };
        b.copy_interleaved_ref(decoded);
        for frame in b.samples().chunks_exact(channels) {
            let sum: f32 = frame.iter().map(|&v| finite(v)).sum();
            out.push(to_i16(sum / channels as f32 * 32_768.0));
        }
        if out.len() as u64 > max_frames {
            return Err(AudioError::TooLong(max_seconds));
        }
    }
    if out.is_empty() {
        return Err(AudioError::Mp3(if bad_frames > 0 {
            format!("all {bad_frames} frames are damaged")
        } else {
            "no audio frames".into()
        }));
    }
    Ok((out, rate))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A WAV with a `fmt ` chunk of these fields and `data` as its data.
    fn wav(tag: u16, channels: u16, rate: u32, bits: u16, data: &[u8]) -> Vec<u8> {
        let block = channels * bits.div_ceil(8);
        let mut fmt = Vec::new();
        fmt.extend_from_slice(&tag.to_le_bytes());
        fmt.extend_from_slice(&channels.to_le_bytes());
        fmt.extend_from_slice(&rate.to_le_bytes());
        fmt.extend_from_slice(&(rate * u32::from(block)).to_le_bytes());
        fmt.extend_from_slice(&block.to_le_bytes());
        fmt.extend_from_slice(&bits.to_le_bytes());
        riff(&[(b"fmt ", &fmt), (b"data", data)])
    }

    fn riff(chunks: &[(&[u8; 4], &[u8])]) -> Vec<u8> {
        let mut body = b"WAVE".to_vec();
        for (id, c) in chunks {
            body.extend_from_slice(*id);
            body.extend_from_slice(&(c.len() as u32).to_le_bytes());
            body.extend_from_slice(c);
            if c.len() % 2 == 1 {
                body.push(0);
            }
        }
        let mut out = b"RIFF".to_vec();
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&body);
        out
    }

    fn sine(rate: u32, hz: f64, amplitude: f64, n: usize) -> Vec<f64> {
        (0..n)
            .map(|i| {
                amplitude * (2.0 * std::f64::consts::PI * hz * i as f64 / f64::from(rate)).sin()
            })
            .collect()
    }

    fn le16(samples: &[f64]) -> Vec<u8> {
        samples
            .iter()
            .flat_map(|&v| (v.round() as i16).to_le_bytes())
            .collect()
    }

    /// Amplitude of `hz` in 8 kHz audio (Goertzel), away from the edges.
    fn level(x: &[i16], hz: f64) -> f64 {
        let x = &x[x.len() / 4..x.len() * 3 / 4];
        let w = 2.0 * std::f64::consts::PI * hz / 8_000.0;
        let c = 2.0 * w.cos();
        let (mut s1, mut s2) = (0.0, 0.0);
        for &v in x {
            let s = f64::from(v) + c * s1 - s2;
            s2 = s1;
            s1 = s;
        }
        2.0 * (s1 * s1 + s2 * s2 - c * s1 * s2).max(0.0).sqrt() / x.len() as f64
    }

    fn assert_tone(pcm: &[i16], seconds: f64, amplitude: f64, tolerance: f64) {
        let expected = (seconds * 8_000.0).round() as usize;
        assert!(pcm.len().abs_diff(expected) <= 1, "{} samples", pcm.len());
        let l = level(pcm, 1_000.0);
        assert!((l - amplitude).abs() <= tolerance * amplitude, "level {l}");
    }

    #[test]
    fn pcm16_mono_8k_is_taken_as_is_and_round_trips_through_wav_8k() {
        let pcm: Vec<i16> = (0..8_000)
            .map(|i| ((i * 7919) % 60_000 - 30_000) as i16)
            .collect();
        let w = wav_8k(&pcm);
        assert_eq!(w.len(), 44 + 16_000);
        assert_eq!(decode(&w).unwrap(), pcm);
        assert_eq!(
            wav(1, 1, 8_000, 16, &le16(&[1.0, -2.0, 3.0])),
            wav_8k(&[1, -2, 3])
        );
        assert!(decode(&wav_8k(&[])).unwrap().is_empty());
    }

    #[test]
    fn stereo_44k1_16bit_is_mixed_and_resampled() {
        let left = sine(44_100, 1_000.0, 12_000.0, 44_100);
        let right = sine(44_100, 1_000.0, 4_000.0, 44_100);
        let mut data = Vec::new();
        for (l, r) in left.iter().zip(&right) {
            data.extend_from_slice(&(l.round() as i16).to_le_bytes());
            data.extend_from_slice(&(r.round() as i16).to_le_bytes());
        }
        let pcm = decode(&wav(1, 2, 44_100, 16, &data)).unwrap();
        assert_tone(&pcm, 1.0, 8_000.0, 0.01);
    }

    #[test]
    fn every_sample_encoding_decodes() {
        let tone = sine(16_000, 1_000.0, 16_000.0, 8_000);
        let norm: Vec<f64> = tone.iter().map(|v| v / 32_768.0).collect();
        let cases: Vec<(&str, Vec<u8>)> = vec![
            (
                "u8",
                wav(
                    1,
                    1,
                    16_000,
                    8,
                    &tone
                        .iter()
                        .map(|v| (v / 256.0 + 128.0).round() as u8)
                        .collect::<Vec<_>>(),
                ),
            ),
            ("s16", wav(1, 1, 16_000, 16, &le16(&tone))),
            (
                "s24",
                wav(
                    1,
                    1,
                    16_000,
                    24,
                    &tone
                        .iter()
                        .flat_map(|v| ((v * 256.0).round() as i32).to_le_bytes()[..3].to_vec())
                        .collect::<Vec<_>>(),
                ),
            ),
            (
                "s32",
                wav(
                    1,
                    1,
                    16_000,
                    32,
                    &tone
                        .iter()
                        .flat_map(|v| ((v * 65_536.0).round() as i32).to_le_bytes())
                        .collect::<Vec<_>>(),
                ),
            ),
            (
                "f32",
                wav(
                    3,
                    1,
                    16_000,
                    32,
                    &norm
                        .iter()
                        .flat_map(|&v| (v as f32).to_le_bytes())
                        .collect::<Vec<_>>(),
                ),
            ),
            (
                "f64",
                wav(
                    3,
                    1,
                    16_000,
                    64,
                    &norm
                        .iter()
                        .flat_map(|&v| v.to_le_bytes())
                        .collect::<Vec<_>>(),
                ),
            ),
            (
                "alaw",
                wav(
                    6,
                    1,
                    16_000,
                    8,
                    &tone
                        .iter()
                        .map(|&v| g711::linear_to_alaw(v as i16))
                        .collect::<Vec<_>>(),
                ),
            ),
            (
                "ulaw",
                wav(
                    7,
                    1,
                    16_000,
                    8,
                    &tone
                        .iter()
                        .map(|&v| g711::linear_to_ulaw(v as i16))
                        .collect::<Vec<_>>(),
                ),
            ),
        ];
        for (name, bytes) in cases {
            let pcm = decode(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
            // 8-bit and G.711 lose some precision, not the tone.
            assert_tone(&pcm, 0.5, 16_000.0, 0.02);
        }
    }

    #[test]
    fn g711_at_8k_and_wave_format_extensible() {
        let tone = sine(8_000, 1_000.0, 8_000.0, 8_000);
        let ulaw: Vec<u8> = tone
            .iter()
            .map(|&v| g711::linear_to_ulaw(v as i16))
            .collect();
        let pcm = decode(&wav(7, 1, 8_000, 8, &ulaw)).unwrap();
        let expected: Vec<i16> = ulaw.iter().map(|&c| g711::ulaw_to_linear(c)).collect();
        assert_eq!(pcm, expected, "8 kHz µ-law is only expanded");
        // Extensible: 24-bit samples in 32-bit containers, stereo, PCM GUID.
        let ext = |sub: u16, bits: u16, container: u16, data: &[u8]| {
            let mut fmt = Vec::new();
            fmt.extend_from_slice(&0xFFFEu16.to_le_bytes());
            fmt.extend_from_slice(&2u16.to_le_bytes());
            fmt.extend_from_slice(&8_000u32.to_le_bytes());
            fmt.extend_from_slice(&(8_000 * 2 * u32::from(container)).to_le_bytes());
            fmt.extend_from_slice(&(2 * container).to_le_bytes());
            fmt.extend_from_slice(&(container * 8).to_le_bytes());
            fmt.extend_from_slice(&22u16.to_le_bytes());
            fmt.extend_from_slice(&bits.to_le_bytes());
            fmt.extend_from_slice(&3u32.to_le_bytes());
            fmt.extend_from_slice(&sub.to_le_bytes());
            fmt.extend_from_slice(&GUID_TAIL);
            riff(&[(b"fmt ", &fmt), (b"data", data)])
        };
        let data: Vec<u8> = tone
            .iter()
            .flat_map(|v| {
                let s = ((v * 256.0).round() as i32) << 8;
                [s.to_le_bytes(), s.to_le_bytes()].concat()
            })
            .collect();
        assert_tone(&decode(&ext(1, 24, 4, &data)).unwrap(), 1.0, 8_000.0, 0.01);
        let data: Vec<u8> = tone
            .iter()
            .flat_map(|v| {
                let f = (*v / 32_768.0) as f32;
                [f.to_le_bytes(), f.to_le_bytes()].concat()
            })
            .collect();
        assert_tone(&decode(&ext(3, 32, 4, &data)).unwrap(), 1.0, 8_000.0, 0.01);
        assert_eq!(
            decode(&ext(2, 16, 2, &[0; 8])).unwrap_err().to_string(),
            "unsupported WAV format tag 2"
        );
        let mut bad_guid = ext(1, 16, 2, &[0; 8]);
        bad_guid[20 + 30] ^= 0xFF;
        assert_eq!(
            decode(&bad_guid).unwrap_err(),
            AudioError::FormatTag(0xFFFE)
        );
    }

    #[test]
    fn odd_chunks_padding_and_streamed_data_sizes() {
        let mut fmt = Vec::new();
        for v in [1u16, 1] {
            fmt.extend_from_slice(&v.to_le_bytes());
        }
        fmt.extend_from_slice(&8_000u32.to_le_bytes());
        fmt.extend_from_slice(&16_000u32.to_le_bytes());
        fmt.extend_from_slice(&2u16.to_le_bytes());
        fmt.extend_from_slice(&16u16.to_le_bytes());
        let data = le16(&[5.0, 6.0, 7.0]);
        // An odd-sized chunk before fmt, a JUNK chunk between, a list after.
        let w = riff(&[
            (b"LIST", b"abc"),
            (b"fmt ", &fmt),
            (b"JUNK", &[0; 5]),
            (b"data", &data),
            (b"LIST", b"x"),
        ]);
        assert_eq!(decode(&w).unwrap(), vec![5, 6, 7]);
        // data before fmt.
        assert_eq!(
            decode(&riff(&[(b"data", &data), (b"fmt ", &fmt)])).unwrap(),
            vec![5, 6, 7]
        );
        // espeak-ng writing to a pipe: RIFF and data sizes at their maximum.
        let mut streamed = wav(1, 1, 8_000, 16, &data);
        streamed[4..8].copy_from_slice(&0x7FFF_F024u32.to_le_bytes());
        streamed[40..44].copy_from_slice(&0x7FFF_F000u32.to_le_bytes());
        assert_eq!(decode(&streamed).unwrap(), vec![5, 6, 7]);
        // A trailing half frame is dropped.
        streamed.push(9);
        assert_eq!(decode(&streamed).unwrap(), vec![5, 6, 7]);
        // A damaged chunk after fmt and data is ignored.
        let mut tail = wav(1, 1, 8_000, 16, &data);
        tail.extend_from_slice(b"LIST\xff\xff\xff\x7fab");
        assert_eq!(decode(&tail).unwrap(), vec![5, 6, 7]);
    }

    #[test]
    fn malformed_wavs_are_named_errors() {
        let data = le16(&[1.0; 16]);
        let good = wav(1, 1, 8_000, 16, &data);
        let e = |b: &[u8]| decode(b).unwrap_err().to_string();
        assert_eq!(e(b""), "not a WAV or MP3 file");
        assert_eq!(e(b"hello world, this is text"), "not a WAV or MP3 file");
        assert_eq!(e(b"RIFF\x10\0\0\0AVI LIST"), "not a WAV or MP3 file");
        assert_eq!(e(b"RIFF"), "WAV is truncated: RIFF header");
        assert_eq!(e(b"RIFF\0\0\0\0WAVE"), "WAV has no fmt chunk");
        assert_eq!(e(&riff(&[(b"data", &data)])), "WAV has no fmt chunk");
        assert_eq!(e(&good[..36]), "WAV has no data chunk");
        assert_eq!(
            e(&wav(85, 1, 8_000, 16, &data)),
            "unsupported WAV format tag 85"
        );
        assert_eq!(
            e(&wav(2, 1, 8_000, 4, &data)),
            "unsupported WAV format tag 2"
        );
        assert_eq!(
            e(&wav(1, 0, 8_000, 16, &data)),
            "WAV has 0 channels (1 to 32 are supported)"
        );
        assert_eq!(
            e(&wav(1, 33, 8_000, 16, &data)),
            "WAV has 33 channels (1 to 32 are supported)"
        );
        assert_eq!(
            e(&wav(1, 1, 96_000, 16, &data)),
            "sample rate 96000 Hz is outside 8000-48000 Hz"
        );
        assert_eq!(
            e(&wav(1, 1, 4_000, 16, &data)),
            "sample rate 4000 Hz is outside 8000-48000 Hz"
        );
        assert_eq!(
            e(&wav(1, 1, 0, 16, &data)),
            "sample rate 0 Hz is outside 8000-48000 Hz"
        );
        assert_eq!(
            e(&wav(7, 1, 8_000, 16, &data)),
            "unsupported WAV sample size: 16 bits in 2 bytes for format tag 7"
        );
        assert_eq!(
            e(&wav(3, 1, 8_000, 16, &data)),
            "unsupported WAV sample size: 16 bits in 2 bytes for format tag 3"
        );
        assert!(e(&wav(1, 1, 8_000, 0, &data)).starts_with("unsupported WAV sample size"));
        assert!(e(&wav(1, 1, 8_000, 72, &data)).starts_with("unsupported WAV sample size"));
        // fmt shorter than 16 bytes.
        assert_eq!(
            e(&riff(&[(b"fmt ", &[1, 0, 1, 0]), (b"data", &data)])),
            "WAV is truncated: fmt chunk shorter than 16 bytes"
        );
        // A huge declared size on a chunk before the data.
        let mut huge = good.clone();
        huge[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            e(&huge),
            format!(
                "WAV chunk \"fmt \" at byte 12 declares 4294967295 bytes but only {} remain",
                good.len() - 20
            )
        );
        // Longer than 300 s (µ-law keeps the test small).
        let long = wav(7, 1, 8_000, 8, &vec![0xFF; 8_000 * 300 + 1]);
        assert_eq!(e(&long), "audio is longer than 300 s");
        assert_eq!(
            decode(&wav(7, 1, 8_000, 8, &vec![0xFF; 8_000 * 300]))
                .unwrap()
                .len(),
            2_400_000
        );
    }

    #[test]
    fn no_prefix_of_a_file_and_no_random_bytes_panic() {
        let good = wav(
            1,
            2,
            22_050,
            16,
            &le16(&sine(22_050, 440.0, 9_000.0, 2_000)),
        );
        for n in 0..good.len() {
            let _ = decode(&good[..n]);
        }
        let mp3 = tiny_mp3();
        for n in 0..mp3.len() {
            let _ = decode(&mp3[..n]);
        }
        let mut rng = fastrand::Rng::with_seed(7);
        for i in 0..3_000 {
            let len = rng.usize(0..600);
            let mut b: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
            // Give a third of them a plausible start so the parsers run.
            match i % 3 {
                0 if len >= 12 => b[..12].copy_from_slice(b"RIFF\xff\xff\xff\xffWAVE"),
                1 if len >= 4 => b[..4].copy_from_slice(&[0xFF, 0xF3, 0x28, 0xC4]),
                _ => {}
            }
            let _ = decode(&b);
        }
        // Fuzz the fields of a real header.
        for _ in 0..3_000 {
            let mut b = good.clone();
            for _ in 0..rng.usize(1..4) {
                let at = rng.usize(0..44);
                b[at] = rng.u8(..);
            }
            let _ = decode(&b);
        }
    }

    /// 0.25 s of 1 kHz at 8 kHz mono, 8 kbit/s, with an ID3v2 tag (lame 3.100).
    fn tiny_mp3() -> Vec<u8> {
        const HEX: &[&str] = &[
        "49443303000000000056545353450000002f0000004c414d45203634626974732076657273696f6e20332e31",
        "30302028687474703a2f2f6c616d652e73662e6e6574295449543200000005000001fffe7400544c454e0000",
        "0004000000323530ffe318c4000c212ede59412800baedb661ddc018c6318c6360000000798c6318fc000017",
        "98c63fc00fffbfd4e1f000081c39863fc31d3d218e9ff019fee5c060281407230301c000ffe318c40a0fb13b",
        "5659858202090780611ff0e80a241eff122943bfe9178bc625d267ffd4919224c901059277f2d7f2d4240d7f",
        "fc15090342509035ffe250903455ffffffffffffffe318c4060d19564401c0f800ffd8a004260680422617d1",
        "a7a69bc09a66271065a60a600c260130060604380e80a01590ccc012002d5cb84a6d6f6affffffffffffff9b",
        "06816984ffe318c40c0c6156480140f000083e98735029f5f0c098a110a18c80671841036180a01a981f80f9",
        "808806a372906e902c5f3aec53142ff90e613f7cc18384fd9b63644ba709bfd0ffe318c415119986c40182a0",
        "005ba4624f8534b1b9549e16709685b80b3a2a1ae89929cddeeff1e8738a25051f3c5d3217f47d6641914340",
        "b37ffd6934ad7589cc2b30a90b0c2190ffe318c4090ce925dc01c118019cc42730c8510a10a90421909986aa",
        "9333743010118501130094178362e26851c0c1588a85c7e3fd37ceea4c414d45332e313030aaaaaaaaaaaaaa",
        "5441477400000000000000000000000000000000000000000000000000000000000000000000000000000000",
        "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
        "000000000000000000000000000000000000000000000000000000000000000000000000000000ff",
        ];
        let hex: String = HEX.concat();
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn mp3_with_an_id3_tag_decodes() {
        let mp3 = tiny_mp3();
        assert!(mp3.starts_with(b"ID3"));
        let pcm = decode(&mp3).unwrap();
        // lame pads the start and end (encoder delay): about 0.25-0.45 s.
        assert!(
            (1_800..=3_800).contains(&pcm.len()),
            "{} samples",
            pcm.len()
        );
        let peak = pcm.iter().map(|v| v.unsigned_abs()).max().unwrap();
        assert!(peak > 8_000, "peak {peak}");
        // Without the tag, from the first frame sync.
        let body = &mp3[id3v2_len(&mp3)..];
        assert!(looks_like_mp3(body));
        assert_eq!(decode(body).unwrap().len(), pcm.len());
        // Damaged frames after the first are skipped or decoded, never a panic.
        let mut damaged = mp3.clone();
        let n = damaged.len();
        for b in &mut damaged[n / 2..n / 2 + 40] {
            *b = 0x55;
        }
        let _ = decode(&damaged);
        // A frame sync followed by nothing decodable.
        let e = decode(&[0xFF, 0xFB, 0x90, 0x00, 1, 2, 3]).unwrap_err();
        assert!(matches!(e, AudioError::Mp3(_)), "{e}");
        assert!(e.to_string().starts_with("MP3 could not be decoded"), "{e}");
        assert_eq!(id3v2_len(b"ID3\x04\0\0\0\0\0\x0a"), 10);
        assert_eq!(id3v2_len(b"ID3\x04\0\x10\0\0\x01\x00abc"), 13);
    }
}
