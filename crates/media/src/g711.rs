//! G.711 µ-law (PCMU, payload type 0) and A-law (PCMA, payload type 8)
//! between 16-bit linear samples and 8-bit codes.
//!
//! Encoding follows the ITU-T G.711 segment rules (the same results as the
//! encoder the media processor has shipped so far); decoding goes through
//! 256-entry tables built at compile time, so the per-sample cost on the
//! packet path is one lookup. Each decoded value is the midpoint of the
//! code's quantisation interval, which makes decode then encode the
//! identity on codes (except µ-law's negative zero, see
//! [`ULAW_TO_LINEAR`]) and bounds the encode then decode error by half a
//! step of the segment.

/// µ-law bias added before the segment search (G.711: 33 in 14-bit units).
const ULAW_BIAS: i32 = 0x84;
/// Largest magnitude µ-law represents without overload.
const ULAW_CLIP: i32 = 32_635;

/// µ-law code → linear sample. Codes 0xFF (+0) and 0x7F (−0) both decode
/// to 0; 0 encodes as 0xFF, so 0xFF round-trips and 0x7F comes back as
/// 0xFF.
pub static ULAW_TO_LINEAR: [i16; 256] = build_table(false);

/// A-law code → linear sample (A-law has no negative zero: every code
/// round-trips).
pub static ALAW_TO_LINEAR: [i16; 256] = build_table(true);

const fn build_table(alaw: bool) -> [i16; 256] {
    let mut table = [0i16; 256];
    let mut code = 0;
    while code < 256 {
        table[code] = if alaw {
            alaw_decode(code as u8)
        } else {
            ulaw_decode(code as u8)
        };
        code += 1;
    }
    table
}

const fn ulaw_decode(code: u8) -> i16 {
    // Codes are transmitted inverted so that silence is not a run of zero bits.
    let u = !code;
    let exponent = ((u >> 4) & 0x07) as i32;
    let mantissa = (u & 0x0F) as i32;
    let magnitude = (((mantissa << 3) + ULAW_BIAS) << exponent) - ULAW_BIAS;
    if u & 0x80 != 0 {
        -magnitude as i16
    } else {
        magnitude as i16
    }
}

const fn alaw_decode(code: u8) -> i16 {
    // Even bits are inverted on the wire (the 0x55 mask).
    let a = code ^ 0x55;
    let exponent = ((a >> 4) & 0x07) as i32;
    let mantissa = (a & 0x0F) as i32;
    let magnitude = if exponent == 0 {
        (mantissa << 4) + 8
    } else {
        ((mantissa << 4) + 0x108) << (exponent - 1)
    };
    if a & 0x80 != 0 {
        magnitude as i16
    } else {
        -magnitude as i16
    }
}

/// G.711 µ-law encoding of one 16-bit linear sample. Magnitudes above
/// 32 635 overload to the largest code.
pub fn linear_to_ulaw(sample: i16) -> u8 {
    let mut s = i32::from(sample);
    let sign = if s < 0 {
        s = -s;
        0x80
    } else {
        0
    };
    s = s.min(ULAW_CLIP) + ULAW_BIAS;
    // s is in 132..=32767: its highest set bit (7..=14) gives the segment.
    let exponent = (31 - s.leading_zeros() as i32 - 7).clamp(0, 7);
    let mantissa = (s >> (exponent + 3)) & 0x0F;
    !((sign | (exponent << 4) | mantissa) as u8)
}

/// G.711 A-law encoding of one 16-bit linear sample.
pub fn linear_to_alaw(sample: i16) -> u8 {
    let (sign, magnitude) = if sample >= 0 {
        (0x80u8, i32::from(sample))
    } else {
        // One's complement: -1 maps to the smallest negative code, -32768 to
        // the largest, like the reference implementation.
        (0u8, -i32::from(sample) - 1)
    };
    // A-law codes 12 bits of magnitude.
    let m = magnitude >> 3;
    let code = if m < 32 {
        (m >> 1) as u8
    } else {
        let exponent = (31 - m.leading_zeros() as i32) - 4;
        ((exponent << 4) | ((m >> exponent) & 0x0F)) as u8
    };
    (code | sign) ^ 0x55
}

/// µ-law code → linear sample.
pub fn ulaw_to_linear(code: u8) -> i16 {
    ULAW_TO_LINEAR[usize::from(code)]
}

/// A-law code → linear sample.
pub fn alaw_to_linear(code: u8) -> i16 {
    ALAW_TO_LINEAR[usize::from(code)]
}

/// The two G.711 laws, as negotiated by their static RTP payload types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    /// µ-law, payload type 0.
    Pcmu,
    /// A-law, payload type 8.
    Pcma,
}

impl Codec {
    /// The codec of a static payload type: 0 → PCMU, 8 → PCMA, anything
    /// else → `None`.
    pub fn from_payload_type(payload_type: u8) -> Option<Codec> {
        match payload_type {
            0 => Some(Codec::Pcmu),
            8 => Some(Codec::Pcma),
            _ => None,
        }
    }

    /// The static RTP payload type.
    pub fn payload_type(self) -> u8 {
        match self {
            Codec::Pcmu => 0,
            Codec::Pcma => 8,
        }
    }

