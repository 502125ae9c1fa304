//! Media files named in replies, without I/O beyond reading the file: the upload types
//! ([`MediaType`]), the reference a compiled reply carries instead of a media id
//! ([`MediaRef`]), and the check of a file against WeChat's rules ([`inspect`]: it exists, its
//! content is of an accepted format by its magic bytes, it is within the size limit).
//!
//! Pure and dependency-free like `model`, so `rules` (which writes references), `store` (which
//! keys the cache by them) and `media` (which uploads) can all use it.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A temporary-media upload type: the `type` of `POST /cgi-bin/media/upload` (interface §9).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MediaType {
    /// bmp/png/jpeg/gif, ≤ 10 MB.
    Image,
    /// amr/mp3, ≤ 2 MB.
    Voice,
    /// mp4, ≤ 10 MB.
    Video,
    /// A thumbnail (video, music and mini-program cards): jpg, ≤ 64 KB.
    Thumb,
}

impl MediaType {
    /// Every type, in the order `kefu media list` shows them.
    pub const ALL: [MediaType; 4] =
        [MediaType::Image, MediaType::Voice, MediaType::Video, MediaType::Thumb];

    /// The `type` query value and the store's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            MediaType::Image => "image",
            MediaType::Voice => "voice",
            MediaType::Video => "video",
            MediaType::Thumb => "thumb",
        }
    }

    pub fn parse(s: &str) -> Option<MediaType> {
        MediaType::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// WeChat's size limit for temporary media of this type, in bytes.
    pub fn max_bytes(self) -> u64 {
        const MB: u64 = 1024 * 1024;
        match self {
            MediaType::Image | MediaType::Video => 10 * MB,
            MediaType::Voice => 2 * MB,
            MediaType::Thumb => 64 * 1024,
        }
    }

    /// The limit as an operator reads it.
    fn limit_text(self) -> &'static str {
        match self {
            MediaType::Image | MediaType::Video => "10 MB",
            MediaType::Voice => "2 MB",
            MediaType::Thumb => "64 KB",
        }
    }

    /// The formats WeChat accepts for this type.
    fn accepts(self, f: Format) -> bool {
        use Format::*;
        match self {
            MediaType::Image => matches!(f, Png | Jpeg | Gif | Bmp),
            MediaType::Voice => matches!(f, Amr | Mp3),
            MediaType::Video => matches!(f, Mp4),
            MediaType::Thumb => matches!(f, Jpeg),
        }
    }

    fn accepted_text(self) -> &'static str {
        match self {
            MediaType::Image => "bmp, png, jpeg/jpg or gif",
            MediaType::Voice => "amr or mp3",
            MediaType::Video => "mp4",
            MediaType::Thumb => "jpeg/jpg",
        }
    }

    /// The type a file of this format is uploaded as when none is given (`kefu media upload`).
    pub fn of_format(f: Format) -> MediaType {
        match f {
            Format::Png | Format::Jpeg | Format::Gif | Format::Bmp => MediaType::Image,
            Format::Amr | Format::Mp3 => MediaType::Voice,
            Format::Mp4 => MediaType::Video,
        }
    }
}

impl fmt::Display for MediaType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A file format recognized by its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Png,
    Jpeg,
    Gif,
    Bmp,
    Amr,
    Mp3,
    Mp4,
}

impl Format {
    /// The format of content starting with `head` (at least the first 12 bytes when the file
    /// has them): PNG signature, JPEG SOI `FF D8 FF`, `GIF87a`/`GIF89a`, `BM`, `#!AMR`, an ID3
    /// tag or an MPEG audio frame sync (`FF Ex`/`FF Fx`), an ISO-BMFF `ftyp` box at offset 4.
    pub fn sniff(head: &[u8]) -> Option<Format> {
        if head.starts_with(b"\x89PNG\r\n\x1a\n") {
            Some(Format::Png)
        } else if head.starts_with(&[0xFF, 0xD8, 0xFF]) {
            Some(Format::Jpeg)
        } else if head.starts_with(b"GIF87a") || head.starts_with(b"GIF89a") {
            Some(Format::Gif)
        } else if head.starts_with(b"BM") && head.len() >= 14 {
            Some(Format::Bmp)
        } else if head.starts_with(b"#!AMR") {
            Some(Format::Amr)
        } else if head.starts_with(b"ID3")
            || (head.len() >= 2 && head[0] == 0xFF && head[1] >= 0xE0)
        {
            Some(Format::Mp3)
        } else if head.len() >= 8 && &head[4..8] == b"ftyp" {
            Some(Format::Mp4)
        } else {
            None
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Format::Png => "png",
            Format::Jpeg => "jpeg",
            Format::Gif => "gif",
            Format::Bmp => "bmp",
            Format::Amr => "amr",
            Format::Mp3 => "mp3",
            Format::Mp4 => "mp4",
        }
    }

