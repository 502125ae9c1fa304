//! Safe-mode message crypto (protocol §2.3–§2.7): AES-256-CBC keyed by the EncodingAESKey, IV =
//! the key's first 16 bytes, PKCS#7 to 32-byte blocks, plaintext = 16 random bytes ‖ u32 BE
//! length ‖ XML ‖ appid. Pure functions; any input gives a value or a `CryptoError`, never a panic.

use std::fmt;

use aes::Aes256;
use base64::Engine;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use cbc::cipher::block_padding::NoPadding;
use cbc::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use rand::RngCore;

/// WeChat pads to 32-byte blocks, not AES's 16 (protocol §2.3 step 4).
const PAD_BLOCK: usize = 32;
/// 16 random bytes + the 4-byte length.
const HEADER: usize = 20;

/// Decodes like the SDKs' decoders do: the last symbol's unused bits may be non-zero (the §2.7
/// trap: three random EncodingAESKeys in four have them), and `=` padding is optional.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Why a key or a ciphertext was refused. Messages never include key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    #[error(
        "the EncodingAESKey must be exactly 43 letters and digits (got {0} characters): copy it \
         again from the server configuration page"
    )]
    BadKey(usize),
    #[error("the Encrypt element is not valid base64")]
    Base64,
    #[error("the ciphertext is {0} bytes; it must be a non-zero multiple of 16")]
    Length(usize),
    #[error("the decrypted data has invalid PKCS#7 padding (wrong key, or corrupted ciphertext)")]
    Padding,
    #[error("the decrypted data is too short or its length field does not fit")]
    Layout,
    #[error("the decrypted message is not valid UTF-8")]
    Utf8,
}

impl CryptoError {
    /// A short stable label for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            CryptoError::BadKey(_) => "bad_aes_key",
            CryptoError::Base64 => "bad_base64",
            CryptoError::Length(_) => "bad_cipher_length",
            CryptoError::Padding => "bad_padding",
            CryptoError::Layout => "bad_layout",
            CryptoError::Utf8 => "bad_utf8_plaintext",
        }
    }
}

/// The 32-byte AES key derived from an EncodingAESKey. `Debug` prints nothing of it.
#[derive(Clone, PartialEq, Eq)]
pub struct AesKey([u8; 32]);

impl fmt::Debug for AesKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AesKey([redacted])")
    }
}

