//! User-agent parsing (woothee) and bot and spider detection.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;
use regex::RegexSet;
use sluice_event::Enrichment;

use super::{Built, Draft, EnrichConfig, Facts, Step, when};

/// Longest user agent parsed; a longer one is not a browser's.
const MAX_UA_BYTES: usize = 2048;

/// Patterns of user agents that are not people (matched case-insensitively, as substrings).
pub(crate) const BOT_PATTERNS: &[&str] = &[
    "bot",
    "crawl",
    "spider",
    "slurp",
    "headless",
    "phantomjs",
    "lighthouse",
    "python-requests",
    "python-urllib",
    "aiohttp",
    "curl/",
    "wget/",
    "go-http-client",
    "scrapy",
    "facebookexternalhit",
    "pingdom",
    "uptimerobot",
    "feedfetcher",
    "mediapartners-google",
    "apis-google",
    "google-inspectiontool",
    "googleother",
    "ahrefs",
    "semrush",
    "bingpreview",
    "petalbot",
    "bytespider",
    "gptbot",
    "ccbot",
    "claudebot",
    "perplexity",
];

/// Fills the `ua_*` fields from a user agent.
pub(crate) fn parse(parser: &woothee::parser::Parser, ua: &str, out: &mut Enrichment) {
    if ua.is_empty() || ua.len() > MAX_UA_BYTES {
        return;
    }
    let Some(r) = parser.parse(ua) else {
        return;
    };
    let known =
        |s: &str| (s != woothee::woothee::VALUE_UNKNOWN && !s.is_empty()).then(|| s.to_string());
    out.ua_browser = known(r.name);
    out.ua_browser_version = known(r.version);
    out.ua_os = known(r.os);
    out.ua_os_version = known(&r.os_version);
    out.ua_vendor = known(r.vendor);
    out.ua_device_class = Some(device_class(r.category, ua).to_string());
}

/// What is known of a user agent: its `ua_*` fields, and once the `bots` enricher asked,
/// whether it matches a bot pattern.
#[derive(Debug, Default)]
pub(crate) struct Agent {
    /// The `ua_*` fields.
    pub(crate) fields: Enrichment,
    /// Whether it matches one of the `bots` enricher's patterns (the same for every event
    /// with this agent: the patterns are those of the chain that keeps these agents).
    pub(super) matches_pattern: OnceLock<bool>,
}

/// User agents parsed lately and what is known of them, shared by every partition's runner.
///
/// Parsing one is a few dozen regular expressions, the largest cost of enrichment, and
/// matching the bot patterns the next; a site's traffic comes from few agents. Two
/// generations of at most [`Agents::GENERATION`] entries each: a hit in the older one moves to
/// the newer, and when the newer is full the older is dropped, so an agent seen lately stays
/// and the memory is bounded.
pub(crate) struct Agents {
    generations: Mutex<[HashMap<Box<str>, Arc<Agent>>; 2]>,
}

impl Agents {
    /// Entries per generation.
    pub(crate) const GENERATION: usize = 2048;

    pub(crate) fn new() -> Self {
        Self {
            generations: Mutex::new([HashMap::new(), HashMap::new()]),
        }
    }

    /// What is known of `ua`, parsed once while it stays among the agents seen lately.
    pub(crate) fn parsed(&self, ua: &str) -> Arc<Agent> {
        if let Some(hit) = self.lookup(ua) {
            return hit;
        }
        // Parsed outside the lock; two runners meeting a new agent at once both parse it.
        let mut agent = Agent::default();
        parse(&woothee::parser::Parser::new(), ua, &mut agent.fields);
        let agent = Arc::new(agent);
        if ua.len() <= MAX_UA_BYTES {
            self.remember(ua, agent.clone());
        }
        agent
    }

    fn lookup(&self, ua: &str) -> Option<Arc<Agent>> {
        let mut g = self.generations.lock();
        if let Some(hit) = g[0].get(ua) {
            return Some(hit.clone());
        }
        let (key, hit) = g[1].remove_entry(ua)?;
        Self::insert(&mut g, key, hit.clone());
        Some(hit)
    }

    fn remember(&self, ua: &str, agent: Arc<Agent>) {
        Self::insert(&mut self.generations.lock(), ua.into(), agent);
    }

    fn insert(g: &mut [HashMap<Box<str>, Arc<Agent>>; 2], key: Box<str>, v: Arc<Agent>) {
        if g[0].len() >= Self::GENERATION {
            g[1] = std::mem::take(&mut g[0]);
        }
        g[0].insert(key, v);
        debug_assert!(g[0].len() <= Self::GENERATION && g[1].len() <= Self::GENERATION);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        let g = self.generations.lock();
        g[0].len() + g[1].len()
    }
}

fn device_class(category: &str, ua: &str) -> &'static str {
    match category {
        "pc" => "desktop",
        "smartphone" => {
            // woothee counts tablets as smartphones.
            if ua.contains("iPad") || (ua.contains("Android") && !ua.contains("Mobile")) {
                "tablet"
            } else {
                "mobile"
            }
        }
        "mobilephone" => "mobile",
        "crawler" => "bot",
        "appliance" => "appliance",
        _ => "other",
    }
}

