//! The URL enrichers: the page URL's parts, campaign attribution (utm_* parameters and ad
//! click ids) and referer classification (search with the search term, social, email,
//! internal).

use std::collections::BTreeMap;

use serde_json::Value;
use sluice_event::Enrichment;
use url::Url;

use super::{Built, CampaignConfig, Draft, EnrichConfig, Facts, RefererConfig, Step, str_at, when};

/// Longest URL parsed.
const MAX_URL_BYTES: usize = 8192;

/// Click-id parameters and the network they belong to.
pub(crate) const CLICK_IDS: &[(&str, &str)] = &[
    ("gclid", "Google"),
    ("wbraid", "Google"),
    ("gbraid", "Google"),
    ("dclid", "DoubleClick"),
    ("msclkid", "Microsoft"),
    ("fbclid", "Facebook"),
    ("ttclid", "TikTok"),
    ("twclid", "Twitter"),
    ("li_fat_id", "LinkedIn"),
    ("yclid", "Yandex"),
    ("epik", "Pinterest"),
    ("ScCid", "Snapchat"),
];

/// Search engines: the brand label of their host (`google` matches `www.google.co.uk`), their
/// name, and the query parameters that carry the search term.
const SEARCH: &[(&str, &str, &[&str])] = &[
    ("google", "Google", &["q", "query"]),
    ("bing", "Bing", &["q"]),
    ("yahoo", "Yahoo!", &["p", "q"]),
    ("duckduckgo", "DuckDuckGo", &["q"]),
    ("baidu", "Baidu", &["wd", "word", "kw"]),
    ("yandex", "Yandex", &["text"]),
    ("ecosia", "Ecosia", &["q"]),
    ("ask", "Ask", &["q"]),
    ("naver", "Naver", &["query"]),
    ("seznam", "Seznam", &["q"]),
    ("startpage", "Startpage", &["query", "q"]),
    ("qwant", "Qwant", &["q"]),
    ("aol", "AOL", &["q", "query"]),
    ("sogou", "Sogou", &["query"]),
    ("brave", "Brave", &["q"]),
    ("kagi", "Kagi", &["q"]),
];

/// Social networks and email web clients, by exact host (after `www.`/`m.` is removed).
const HOSTS: &[(&str, &str, &str)] = &[
    ("facebook.com", "social", "Facebook"),
    ("l.facebook.com", "social", "Facebook"),
    ("lm.facebook.com", "social", "Facebook"),
    ("fb.com", "social", "Facebook"),
    ("instagram.com", "social", "Instagram"),
    ("l.instagram.com", "social", "Instagram"),
    ("t.co", "social", "Twitter"),
    ("twitter.com", "social", "Twitter"),
    ("x.com", "social", "Twitter"),
    ("linkedin.com", "social", "LinkedIn"),
    ("lnkd.in", "social", "LinkedIn"),
    ("pinterest.com", "social", "Pinterest"),
    ("reddit.com", "social", "Reddit"),
    ("old.reddit.com", "social", "Reddit"),
    ("out.reddit.com", "social", "Reddit"),
    ("youtube.com", "social", "YouTube"),
    ("youtu.be", "social", "YouTube"),
    ("tiktok.com", "social", "TikTok"),
    ("vk.com", "social", "VKontakte"),
    ("weibo.com", "social", "Weibo"),
    ("news.ycombinator.com", "social", "Hacker News"),
    ("mastodon.social", "social", "Mastodon"),
    ("threads.net", "social", "Threads"),
    ("bsky.app", "social", "Bluesky"),
    ("quora.com", "social", "Quora"),
    ("mail.google.com", "email", "Gmail"),
    ("outlook.live.com", "email", "Outlook.com"),
    ("outlook.office.com", "email", "Outlook.com"),
    ("outlook.office365.com", "email", "Outlook.com"),
    ("mail.yahoo.com", "email", "Yahoo! Mail"),
    ("mail.proton.me", "email", "Proton Mail"),
    ("mail.aol.com", "email", "AOL Mail"),
];

