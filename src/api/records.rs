//! Customer-service chat records (protocol §7.2 `msgrecord/getmsglist`): fetched in spans of at
//! most 24 hours, each paged through with `msgid`/`number` until a short page.

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::accounts::{lenient_i64, lenient_string};
use super::client::{ApiClient, Req, decode_as};
use super::error::ApiError;

pub const RECORDS_PATH: &str = "/customservice/msgrecord/getmsglist";

/// Records per page: the API's maximum.
pub const PAGE_SIZE: i64 = 10_000;
/// The longest span one query may cover.
pub const MAX_SPAN_SECS: i64 = 24 * 3600;
/// A bound on pages per span so a misbehaving server cannot keep kefu paging forever
/// (10 000 pages of 10 000 records is far beyond any real day).
const MAX_PAGES_PER_SPAN: usize = 10_000;

/// One chat record.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Record {
    pub openid: String,
    /// 2002 = the kf sent it, 2003 = the kf received it.
    #[serde(deserialize_with = "lenient_i64")]
    pub opercode: i64,
    /// The text; media shows as `[image]`, `[voice]`, `[video]`.
    pub text: String,
    /// Unix seconds.
    #[serde(deserialize_with = "lenient_i64")]
    pub time: i64,
    /// The kf account.
    #[serde(deserialize_with = "lenient_string")]
    pub worker: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Page {
    recordlist: Vec<Record>,
    #[serde(deserialize_with = "lenient_i64")]
    number: i64,
    #[serde(deserialize_with = "lenient_i64")]
    msgid: i64,
}

/// Splits `[start, end]` into consecutive inclusive spans the API accepts (each shorter than
/// 24 h, none overlapping, so no record is fetched twice).
pub fn spans(start: i64, end: i64) -> Vec<(i64, i64)> {
    let mut out = Vec::new();
    let mut s = start;
    while s <= end {
        let e = (s + MAX_SPAN_SECS - 1).min(end);
        out.push((s, e));
        s = e + 1;
    }
    out
}

impl ApiClient {
    /// Every chat record between `start` and `end` (Unix seconds, inclusive), in order.
    pub async fn records(&self, start: i64, end: i64) -> Result<Vec<Record>, ApiError> {
        if end < start {
            return Err(ApiError::Invalid(format!(
                "the end of the records range ({end}) is before its start ({start})"
            )));
        }
        let mut all = Vec::new();
        for (s, e) in spans(start, end) {
            let mut msgid: i64 = 1;
            for _ in 0..MAX_PAGES_PER_SPAN {
                let body =
                    json!({ "starttime": s, "endtime": e, "msgid": msgid, "number": PAGE_SIZE });
                let v = self.call(&Req::post(RECORDS_PATH, &body)).await?;
                let page: Page = decode_as(RECORDS_PATH, v)?;
                let got = page.recordlist.len() as i64;
                all.extend(page.recordlist);
                // A full page means there may be more, continuing from the returned msgid; a
                // short page, or a msgid that does not move forward, ends the span.
                let full = got >= PAGE_SIZE || (page.number >= PAGE_SIZE && got > 0);
                if !full || page.msgid <= msgid {
                    break;
                }
                msgid = page.msgid;
            }
        }
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_cover_exactly_once() {
        assert_eq!(spans(0, 10), vec![(0, 10)]);
        assert_eq!(spans(0, 86399), vec![(0, 86399)]);
        assert_eq!(spans(0, 86400), vec![(0, 86399), (86400, 86400)]);
        assert_eq!(spans(100, 200_000), vec![(100, 86499), (86500, 172_899), (172_900, 200_000)]);
        assert!(spans(5, 4).is_empty());
    }
}