/// `ua`: the browser, OS, vendor and device class.
struct Ua;

pub(super) fn build_ua(c: &EnrichConfig) -> Built {
    when(c.ua.enabled, || Ua)
}

impl Step for Ua {
    fn apply(&self, draft: &mut Draft, facts: &mut Facts<'_>) -> Result<(), String> {
        if let Some(parsed) = facts.parsed_ua() {
            let e = &mut draft.enriched;
            e.ua_browser = parsed.ua_browser.clone();
            e.ua_browser_version = parsed.ua_browser_version.clone();
            e.ua_os = parsed.ua_os.clone();
            e.ua_os_version = parsed.ua_os_version.clone();
            e.ua_vendor = parsed.ua_vendor.clone();
            e.ua_device_class = parsed.ua_device_class.clone();
        }
        Ok(())
    }
}

pub(super) fn build_bots(c: &EnrichConfig) -> Built {
    if !c.bots.enabled {
        return Ok(None);
    }
    Ok(Some(Box::new(Bots::new(
        &c.bots.patterns,
        &c.bots.ip_ranges,
    )?)))
}

/// `bots`: `is_bot` from the user agent, its device class and the client address.
impl Step for Bots {
    fn apply(&self, draft: &mut Draft, facts: &mut Facts<'_>) -> Result<(), String> {
        let agent = facts.agent().cloned();
        let class = agent
            .as_ref()
            .and_then(|a| a.fields.ua_device_class.as_deref());
        let matches = |ua: &str| match &agent {
            Some(a) => *a.matches_pattern.get_or_init(|| self.patterns.is_match(ua)),
            None => self.patterns.is_match(ua),
        };
        let is_bot = self.is_bot_by(facts.user_agent.as_deref(), class, facts.ip, matches);
        draft.enriched.is_bot = Some(is_bot);
        Ok(())
    }
}

/// Bot detection: woothee's crawler category, the patterns, and configured address ranges.
pub(crate) struct Bots {
    patterns: RegexSet,
    ranges: Vec<Cidr>,
}

impl Bots {
    pub(crate) fn new(extra: &[String], ranges: &[String]) -> Result<Self, String> {
        let all = BOT_PATTERNS
            .iter()
            .map(|p| regex::escape(p))
            .chain(extra.iter().cloned())
            .map(|p| format!("(?i){p}"));
        let patterns = regex::RegexSetBuilder::new(all)
            .size_limit(4 << 20)
            .build()
            .map_err(|e| format!("enrich.bots.patterns: {e}"))?;
        let ranges = ranges
            .iter()
            .map(|r| Cidr::parse(r).map_err(|e| format!("enrich.bots.ip_ranges: {e}")))
            .collect::<Result<_, _>>()?;
        Ok(Self { patterns, ranges })
    }

    /// Whether an event is a bot's, matching the patterns afresh.
    #[cfg(test)]
    pub(crate) fn is_bot(&self, ua: Option<&str>, class: Option<&str>, ip: Option<IpAddr>) -> bool {
        self.is_bot_by(ua, class, ip, |ua| self.patterns.is_match(ua))
    }

    /// Whether an event is a bot's: its agent's device class is `bot`, `matches` says its
    /// agent matches a pattern, or its address is in a configured range.
    fn is_bot_by(
        &self,
        ua: Option<&str>,
        class: Option<&str>,
        ip: Option<IpAddr>,
        matches: impl FnOnce(&str) -> bool,
    ) -> bool {
        if class == Some("bot") {
            return true;
        }
        if let Some(ua) = ua
            && ua.len() <= MAX_UA_BYTES
            && matches(ua)
        {
            return true;
        }
        ip.is_some_and(|ip| self.ranges.iter().any(|r| r.contains(ip)))
    }
}

/// An address range, `10.0.0.0/8` or `2001:db8::/32` (a bare address is a /32 or /128).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Cidr {
    net: IpAddr,
    bits: u8,
}