impl AesKey {
    /// `base64(EncodingAESKey + "=")` (protocol §2.3 step 2), tolerating non-zero trailing bits.
    pub fn from_encoding_aes_key(encoding_aes_key: &str) -> Result<AesKey, CryptoError> {
        let s = encoding_aes_key.trim();
        if s.len() != 43 || !s.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(CryptoError::BadKey(s.chars().count()));
        }
        let bytes = LENIENT.decode(format!("{s}=")).map_err(|_| CryptoError::BadKey(43))?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| CryptoError::BadKey(43))?;
        Ok(AesKey(key))
    }

    /// The raw key bytes (tests and the fuzz harness build ciphertexts with them).
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    fn iv(&self) -> [u8; 16] {
        let mut iv = [0u8; 16];
        iv.copy_from_slice(&self.0[..16]);
        iv
    }

    /// Decrypts an `Encrypt` value into `(xml, appid)` (protocol §2.5 step 4). The appid is
    /// returned, not checked: the caller knows which appid it expects.
    pub fn decrypt(&self, encrypt_b64: &str) -> Result<(String, String), CryptoError> {
        let mut buf = LENIENT.decode(encrypt_b64.trim()).map_err(|_| CryptoError::Base64)?;
        if buf.is_empty() || buf.len() % 16 != 0 {
            return Err(CryptoError::Length(buf.len()));
        }
        // RustCrypto's Pkcs7 would refuse WeChat's pad values 17..=32 (§2.7 trap 2), so the
        // cipher runs unpadded and the 32-byte padding is stripped here.
        let n = buf.len();
        let plain = cbc::Decryptor::<Aes256>::new(&self.0.into(), &self.iv().into())
            .decrypt_padded_mut::<NoPadding>(&mut buf)
            .map_err(|_| CryptoError::Length(n))?;
        let plain = strip_padding(plain)?;
        if plain.len() < HEADER {
            return Err(CryptoError::Layout);
        }
        let mut len = [0u8; 4];
        len.copy_from_slice(&plain[16..HEADER]);
        let len = u32::from_be_bytes(len) as usize;
        let rest = &plain[HEADER..];
        if len > rest.len() {
            return Err(CryptoError::Layout);
        }
        let (xml, appid) = rest.split_at(len);
        let xml = std::str::from_utf8(xml).map_err(|_| CryptoError::Utf8)?;
        let appid = std::str::from_utf8(appid).map_err(|_| CryptoError::Utf8)?;
        Ok((xml.to_string(), appid.to_string()))
    }

    /// Encrypts `xml` for `appid` with fresh random bytes (protocol §2.6 step 2).
    pub fn encrypt(&self, xml: &str, appid: &str) -> String {
        let mut random = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut random);
        self.encrypt_with_random(&random, xml, appid)
    }

    /// The same with the 16 random bytes given, for reproducible vectors (E1, E2, E4).
    pub fn encrypt_with_random(&self, random: &[u8; 16], xml: &str, appid: &str) -> String {
        let body_len = HEADER + xml.len() + appid.len();
        let pad = PAD_BLOCK - body_len % PAD_BLOCK;
        let mut buf = Vec::with_capacity(body_len + pad);
        buf.extend_from_slice(random);
        // A push larger than 4 GiB cannot reach here (bodies are capped long before).
        buf.extend_from_slice(&(xml.len() as u32).to_be_bytes());
        buf.extend_from_slice(xml.as_bytes());
        buf.extend_from_slice(appid.as_bytes());
        buf.resize(body_len + pad, pad as u8);
        let n = buf.len();
        let cipher = cbc::Encryptor::<Aes256>::new(&self.0.into(), &self.iv().into())
            .encrypt_padded_mut::<NoPadding>(&mut buf, n)
            .map(<[u8]>::to_vec)
            .unwrap_or_default(); // unreachable: n is a multiple of 32
        base64::engine::general_purpose::STANDARD.encode(cipher)
    }
}

