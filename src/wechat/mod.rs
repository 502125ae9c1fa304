//! The WeChat push protocol, pure and without I/O (protocol §1–§3, §5): signatures, safe-mode
//! crypto, two-pass decoding of inbound pushes, passive reply XML, and the webhook's verify /
//! decrypt / seal steps that the HTTP layer calls.

pub mod crypto;
pub mod inbound;
pub mod reply;
pub mod signature;
pub mod webhook;

/// Wraps `s` in CDATA. A `]]>` inside would end the section early, so it is split across two
/// sections (`]]]]><![CDATA[>`), which every XML reader joins back (protocol §9.1).
pub(crate) fn push_cdata(out: &mut String, s: &str) {
    out.push_str("<![CDATA[");
    out.push_str(&s.replace("]]>", "]]]]><![CDATA[>"));
    out.push_str("]]>");
}

/// `<name><![CDATA[value]]></name>`.
pub(crate) fn push_element(out: &mut String, name: &str, value: &str) {
    out.push('<');
    out.push_str(name);
    out.push('>');
    push_cdata(out, value);
    out.push_str("</");
    out.push_str(name);
    out.push('>');
}

/// The protocol vectors (tests/fixtures/wechat/vectors.toml) and fixtures, for unit tests.
#[cfg(test)]
pub(crate) mod vectors {
    pub fn all() -> toml::Table {
        include_str!("../../tests/fixtures/wechat/vectors.toml").parse().expect("vectors.toml")
    }
    /// `all()[section][key]` as a string.
    pub fn get(section: &str, key: &str) -> String {
        all()[section][key].as_str().unwrap_or_else(|| panic!("{section}.{key}")).to_string()
    }
    pub fn int(section: &str, key: &str) -> i64 {
        all()[section][key].as_integer().unwrap_or_else(|| panic!("{section}.{key}"))
    }
}