    /// The Content-Type of the multipart part.
    pub fn mime(self) -> &'static str {
        match self {
            Format::Png => "image/png",
            Format::Jpeg => "image/jpeg",
            Format::Gif => "image/gif",
            Format::Bmp => "image/bmp",
            Format::Amr => "audio/amr",
            Format::Mp3 => "audio/mpeg",
            Format::Mp4 => "video/mp4",
        }
    }
}

/// A checked media file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inspected {
    /// Lower-case hex SHA-256 of the content: the cache key (with the type).
    pub sha256: String,
    pub bytes: u64,
    pub format: Format,
    /// Accepted, but worth telling the operator (a GIF image reply).
    pub warning: Option<String>,
}

/// Checks `path` as a file to upload as `ty`: it exists and is a regular file, it is not
/// empty, its magic bytes show a format WeChat accepts for the type, and it is within the
/// type's size limit. Errors are one sentence naming the file (as `shown`), the cause and the
/// fix, ready to follow `path:line:col: `.
pub fn inspect(path: &Path, shown: &str, ty: MediaType) -> Result<(Inspected, Vec<u8>), String> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!(
            "media file `{shown}` not found (looked for {}): paths are relative to the rules \
             directory; fix the path or add the file",
            path.display()
        ),
        _ => format!("cannot read media file `{shown}` ({}): {e}", path.display()),
    })?;
    if !meta.is_file() {
        return Err(format!("media file `{shown}` is not a regular file: name a file"));
    }
    if meta.len() == 0 {
        return Err(format!("media file `{shown}` is empty: WeChat refuses empty media"));
    }
    if meta.len() > ty.max_bytes() {
        return Err(format!(
            "media file `{shown}` is {} bytes, over WeChat's {} limit for {ty} media ({} \
             bytes): make it smaller",
            meta.len(),
            ty.limit_text(),
            ty.max_bytes()
        ));
    }
    let content = std::fs::read(path)
        .map_err(|e| format!("cannot read media file `{shown}` ({}): {e}", path.display()))?;
    let Some(format) = Format::sniff(&content) else {
        return Err(format!(
            "media file `{shown}` is not a {} file (its content is none of the formats WeChat \
             takes for {ty} media): convert it to {}",
            ty.accepted_text(),
            ty.accepted_text()
        ));
    };
    if !ty.accepts(format) {
        return Err(format!(
            "media file `{shown}` holds {} data, but {ty} media must be {}: convert it, or use \
             the file in a reply of its kind",
            format.name(),
            ty.accepted_text()
        ));
    }
    let warning = (ty == MediaType::Image && format == Format::Gif).then(|| {
        format!(
            "media file `{shown}` is a GIF: WeChat does not support GIF images in replies \
             (protocol §5.1), followers may see a still or nothing; use png or jpeg"
        )
    });
    let sha256 = hex::encode(Sha256::digest(&content));
    Ok((Inspected { sha256, bytes: content.len() as u64, format, warning }, content))
}

/// What a compiled reply holds in a media-id field when the rule names a file: the upload type,
/// the content hash it had when the rules loaded, and the absolute path. Written into the
/// message as a string of the form `kefu-media:{type}:{sha256}:{path}` (no real media id
/// contains `:`), so it travels unchanged through rendering, the outbox JSON and a restart,
/// and the sender resolves it to a media id when the message leaves.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MediaRef {
    pub media_type: MediaType,
    pub sha256: String,
    pub path: PathBuf,
}

const PREFIX: &str = "kefu-media:";

impl MediaRef {
    /// The string form carried in a message field.
    pub fn encode(&self) -> String {
        format!("{PREFIX}{}:{}:{}", self.media_type, self.sha256, self.path.display())
    }

    /// The reference in a message field, if it is one (else it is a media id).
    pub fn parse(field: &str) -> Option<MediaRef> {
        let rest = field.strip_prefix(PREFIX)?;
        let mut parts = rest.splitn(3, ':');
        let media_type = MediaType::parse(parts.next()?)?;
        let sha256 = parts.next()?;
        let path = parts.next()?;
        let hex_ok = sha256.len() == 64 && sha256.bytes().all(|b| b.is_ascii_hexdigit());
        (hex_ok && !path.is_empty()).then(|| MediaRef {
            media_type,
            sha256: sha256.to_string(),
            path: PathBuf::from(path),
        })
    }

