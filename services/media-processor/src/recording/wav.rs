//! The recording file: 8 kHz, 16-bit, stereo PCM WAV (left: the callee as
//! heard after the jitter buffer, right: what we sent), written frame by
//! frame with the sizes patched into the header when it is closed.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::Path;

/// Sample rate.
pub const RATE: u32 = 8_000;
/// Channels.
pub const CHANNELS: u16 = 2;
/// Bytes of the canonical header.
pub const HEADER_LEN: u64 = 44;

/// The 44-byte header of a PCM WAV with `data_len` bytes of samples.
pub fn header(data_len: u32) -> [u8; 44] {
    let block_align = CHANNELS * 2;
    let mut h = [0u8; 44];
    h[0..4].copy_from_slice(b"RIFF");
    h[4..8].copy_from_slice(&data_len.saturating_add(36).to_le_bytes());
    h[8..12].copy_from_slice(b"WAVE");
    h[12..16].copy_from_slice(b"fmt ");
    h[16..20].copy_from_slice(&16u32.to_le_bytes());
    h[20..22].copy_from_slice(&1u16.to_le_bytes()); // PCM
    h[22..24].copy_from_slice(&CHANNELS.to_le_bytes());
    h[24..28].copy_from_slice(&RATE.to_le_bytes());
    h[28..32].copy_from_slice(&(RATE * u32::from(block_align)).to_le_bytes());
    h[32..34].copy_from_slice(&block_align.to_le_bytes());
    h[34..36].copy_from_slice(&16u16.to_le_bytes());
    h[36..40].copy_from_slice(b"data");
    h[40..44].copy_from_slice(&data_len.to_le_bytes());
    h
}

/// An open recording.
pub struct WavWriter {
    out: BufWriter<File>,
    bytes: Vec<u8>,
    /// Stereo sample frames written.
    pub frames: u64,
}

impl WavWriter {
    /// Creates `path` with a provisional header.
    pub fn create(path: &Path) -> std::io::Result<Self> {
        let mut out = BufWriter::with_capacity(128 * 1024, File::create(path)?);
        out.write_all(&header(0))?;
        Ok(Self {
            out,
            bytes: Vec::new(),
            frames: 0,
        })
    }

    /// Appends interleaved stereo samples (left, right, left, ...).
    pub fn write_interleaved(&mut self, samples: &[i16]) -> std::io::Result<()> {
        self.bytes.clear();
        self.bytes
            .extend(samples.iter().flat_map(|s| s.to_le_bytes()));
        self.out.write_all(&self.bytes)?;
        self.frames += (samples.len() / 2) as u64;
        Ok(())
    }

    /// Writes the final sizes and syncs the file to disk; returns the file
    /// length.
    pub fn finish(mut self) -> std::io::Result<u64> {
        let data_len = self.frames * u64::from(CHANNELS) * 2;
        let data_len32 = u32::try_from(data_len)
            .map_err(|_| std::io::Error::other("recording longer than a WAV can hold"))?;
        self.out.flush()?;
        let mut file = self.out.into_inner().map_err(|e| e.into_error())?;
        file.seek(SeekFrom::Start(0))?;
        file.write_all(&header(data_len32))?;
        file.sync_all()?;
        Ok(HEADER_LEN + data_len)
    }
}

/// Duration of `frames` stereo sample frames (ms).
pub fn duration_ms(frames: u64) -> u64 {
    frames * 1_000 / u64::from(RATE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_and_samples_round_trip() {
        let dir = std::env::temp_dir().join(format!("wav-{}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.wav");
        let mut w = WavWriter::create(&path).unwrap();
        let samples: Vec<i16> = (0..16_000).map(|i| (i as i16).wrapping_mul(7)).collect();
        w.write_interleaved(&samples).unwrap();
        assert_eq!(w.frames, 8_000);
        let len = w.finish().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len() as u64, len);
        assert_eq!(&bytes[0..4], b"RIFF");
        assert_eq!(
            u32::from_le_bytes(bytes[4..8].try_into().unwrap()),
            36 + 32_000
        );
        assert_eq!(
            u32::from_le_bytes(bytes[40..44].try_into().unwrap()),
            32_000
        );
        assert_eq!(u16::from_le_bytes(bytes[22..24].try_into().unwrap()), 2);
        assert_eq!(u32::from_le_bytes(bytes[24..28].try_into().unwrap()), 8_000);
        let back: Vec<i16> = bytes[44..]
            .chunks(2)
            .map(|c| i16::from_le_bytes([c[0], c[1]]))
            .collect();
        assert_eq!(back, samples);
        assert_eq!(duration_ms(8_000), 1_000);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
