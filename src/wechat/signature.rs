//! The SHA-1 signatures of protocol §1.2 (`signature`) and §2.5 (`msg_signature`): sort the
//! strings byte-wise, concatenate, SHA-1, lowercase hex.

use sha1::{Digest, Sha1};
use subtle::ConstantTimeEq;

/// `hex(sha1(concat(sort(parts))))`, lowercase. `str`'s `Ord` is byte order, which is what
/// WeChat sorts by.
pub fn sign(parts: &[&str]) -> String {
    let mut sorted: Vec<&str> = parts.to_vec();
    sorted.sort_unstable();
    let mut h = Sha1::new();
    for p in sorted {
        h.update(p.as_bytes());
    }
    hex::encode(h.finalize())
}

/// Whether `expected_hex` is the signature of `parts`. Case-insensitive (WeChat sends lowercase,
/// but nothing forbids uppercase hex) and constant-time, so a forger learns nothing from timing.
pub fn verify(expected_hex: &str, parts: &[&str]) -> bool {
    let ours = sign(parts);
    let theirs = expected_hex.trim().to_ascii_lowercase();
    // Length is public (always 40 for a real signature); only the content is compared in
    // constant time.
    theirs.len() == ours.len() && bool::from(ours.as_bytes().ct_eq(theirs.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::wechat::vectors;

    /// Protocol §1.3 H1–H3, including the sorted concatenation each names.
    #[test]
    fn handshake_vectors() {
        let all = vectors::all();
        let cases = all["handshake"].as_array().unwrap();
        assert_eq!(cases.len(), 3);
        for c in cases {
            let s = |k: &str| c[k].as_str().unwrap();
            let (token, ts, nonce, want) = (s("token"), s("timestamp"), s("nonce"), s("signature"));
            let mut sorted = [token, ts, nonce];
            sorted.sort();
            assert_eq!(sorted.concat(), s("sorted"), "{}", s("name"));
            assert_eq!(sign(&[token, ts, nonce]), want, "{}", s("name"));
            assert!(verify(want, &[token, ts, nonce]));
            assert!(verify(&want.to_ascii_uppercase(), &[nonce, token, ts]), "order-free");
        }
    }

    #[test]
    fn h3_with_last_digit_changed_is_rejected() {
        let bad = vectors::all()["handshake"][2]["bad_signature"].as_str().unwrap().to_string();
        assert!(!verify(&bad, &["test", "1410685589", "test"]));
    }

    #[test]
    fn wrong_length_and_garbage_are_rejected() {
        let parts = ["test", "1410685589", "test"];
        assert!(!verify("", &parts));
        assert!(!verify("f21891de", &parts));
        assert!(!verify("f21891de399b4e33a1a93c9a7b8a8fffb5a443ff00", &parts));
        assert!(!verify("不是签名", &parts));
    }

    /// Protocol §2.7: msg_signature over four strings (E1, E4, E5 and E3).
    #[test]
    fn msg_signature_vectors() {
        for (sec, token) in
            [("e1", "pamtest"), ("e2", "pamtest"), ("e3", "pamtest"), ("e4", "pamtest")]
        {
            let v = |k| vectors::get(sec, k);
            let parts = [token, &v("timestamp"), &v("nonce"), &v("encrypt")];
            assert_eq!(sign(&parts), v("msg_signature"), "{sec}");
        }
        let v = |k| vectors::get("e5", k);
        assert!(verify(
            &v("msg_signature"),
            &[&v("token"), &v("timestamp"), &v("nonce"), &v("encrypt")]
        ));
    }
}