    /// The cache key: content hash and type.
    pub fn key(&self) -> MediaKey {
        MediaKey { sha256: self.sha256.clone(), media_type: self.media_type }
    }
}

/// Whether any field of a message names a file (an unresolved [`MediaRef`]): such a message
/// cannot be a passive answer, it waits for the sender to resolve it.
pub fn names_file(message: &crate::model::OutMessage) -> bool {
    let mut any = false;
    message.map(|f| any |= f.starts_with(PREFIX));
    any
}

/// The store's key of one uploaded file: content hash and upload type (one upload per content
/// and type, interface §11.9).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MediaKey {
    pub sha256: String,
    pub media_type: MediaType,
}

impl fmt::Display for MediaKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.media_type, self.sha256)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_magic_bytes() {
        let cases: [(&[u8], Option<Format>); 9] = [
            (b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", Some(Format::Png)),
            (&[0xFF, 0xD8, 0xFF, 0xE0, 0, 0x10], Some(Format::Jpeg)),
            (b"GIF89a\x01\0\x01\0", Some(Format::Gif)),
            (b"BM\x3a\0\0\0\0\0\0\0\x36\0\0\0", Some(Format::Bmp)),
            (b"#!AMR\n\x3c", Some(Format::Amr)),
            (b"ID3\x04\0\0\0\0", Some(Format::Mp3)),
            (&[0xFF, 0xFB, 0x90, 0x64], Some(Format::Mp3)),
            (b"\0\0\0\x18ftypmp42", Some(Format::Mp4)),
            (b"hello world!", None),
        ];
        for (head, want) in cases {
            assert_eq!(Format::sniff(head), want, "{head:?}");
        }
    }

    #[test]
    fn reference_round_trip() {
        let r = MediaRef {
            media_type: MediaType::Thumb,
            sha256: "ab".repeat(32),
            path: PathBuf::from("/srv/rules/media/a:b.jpg"),
        };
        let s = r.encode();
        assert_eq!(MediaRef::parse(&s), Some(r));
        assert_eq!(MediaRef::parse("MEDIA_ID"), None);
        assert_eq!(MediaRef::parse("kefu-media:image:short:/x"), None);
        let m = crate::model::OutMessage::Image { media_id: s };
        assert!(names_file(&m));
        assert!(!names_file(&crate::model::OutMessage::Image { media_id: "MEDIA_ID".into() }));
    }

    #[test]
    fn inspect_checks_type_and_size() {
        let dir = tempfile::tempdir().unwrap();
        let jpg = dir.path().join("a.jpg");
        std::fs::write(&jpg, [0xFF, 0xD8, 0xFF, 0xE0, 1, 2, 3]).unwrap();
        let (i, _) = inspect(&jpg, "a.jpg", MediaType::Thumb).unwrap();
        assert_eq!(i.format, Format::Jpeg);
        assert_eq!(i.sha256.len(), 64);
        let e = inspect(&jpg, "a.jpg", MediaType::Voice).unwrap_err();
        assert!(e.contains("holds jpeg data, but voice media must be amr or mp3"), "{e}");
        let big = dir.path().join("big.jpg");
        let mut v = vec![0xFF, 0xD8, 0xFF];
        v.resize(100 * 1024, 0);
        std::fs::write(&big, v).unwrap();
        let e = inspect(&big, "big.jpg", MediaType::Thumb).unwrap_err();
        assert!(e.contains("over WeChat's 64 KB limit for thumb media"), "{e}");
        let e = inspect(&dir.path().join("none.png"), "none.png", MediaType::Image).unwrap_err();
        assert!(e.contains("media file `none.png` not found"), "{e}");
        let gif = dir.path().join("a.gif");
        std::fs::write(&gif, b"GIF89a\x01\0\x01\0").unwrap();
        assert!(inspect(&gif, "a.gif", MediaType::Image).unwrap().0.warning.is_some());
        let txt = dir.path().join("a.png");
        std::fs::write(&txt, b"not a png at all").unwrap();
        let e = inspect(&txt, "a.png", MediaType::Image).unwrap_err();
        assert!(e.contains("is not a bmp, png, jpeg/jpg or gif file"), "{e}");
    }
}