/// `s` as an http or https URL.
pub(crate) fn parse(s: &str) -> Option<Url> {
    if s.is_empty() || s.len() > MAX_URL_BYTES {
        return None;
    }
    let u = Url::parse(s).ok()?;
    matches!(u.scheme(), "http" | "https").then_some(u)
}

fn bare_host(u: &Url) -> Option<String> {
    let h = u.host_str()?.to_ascii_lowercase();
    let h = h
        .strip_prefix("www.")
        .or_else(|| h.strip_prefix("m."))
        .unwrap_or(&h);
    Some(h.trim_end_matches('.').to_string())
}

/// `page`: the page URL's parts.
struct Page;

pub(super) fn build_page(c: &EnrichConfig) -> Built {
    when(c.page.enabled, || Page)
}

impl Step for Page {
    fn apply(&self, draft: &mut Draft, facts: &mut Facts<'_>) -> Result<(), String> {
        if let Some((text, u)) = facts.page() {
            page(text, u, &mut draft.enriched);
        }
        Ok(())
    }
}

pub(super) fn build_campaign(c: &EnrichConfig) -> Built {
    when(c.campaign.enabled, || c.campaign.clone())
}

/// `campaign`: the page URL's campaign, else the tracker's `context.campaign`.
impl Step for CampaignConfig {
    fn apply(&self, draft: &mut Draft, facts: &mut Facts<'_>) -> Result<(), String> {
        let found = facts
            .page()
            .is_some_and(|(_, u)| campaign(u, &self.click_ids, &mut draft.enriched));
        if !found && let Some(Value::Object(camp)) = draft.context.get("campaign") {
            let e = &mut draft.enriched;
            let get = |k: &str| {
                camp.get(k)
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
            };
            e.mkt_source = get("source");
            e.mkt_medium = get("medium");
            e.mkt_campaign = get("name");
            e.mkt_term = get("term");
            e.mkt_content = get("content");
        }
        Ok(())
    }
}

pub(super) fn build_referer(c: &EnrichConfig) -> Built {
    when(c.referer.enabled, || c.referer.clone())
}

/// `referer`: where the visitor came from.
impl Step for RefererConfig {
    fn apply(&self, draft: &mut Draft, facts: &mut Facts<'_>) -> Result<(), String> {
        let refr = str_at(&draft.context, &["page", "referrer"])
            .or_else(|| str_at(&draft.properties, &["referrer"]));
        if let Some(r) = refr {
            // The page enricher has set the host already when it ran.
            let host = draft.enriched.page_host.clone().or_else(|| {
                facts
                    .page_url
                    .as_deref()
                    .and_then(|u| Url::parse(u).ok())
                    .and_then(|u| u.host_str().map(str::to_string))
            });
            referer(
                r,
                host.as_deref(),
                &self.internal_domains,
                &mut draft.enriched,
            );
        }
        Ok(())
    }
}

/// The page URL's parts (`u`: `url` parsed).
pub(crate) fn page(url: &str, u: &Url, out: &mut Enrichment) {
    out.page_url = Some(url.to_string());
    out.page_host = u.host_str().map(str::to_ascii_lowercase);
    out.page_path = Some(u.path().to_string());
}

/// Campaign fields from the page URL's query; `extra` adds or overrides click-id parameters.
/// Returns whether the URL named a campaign.
pub(crate) fn campaign(u: &Url, extra: &BTreeMap<String, String>, out: &mut Enrichment) -> bool {
    let mut found = false;
    for (k, v) in u.query_pairs() {
        if v.is_empty() {
            continue;
        }
        let slot = match k.as_ref() {
            "utm_source" => &mut out.mkt_source,
            "utm_medium" => &mut out.mkt_medium,
            "utm_campaign" => &mut out.mkt_campaign,
            "utm_term" => &mut out.mkt_term,
            "utm_content" => &mut out.mkt_content,
            other => {
                let network = extra
                    .get(other)
                    .map(String::as_str)
                    .or_else(|| CLICK_IDS.iter().find(|(p, _)| *p == other).map(|(_, n)| *n));
                if let Some(network) = network
                    && out.mkt_clickid.is_none()
                {
                    out.mkt_clickid = Some(v.to_string());
                    out.mkt_network = Some(network.to_string());
                    found = true;
                }
                continue;
            }
        };
        if slot.is_none() {
            *slot = Some(v.to_string());
            found = true;
        }
    }
    found
}