    /// Decodes `min(codes.len(), out.len())` samples into the front of `out`.
    pub fn decode(self, codes: &[u8], out: &mut [i16]) {
        let table = match self {
            Codec::Pcmu => &ULAW_TO_LINEAR,
            Codec::Pcma => &ALAW_TO_LINEAR,
        };
        for (o, &c) in out.iter_mut().zip(codes) {
            *o = table[usize::from(c)];
        }
    }

    /// Encodes `min(samples.len(), out.len())` samples into the front of `out`.
    pub fn encode(self, samples: &[i16], out: &mut [u8]) {
        let encode = match self {
            Codec::Pcmu => linear_to_ulaw,
            Codec::Pcma => linear_to_alaw,
        };
        for (o, &s) in out.iter_mut().zip(samples) {
            *o = encode(s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_points() {
        assert_eq!(linear_to_ulaw(0), 0xFF);
        assert_eq!(linear_to_ulaw(-1), 0x7F);
        assert_eq!(linear_to_ulaw(32_767), 0x80);
        assert_eq!(linear_to_ulaw(-32_768), 0x00);
        assert_eq!(linear_to_alaw(0), 0xD5);
        assert_eq!(linear_to_alaw(-1), 0x55);
        assert_eq!(linear_to_alaw(32_767), 0xAA);
        assert_eq!(ulaw_to_linear(0xFF), 0);
        assert_eq!(ulaw_to_linear(0x7F), 0);
        assert_eq!(ulaw_to_linear(0x80), 32_124);
        assert_eq!(ulaw_to_linear(0x00), -32_124);
        assert_eq!(alaw_to_linear(0xD5), 8);
        assert_eq!(alaw_to_linear(0x55), -8);
        assert_eq!(alaw_to_linear(0xAA), 32_256);
        assert_eq!(alaw_to_linear(0x2A), -32_256);
    }

    #[test]
    fn every_ulaw_code_round_trips_except_negative_zero() {
        for code in 0..=255u8 {
            let back = linear_to_ulaw(ulaw_to_linear(code));
            if code == 0x7F {
                // −0 decodes to 0, and 0 is coded as +0 (0xFF).
                assert_eq!(back, 0xFF);
            } else {
                assert_eq!(back, code, "code {code:#04x}");
            }
        }
    }

    #[test]
    fn every_alaw_code_round_trips() {
        for code in 0..=255u8 {
            assert_eq!(
                linear_to_alaw(alaw_to_linear(code)),
                code,
                "code {code:#04x}"
            );
        }
    }

    /// Half the width of the quantisation interval a code stands for.
    fn ulaw_half_step(code: u8) -> i32 {
        4 << ((!code >> 4) & 0x07)
    }

    fn alaw_half_step(code: u8) -> i32 {
        let exponent = ((code ^ 0x55) >> 4) & 0x07;
        8 << exponent.saturating_sub(1)
    }

    #[test]
    fn every_sample_decodes_within_half_a_step_and_monotonically() {
        let mut prev_u = i32::MIN;
        let mut prev_a = i32::MIN;
        for x in i16::MIN..=i16::MAX {
            let xi = i32::from(x);

            let cu = linear_to_ulaw(x);
            let yu = i32::from(ulaw_to_linear(cu));
            assert!(yu >= prev_u, "µ-law not monotonic at {x}");
            prev_u = yu;
            if xi.abs() <= ULAW_CLIP {
                assert!((yu - xi).abs() <= ulaw_half_step(cu), "µ-law {x} → {yu}");
            } else {
                // Overload: the extreme code of the sign.
                assert_eq!(cu, if x > 0 { 0x80 } else { 0x00 });
            }

            let ca = linear_to_alaw(x);
            let ya = i32::from(alaw_to_linear(ca));
            assert!(ya >= prev_a, "A-law not monotonic at {x}");
            prev_a = ya;
            assert!((ya - xi).abs() <= alaw_half_step(ca), "A-law {x} → {ya}");
        }
    }

    #[test]
    fn tables_match_the_const_decoders() {
        for code in 0..=255u8 {
            assert_eq!(ULAW_TO_LINEAR[usize::from(code)], ulaw_decode(code));
            assert_eq!(ALAW_TO_LINEAR[usize::from(code)], alaw_decode(code));
        }
    }

    #[test]
    fn codec_payload_types_and_buffers() {
        assert_eq!(Codec::from_payload_type(0), Some(Codec::Pcmu));
        assert_eq!(Codec::from_payload_type(8), Some(Codec::Pcma));
        assert_eq!(Codec::from_payload_type(9), None);
        assert_eq!(Codec::from_payload_type(101), None);
        for codec in [Codec::Pcmu, Codec::Pcma] {
            assert_eq!(Codec::from_payload_type(codec.payload_type()), Some(codec));
            let pcm: Vec<i16> = (0..160)
                .map(|i| ((i * 409) % 20_000 - 10_000) as i16)
                .collect();
            let mut codes = [0u8; 160];
            codec.encode(&pcm, &mut codes);
            let mut back = [0i16; 160];
            codec.decode(&codes, &mut back);
            let mut again = [0u8; 160];
            codec.encode(&back, &mut again);
            assert_eq!(codes, again);
            // Mismatched lengths touch only the common prefix.
            let mut short = [7i16; 4];
            codec.decode(&codes[..2], &mut short);
            assert_eq!(short[2..], [7, 7]);
        }
    }
}
