//! What a sandbox is started with: the credentials it accepts, its dedup window and its faults.

use std::time::Duration;

use super::Faults;

/// Which credentials the sandbox accepts, and its dedup window.
///
/// Every credential is `None` by default, meaning "any non-empty value"; set one to make a wrong
/// value testable. Google access tokens are always the ones the sandbox's own `/token` endpoint
/// issued, as with the real OAuth flow.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Meta `access_token`.
    pub meta_access_token: Option<String>,
    /// Google OAuth `client_id`.
    pub google_client_id: Option<String>,
    /// Google OAuth `client_secret`.
    pub google_client_secret: Option<String>,
    /// Google OAuth `refresh_token`.
    pub google_refresh_token: Option<String>,
    /// Google Ads `developer-token` header; `None` accepts any value or none (since September 2026
    /// the header is optional).
    pub google_developer_token: Option<String>,
    /// Whether the Google Ads API takes click conversion uploads from this access; `false` answers
    /// them with `CUSTOMER_NOT_ALLOWLISTED_FOR_THIS_FEATURE`, as Google does for new users since
    /// 15 June 2026.
    pub google_ads_click_uploads_allowlisted: bool,
    /// A service account's public key (PEM): when set, JWT bearer assertions must be signed with
    /// its private key; otherwise only their shape and claims are checked.
    pub google_service_account_public_key: Option<String>,
    /// TikTok `Access-Token` header.
    pub tiktok_access_token: Option<String>,
    /// Microsoft Advertising `DeveloperToken` header.
    pub microsoft_developer_token: Option<String>,
    /// Microsoft OAuth refresh token (rotated ones the sandbox issued are accepted too).
    pub microsoft_refresh_token: Option<String>,
    /// LinkedIn bearer access token.
    pub linkedin_access_token: Option<String>,
    /// Reddit conversion access token (bearer).
    pub reddit_access_token: Option<String>,
    /// Snapchat CAPI token (`access_token` query parameter or bearer header).
    pub snapchat_access_token: Option<String>,
    /// Pinterest conversion token (bearer header).
    pub pinterest_access_token: Option<String>,
    /// The Pinterest ad account the token may write to; `None` accepts any numeric id.
    pub pinterest_ad_account_id: Option<String>,
    /// The dedup window of Meta, TikTok, LinkedIn, Reddit, Snapchat and Pinterest (48 hours).
    pub dedup_window: Duration,
    /// Faults active from the start.
    pub faults: Faults,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            meta_access_token: None,
            google_client_id: None,
            google_client_secret: None,
            google_refresh_token: None,
            google_developer_token: None,
            google_ads_click_uploads_allowlisted: true,
            google_service_account_public_key: None,
            tiktok_access_token: None,
            microsoft_developer_token: None,
            microsoft_refresh_token: None,
            linkedin_access_token: None,
            reddit_access_token: None,
            snapchat_access_token: None,
            pinterest_access_token: None,
            pinterest_ad_account_id: None,
            dedup_window: Duration::from_secs(48 * 3600),
            faults: Faults::default(),
        }
    }
}