/// Strips PKCS#7 padding with block size 32: the last byte `p` is in 1..=32 and the last `p`
/// bytes all equal `p`.
fn strip_padding(plain: &[u8]) -> Result<&[u8], CryptoError> {
    let p = *plain.last().ok_or(CryptoError::Padding)? as usize;
    if p == 0 || p > PAD_BLOCK || p > plain.len() {
        return Err(CryptoError::Padding);
    }
    let (body, pad) = plain.split_at(plain.len() - p);
    if pad.iter().any(|&b| b as usize != p) {
        return Err(CryptoError::Padding);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wechat::vectors::{get, int};

    fn k1() -> AesKey {
        AesKey::from_encoding_aes_key(&get("k1", "encoding_aes_key")).unwrap()
    }

    fn random(sec: &str) -> [u8; 16] {
        get(sec, "random").as_bytes().try_into().unwrap()
    }

    /// Raw CBC decryption without unpadding, to look at the padding itself.
    fn raw_plain(key: &AesKey, b64: &str) -> Vec<u8> {
        let mut buf = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
        cbc::Decryptor::<Aes256>::new(&key.0.into(), &key.iv().into())
            .decrypt_padded_mut::<NoPadding>(&mut buf)
            .unwrap()
            .to_vec()
    }

    #[test]
    fn k1_derivation_and_the_trailing_bits_trap() {
        let k = k1();
        assert_eq!(hex::encode(k.as_bytes()), get("k1", "aes_key_hex"));
        assert_eq!(hex::encode(k.iv()), get("k1", "iv_hex"));
        // The strict decoder refuses this key: the reason `LENIENT` exists.
        let strict = base64::engine::general_purpose::STANDARD
            .decode(format!("{}=", get("k1", "encoding_aes_key")));
        assert!(strict.is_err());
        // E5's key is non-canonical too.
        assert!(AesKey::from_encoding_aes_key(&get("e5", "encoding_aes_key")).is_ok());
    }

    #[test]
    fn bad_keys_are_refused_with_the_length() {
        assert_eq!(AesKey::from_encoding_aes_key("short"), Err(CryptoError::BadKey(5)));
        let with_symbol = format!("{}+", &get("k1", "encoding_aes_key")[..42]);
        assert_eq!(AesKey::from_encoding_aes_key(&with_symbol), Err(CryptoError::BadKey(43)));
        assert!(!format!("{:?}", k1()).contains("69b7"));
    }

    #[test]
    fn e1_deterministic_encryption_with_chinese() {
        let msg = get("e1", "msg");
        assert_eq!(msg.len() as i64, int("e1", "msg_len"));
        let enc = k1().encrypt_with_random(&random("e1"), &msg, &get("k1", "app_id"));
        assert_eq!(enc, get("e1", "encrypt"));
        let plain = raw_plain(&k1(), &enc);
        assert_eq!(&plain[16..20], &[0, 0, 0, 0x13]);
        assert_eq!(*plain.last().unwrap() as i64, int("e1", "pad"));
        assert_eq!(k1().decrypt(&enc).unwrap(), (msg, get("k1", "app_id")));
    }

    #[test]
    fn e2_and_e4_reply_encryption() {
        for sec in ["e2", "e4"] {
            let msg = get(sec, "msg");
            let enc = k1().encrypt_with_random(&random(sec), &msg, &get("k1", "app_id"));
            assert_eq!(enc, get(sec, "encrypt"), "{sec}");
            assert_eq!(k1().decrypt(&enc).unwrap().0, msg, "{sec}");
        }
    }

    #[test]
    fn e3_decrypts_despite_pad_21() {
        let enc = get("e3", "encrypt");
        let plain = raw_plain(&k1(), &enc);
        assert_eq!(*plain.last().unwrap() as i64, int("e3", "pad"));
        assert_eq!(&plain[..16], get("e3", "random").as_bytes());
        // The trap: RustCrypto's 16-byte Pkcs7 refuses this plaintext.
        let mut buf = base64::engine::general_purpose::STANDARD.decode(&enc).unwrap();
        assert!(
            cbc::Decryptor::<Aes256>::new(&k1().0.into(), &k1().iv().into())
                .decrypt_padded_mut::<cbc::cipher::block_padding::Pkcs7>(&mut buf)
                .is_err()
        );
        let (xml, appid) = k1().decrypt(&enc).unwrap();
        assert_eq!(xml.len() as i64, int("e3", "msg_len"));
        assert_eq!(xml, get("e3", "msg"));
        assert_eq!(appid, get("k1", "app_id"));
    }

    #[test]
    fn e5_second_key() {
        let k = AesKey::from_encoding_aes_key(&get("e5", "encoding_aes_key")).unwrap();
        let enc = get("e5", "encrypt");
        assert_eq!(*raw_plain(&k, &enc).last().unwrap() as i64, int("e5", "pad"));
        let (xml, appid) = k.decrypt(&enc).unwrap();
        assert_eq!(appid, get("e5", "app_id"));
        assert!(xml.contains("<Content><![CDATA[test]]></Content>"), "{xml}");
        assert!(xml.contains("<FromUserName><![CDATA[messense]]></FromUserName>"), "{xml}");
        // The wrong key does not decrypt it.
        assert!(k1().decrypt(&enc).is_err());
    }

    #[test]
    fn full_block_of_padding_when_aligned() {
        // 20 + 12 = 32: the pad is a whole block of 32 bytes of value 32.
        let enc = k1().encrypt_with_random(&[b'r'; 16], "<xml>12</xml>", "");
        let enc2 = k1().encrypt_with_random(&[b'r'; 16], "<xml>1</xml>", "");
        let plain = raw_plain(&k1(), &enc2);
        assert_eq!(plain.len(), 64);
        assert_eq!(plain[32..], [32u8; 32]);
        assert_eq!(k1().decrypt(&enc2).unwrap().0, "<xml>1</xml>");
        assert_eq!(k1().decrypt(&enc).unwrap().0, "<xml>12</xml>");
    }

    #[test]
    fn random_bytes_differ_between_encryptions() {
        let a = k1().encrypt("<xml/>", "wx1");
        let b = k1().encrypt("<xml/>", "wx1");
        assert_ne!(a, b);
        assert_eq!(k1().decrypt(&a).unwrap(), ("<xml/>".into(), "wx1".into()));
    }

    #[test]
    fn negative_cases() {
        let k = k1();
        assert_eq!(k.decrypt("not base64 !!"), Err(CryptoError::Base64));
        assert_eq!(k.decrypt(""), Err(CryptoError::Length(0)));
        assert_eq!(k.decrypt("AAAA"), Err(CryptoError::Length(3)));
        // Truncated E3: a whole number of blocks, but the padding no longer matches.
        let e3 = base64::engine::general_purpose::STANDARD.decode(get("e3", "encrypt")).unwrap();
        let cut = base64::engine::general_purpose::STANDARD.encode(&e3[..e3.len() - 16]);
        assert!(matches!(k.decrypt(&cut), Err(CryptoError::Padding | CryptoError::Layout)));
        // A flipped bit in the last block breaks the padding.
        let mut flipped = e3.clone();
        let n = flipped.len();
        flipped[n - 1] ^= 0x55;
        let flipped = base64::engine::general_purpose::STANDARD.encode(&flipped);
        assert!(k.decrypt(&flipped).is_err());
    }

    /// Hand-built plaintexts reach every layout check.
    #[test]
    fn layout_checks() {
        let enc_raw = |plain: &[u8]| {
            let mut buf = plain.to_vec();
            let n = buf.len();
            let c = cbc::Encryptor::<Aes256>::new(&k1().0.into(), &k1().iv().into())
                .encrypt_padded_mut::<NoPadding>(&mut buf, n)
                .unwrap()
                .to_vec();
            base64::engine::general_purpose::STANDARD.encode(c)
        };
        // Pad byte 0 and pad byte 33 are invalid.
        assert_eq!(k1().decrypt(&enc_raw(&[0u8; 32])), Err(CryptoError::Padding));
        assert_eq!(k1().decrypt(&enc_raw(&[33u8; 64])), Err(CryptoError::Padding));
        // Inconsistent pad bytes.
        let mut p = vec![b'x'; 32];
        p[31] = 3;
        p[30] = 3;
        assert_eq!(k1().decrypt(&enc_raw(&p)), Err(CryptoError::Padding));
        // Valid padding, but shorter than the 20-byte header.
        let mut p = vec![b'x'; 32];
        p[16..].fill(16);
        assert_eq!(k1().decrypt(&enc_raw(&p)), Err(CryptoError::Layout));
        // A length field larger than what follows.
        let mut p = vec![b'x'; 32];
        p[16..20].copy_from_slice(&100u32.to_be_bytes());
        p[28..].fill(4);
        assert_eq!(k1().decrypt(&enc_raw(&p)), Err(CryptoError::Layout));
        // u32::MAX must not overflow anything.
        p[16..20].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(k1().decrypt(&enc_raw(&p)), Err(CryptoError::Layout));
        // Invalid UTF-8 in the message.
        let mut p = vec![b'x'; 32];
        p[16..20].copy_from_slice(&2u32.to_be_bytes());
        p[20] = 0xff;
        p[21] = 0xfe;
        p[22..].fill(10);
        assert_eq!(k1().decrypt(&enc_raw(&p)), Err(CryptoError::Utf8));
    }
}
