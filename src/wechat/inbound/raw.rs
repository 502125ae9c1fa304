//! The raw serde shapes of pass two, one per kind. Every field is an optional string: the typed
//! values are built in `decode`, where a bad number can be reported by element name.

use serde::Deserialize;

#[derive(Deserialize)]
pub(super) struct RawHeader {
    #[serde(rename = "ToUserName")]
    pub(super) to: Option<String>,
    #[serde(rename = "FromUserName")]
    pub(super) from: Option<String>,
    #[serde(rename = "CreateTime")]
    pub(super) create_time: Option<String>,
    #[serde(rename = "MsgType")]
    pub(super) msg_type: Option<String>,
    #[serde(rename = "Event")]
    pub(super) event: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct RawText {
    #[serde(rename = "Content")]
    pub(super) content: Option<String>,
    #[serde(rename = "MsgId")]
    pub(super) msg_id: Option<String>,
    pub(super) bizmsgmenuid: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct RawImage {
    #[serde(rename = "PicUrl")]
    pub(super) pic_url: Option<String>,
    #[serde(rename = "MediaId")]
    pub(super) media_id: Option<String>,
    #[serde(rename = "MsgId")]
    pub(super) msg_id: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct RawVoice {
    #[serde(rename = "MediaId")]
    pub(super) media_id: Option<String>,
    #[serde(rename = "Format")]
    pub(super) format: Option<String>,
    #[serde(rename = "Recognition")]
    pub(super) recognition: Option<String>,
    #[serde(rename = "MsgId")]
    pub(super) msg_id: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct RawVideo {
    #[serde(rename = "MediaId")]
    pub(super) media_id: Option<String>,
    #[serde(rename = "ThumbMediaId")]
    pub(super) thumb_media_id: Option<String>,
    #[serde(rename = "MsgId")]
    pub(super) msg_id: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct RawLocation {
    #[serde(rename = "Location_X")]
    pub(super) x: Option<String>,
    #[serde(rename = "Location_Y")]
    pub(super) y: Option<String>,
    #[serde(rename = "Scale")]
    pub(super) scale: Option<String>,
    #[serde(rename = "Label")]
    pub(super) label: Option<String>,
    #[serde(rename = "MsgId")]
    pub(super) msg_id: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct RawLink {
    #[serde(rename = "Title")]
    pub(super) title: Option<String>,
    #[serde(rename = "Description")]
    pub(super) description: Option<String>,
    #[serde(rename = "Url")]
    pub(super) url: Option<String>,
    #[serde(rename = "MsgId")]
    pub(super) msg_id: Option<String>,
}

/// subscribe, SCAN, CLICK, VIEW, view_miniprogram.
#[derive(Deserialize)]
pub(super) struct RawKeyed {
    #[serde(rename = "EventKey")]
    pub(super) event_key: Option<String>,
    #[serde(rename = "Ticket")]
    pub(super) ticket: Option<String>,
    #[serde(rename = "MenuId")]
    pub(super) menu_id: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct RawLocationEvent {
    #[serde(rename = "Latitude")]
    pub(super) latitude: Option<String>,
    #[serde(rename = "Longitude")]
    pub(super) longitude: Option<String>,
    #[serde(rename = "Precision")]
    pub(super) precision: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct RawScanCode {
    #[serde(rename = "EventKey")]
    pub(super) event_key: Option<String>,
    #[serde(rename = "ScanCodeInfo")]
    pub(super) info: Option<RawScanCodeInfo>,
}

#[derive(Deserialize, Default)]
pub(super) struct RawScanCodeInfo {
    #[serde(rename = "ScanType")]
    pub(super) scan_type: Option<String>,
    #[serde(rename = "ScanResult")]
    pub(super) scan_result: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct RawPics {
    #[serde(rename = "EventKey")]
    pub(super) event_key: Option<String>,
    #[serde(rename = "SendPicsInfo")]
    pub(super) info: Option<RawPicsInfo>,
}

#[derive(Deserialize, Default)]
pub(super) struct RawPicsInfo {
    #[serde(rename = "Count")]
    pub(super) count: Option<String>,
    #[serde(rename = "PicList")]
    pub(super) list: Option<RawPicList>,
}

#[derive(Deserialize, Default)]
pub(super) struct RawPicList {
    #[serde(rename = "item", default)]
    pub(super) items: Vec<RawPicItem>,
}

#[derive(Deserialize)]
pub(super) struct RawPicItem {
    #[serde(rename = "PicMd5Sum")]
    pub(super) md5: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct RawLocationSelect {
    #[serde(rename = "EventKey")]
    pub(super) event_key: Option<String>,
    #[serde(rename = "SendLocationInfo")]
    pub(super) info: Option<RawLocationInfo>,
}

#[derive(Deserialize, Default)]
pub(super) struct RawLocationInfo {
    #[serde(rename = "Location_X")]
    pub(super) x: Option<String>,
    #[serde(rename = "Location_Y")]
    pub(super) y: Option<String>,
    #[serde(rename = "Scale")]
    pub(super) scale: Option<String>,
    #[serde(rename = "Label")]
    pub(super) label: Option<String>,
    #[serde(rename = "Poiname")]
    pub(super) poiname: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct RawJobFinish {
    #[serde(rename = "MsgID")]
    pub(super) msg_id: Option<String>,
    #[serde(rename = "Status")]
    pub(super) status: Option<String>,
    #[serde(rename = "TotalCount")]
    pub(super) total_count: Option<String>,
    #[serde(rename = "FilterCount")]
    pub(super) filter_count: Option<String>,
    #[serde(rename = "SentCount")]
    pub(super) sent_count: Option<String>,
    #[serde(rename = "ErrorCount")]
    pub(super) error_count: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct RawKf {
    #[serde(rename = "KfAccount")]
    pub(super) kf_account: Option<String>,
    #[serde(rename = "FromKfAccount")]
    pub(super) from_kf_account: Option<String>,
    #[serde(rename = "ToKfAccount")]
    pub(super) to_kf_account: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct RawPayCell {
    #[serde(rename = "CardId")]
    pub(super) card_id: Option<String>,
    #[serde(rename = "UserCardCode")]
    pub(super) user_card_code: Option<String>,
    #[serde(rename = "TransId")]
    pub(super) trans_id: Option<String>,
    #[serde(rename = "LocationId")]
    pub(super) location_id: Option<String>,
    #[serde(rename = "Fee")]
    pub(super) fee: Option<String>,
    #[serde(rename = "OriginalFee")]
    pub(super) original_fee: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct RawMerchantOrder {
    #[serde(rename = "OrderId")]
    pub(super) order_id: Option<String>,
    #[serde(rename = "OrderStatus")]
    pub(super) order_status: Option<String>,
    #[serde(rename = "ProductId")]
    pub(super) product_id: Option<String>,
    #[serde(rename = "SkuInfo")]
    pub(super) sku_info: Option<String>,
}