/// Classifies the referer of a page at `page_host`. `internal` lists the domains (and their
/// subdomains) that count as the site itself.
pub(crate) fn referer(
    refr: &str,
    page_host: Option<&str>,
    internal: &[String],
    out: &mut Enrichment,
) {
    let Some(u) = parse(refr) else {
        return;
    };
    let Some(host) = bare_host(&u) else {
        return;
    };
    out.refr_host = u.host_str().map(str::to_ascii_lowercase);
    let page = page_host.map(|h| {
        let h = h.to_ascii_lowercase();
        h.strip_prefix("www.").unwrap_or(&h).to_string()
    });
    let is_internal = page.as_deref() == Some(host.as_str())
        || internal.iter().any(|d| {
            let d = d.trim_start_matches('.').to_ascii_lowercase();
            host == d || host.ends_with(&format!(".{d}"))
        });
    if is_internal {
        out.refr_medium = Some("internal".into());
        return;
    }
    if let Some((_, medium, name)) = HOSTS.iter().find(|(h, _, _)| *h == host) {
        out.refr_medium = Some((*medium).into());
        out.refr_source = Some((*name).into());
        return;
    }
    let labels: Vec<&str> = host.split('.').collect();
    for (brand, name, params) in SEARCH {
        // The brand label followed by at most two short (TLD-like) labels: google.com,
        // google.co.uk, search.yahoo.co.jp, but not google.example.org.
        let Some(i) = labels.iter().position(|l| l == brand) else {
            continue;
        };
        let tail = &labels[i + 1..];
        if tail.is_empty() || tail.len() > 2 || tail.iter().any(|l| l.len() > 3) {
            continue;
        }
        out.refr_medium = Some("search".into());
        out.refr_source = Some((*name).into());
        out.refr_term = u
            .query_pairs()
            .find(|(k, v)| params.contains(&k.as_ref()) && !v.is_empty())
            .map(|(_, v)| v.into_owned());
        return;
    }
    out.refr_medium = Some("unknown".into());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_urls_split_into_host_and_path() {
        let page = |url: &str, e: &mut Enrichment| {
            if let Some(u) = parse(url) {
                page(url, &u, e);
            }
        };
        let mut e = Enrichment::default();
        page("https://Shop.Example.com/p/42?color=red#top", &mut e);
        assert_eq!(e.page_host.as_deref(), Some("shop.example.com"));
        assert_eq!(e.page_path.as_deref(), Some("/p/42"));
        let mut e = Enrichment::default();
        for junk in ["", "not a url", "javascript:alert(1)", "file:///etc/passwd"] {
            page(junk, &mut e);
        }
        assert_eq!(e, Enrichment::default());
    }

    #[test]
    fn campaigns_come_from_utm_parameters_and_click_ids() {
        let table: &[(&str, [Option<&str>; 7])] = &[
            (
                "https://shop.example.com/?utm_source=newsletter&utm_medium=email&utm_campaign=black%20friday&utm_term=shoes&utm_content=hero",
                [
                    Some("email"),
                    Some("newsletter"),
                    Some("shoes"),
                    Some("hero"),
                    Some("black friday"),
                    None,
                    None,
                ],
            ),
            (
                "https://shop.example.com/landing?gclid=Cj0KCQiA&utm_source=google",
                [
                    None,
                    Some("google"),
                    None,
                    None,
                    None,
                    Some("Cj0KCQiA"),
                    Some("Google"),
                ],
            ),
            (
                "https://shop.example.com/?fbclid=IwAR3x",
                [
                    None,
                    None,
                    None,
                    None,
                    None,
                    Some("IwAR3x"),
                    Some("Facebook"),
                ],
            ),
            (
                "https://shop.example.com/?msclkid=abc123&utm_medium=cpc",
                [
                    Some("cpc"),
                    None,
                    None,
                    None,
                    None,
                    Some("abc123"),
                    Some("Microsoft"),
                ],
            ),
            ("https://shop.example.com/?utm_source=", [None; 7]),
            ("https://shop.example.com/plain", [None; 7]),
        ];
        let campaign = |url: &str, extra: &BTreeMap<String, String>, e: &mut Enrichment| {
            parse(url).is_some_and(|u| campaign(&u, extra, e))
        };
        for (url, want) in table {
            let mut e = Enrichment::default();
            let found = campaign(url, &BTreeMap::new(), &mut e);
            let got = [
                e.mkt_medium.as_deref(),
                e.mkt_source.as_deref(),
                e.mkt_term.as_deref(),
                e.mkt_content.as_deref(),
                e.mkt_campaign.as_deref(),
                e.mkt_clickid.as_deref(),
                e.mkt_network.as_deref(),
            ];
            assert_eq!(&got, want, "{url}");
            assert_eq!(found, want.iter().any(Option::is_some), "{url}");
        }
        // A configured click id.
        let mut extra = BTreeMap::new();
        extra.insert("irclickid".to_string(), "Impact".to_string());
        let mut e = Enrichment::default();
        campaign("https://a.example/?irclickid=z9", &extra, &mut e);
        assert_eq!(e.mkt_network.as_deref(), Some("Impact"));
    }

    #[test]
    fn referers_classify_as_search_social_email_internal_or_unknown() {
        let internal = vec!["example.com".to_string()];
        let table: &[(&str, &str, Option<&str>, Option<&str>)] = &[
            (
                "https://www.google.com/search?q=running+shoes&hl=en",
                "search",
                Some("Google"),
                Some("running shoes"),
            ),
            ("https://www.google.co.uk/", "search", Some("Google"), None),
            (
                "https://www.bing.com/search?q=sluice%20pipeline",
                "search",
                Some("Bing"),
                Some("sluice pipeline"),
            ),
            (
                "https://search.yahoo.co.jp/search?p=%E9%9D%B4",
                "search",
                Some("Yahoo!"),
                Some("靴"),
            ),
            (
                "https://duckduckgo.com/?q=delta+lake",
                "search",
                Some("DuckDuckGo"),
                Some("delta lake"),
            ),
            (
                "https://www.baidu.com/s?wd=shoes",
                "search",
                Some("Baidu"),
                Some("shoes"),
            ),
            (
                "https://yandex.ru/search/?text=boots",
                "search",
                Some("Yandex"),
                Some("boots"),
            ),
            (
                "https://l.facebook.com/l.php?u=x",
                "social",
                Some("Facebook"),
                None,
            ),
            ("https://t.co/abc", "social", Some("Twitter"), None),
            (
                "https://www.linkedin.com/feed/",
                "social",
                Some("LinkedIn"),
                None,
            ),
            (
                "https://news.ycombinator.com/item?id=1",
                "social",
                Some("Hacker News"),
                None,
            ),
            (
                "https://mail.google.com/mail/u/0/",
                "email",
                Some("Gmail"),
                None,
            ),
            (
                "https://outlook.live.com/mail/",
                "email",
                Some("Outlook.com"),
                None,
            ),
            ("https://shop.example.org/cart", "internal", None, None),
            ("https://blog.example.com/post", "internal", None, None),
            ("https://google.example.net/", "unknown", None, None),
            ("https://someblog.dev/links", "unknown", None, None),
        ];
        for (refr, medium, source, term) in table {
            let mut e = Enrichment::default();
            referer(refr, Some("www.shop.example.org"), &internal, &mut e);
            assert_eq!(e.refr_medium.as_deref(), Some(*medium), "{refr}");
            assert_eq!(e.refr_source.as_deref(), *source, "{refr}");
            assert_eq!(e.refr_term.as_deref(), *term, "{refr}");
            assert!(e.refr_host.is_some(), "{refr}");
        }
        let mut e = Enrichment::default();
        referer("android-app://com.google.android.gm", None, &[], &mut e);
        referer("", None, &[], &mut e);
        assert_eq!(e, Enrichment::default());
    }
}