impl Cidr {
    pub(crate) fn parse(s: &str) -> Result<Self, String> {
        let (addr, bits) = match s.split_once('/') {
            Some((a, b)) => (a, Some(b)),
            None => (s, None),
        };
        let net: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not an address range"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            Some(b) => b
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|b| *b <= max)
                .ok_or_else(|| format!("{s:?}: prefix length must be 0-{max}"))?,
            None => max,
        };
        Ok(Self { net, bits })
    }

    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.bits)).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.bits))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Real user agents, and what they must parse to.
    const TABLE: &[(&str, &str, &str, &str, bool)] = &[
        // (user agent, browser, os, device class, bot)
        (
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
            "Chrome",
            "Windows 10",
            "desktop",
            false,
        ),
        (
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Safari/605.1.15",
            "Safari",
            "Mac OSX",
            "desktop",
            false,
        ),
        (
            "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
            "Firefox",
            "Linux",
            "desktop",
            false,
        ),
        (
            "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
            "Safari",
            "iPhone",
            "mobile",
            false,
        ),
        (
            "Mozilla/5.0 (iPad; CPU OS 17_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.6 Mobile/15E148 Safari/604.1",
            "Safari",
            "iPad",
            "tablet",
            false,
        ),
        (
            "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Mobile Safari/537.36",
            "Chrome",
            "Android",
            "mobile",
            false,
        ),
        (
            "Mozilla/5.0 (Linux; Android 13; SM-X700) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.0.0 Safari/537.36",
            "Chrome",
            "Android",
            "tablet",
            false,
        ),
        (
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36 Edg/131.0.0.0",
            "Edge",
            "Windows 10",
            "desktop",
            false,
        ),
        (
            "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
            "Googlebot",
            "",
            "bot",
            true,
        ),
        (
            "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
            "bingbot",
            "",
            "bot",
            true,
        ),
        (
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/131.0.0.0 Safari/537.36",
            "Chrome",
            "Windows 10",
            "desktop",
            true,
        ),
        ("python-requests/2.32.3", "", "", "", true),
        ("curl/8.5.0", "", "", "", true),
        (
            "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
            "",
            "",
            "",
            true,
        ),
    ];

    #[test]
    fn user_agents_parse_to_browser_os_and_device_class() {
        let parser = woothee::parser::Parser::new();
        let bots = Bots::new(&[], &[]).unwrap();
        for (ua, browser, os, class, bot) in TABLE {
            let mut e = Enrichment::default();
            parse(&parser, ua, &mut e);
            if !browser.is_empty() {
                assert_eq!(e.ua_browser.as_deref(), Some(*browser), "{ua}");
            }
            if !os.is_empty() {
                assert_eq!(e.ua_os.as_deref(), Some(*os), "{ua}");
            }
            if !class.is_empty() {
                assert_eq!(e.ua_device_class.as_deref(), Some(*class), "{ua}");
            }
            assert_eq!(
                bots.is_bot(Some(ua), e.ua_device_class.as_deref(), None),
                *bot,
                "{ua}"
            );
        }
        // Nothing to parse: nothing set, and no panic on junk.
        let mut e = Enrichment::default();
        parse(&parser, "", &mut e);
        parse(&parser, &"x".repeat(10_000), &mut e);
        parse(&parser, "\u{0}\u{feff}💥", &mut e);
        assert_eq!(e.ua_browser, None);
    }

    #[test]
    fn agents_seen_lately_give_what_parsing_gives_and_stay_bounded() {
        let agents = Agents::new();
        let parser = woothee::parser::Parser::new();
        for round in 0..3 {
            for (ua, ..) in TABLE {
                let mut want = Enrichment::default();
                parse(&parser, ua, &mut want);
                assert_eq!(agents.parsed(ua).fields, want, "round {round}: {ua}");
            }
        }
        assert_eq!(agents.len(), TABLE.len());
        let first = agents.parsed(TABLE[0].0);
        assert!(Arc::ptr_eq(&first, &agents.parsed(TABLE[0].0)));
        // Many distinct agents: at most two generations are kept, and one seen in between
        // each generation stays.
        for i in 0..5 * Agents::GENERATION {
            agents.parsed(&format!(
                "Mozilla/5.0 (X11; Linux x86_64; rv:{i}.0) Firefox/{i}.0"
            ));
            if i % 1000 == 0 {
                agents.parsed(TABLE[0].0);
            }
        }
        assert!(agents.len() <= 2 * Agents::GENERATION, "{}", agents.len());
        assert!(Arc::ptr_eq(&first, &agents.parsed(TABLE[0].0)));
        // An agent too long to parse is not kept.
        let before = agents.len();
        let long = "x".repeat(MAX_UA_BYTES + 1);
        assert_eq!(agents.parsed(&long).fields, Enrichment::default());
        assert_eq!(agents.len(), before);
    }

    #[test]
    fn address_ranges_and_extra_patterns_mark_bots() {
        let bots = Bots::new(
            &["^MyMonitor/".into()],
            &[
                "10.0.0.0/8".into(),
                "2001:db8::/32".into(),
                "192.0.2.7".into(),
            ],
        )
        .unwrap();
        let ip = |s: &str| Some(s.parse().unwrap());
        assert!(bots.is_bot(None, None, ip("10.200.1.1")));
        assert!(!bots.is_bot(None, None, ip("11.0.0.1")));
        assert!(bots.is_bot(None, None, ip("2001:db8:1::9")));
        assert!(bots.is_bot(None, None, ip("192.0.2.7")));
        assert!(!bots.is_bot(None, None, ip("192.0.2.8")));
        assert!(bots.is_bot(Some("mymonitor/1.0"), None, None));
        assert!(!bots.is_bot(Some("Mozilla/5.0"), None, None));
        assert!(
            Bots::new(&["(".into()], &[])
                .err()
                .unwrap()
                .contains("patterns")
        );
        assert!(
            Cidr::parse("10.0.0.0/33")
                .unwrap_err()
                .contains("prefix length")
        );
        assert!(
            Cidr::parse("nope")
                .unwrap_err()
                .contains("not an address range")
        );
        assert!(
            Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
    }
}
