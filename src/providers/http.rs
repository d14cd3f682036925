//! What every provider's HTTP client shares: timeouts, the user agent,
//! and reading the wait a provider asks for.

use std::time::Duration;

use reqwest::header::HeaderMap;

use super::ProviderError;

/// The HTTP client of one provider: ten seconds to connect, ten minutes
/// for an answer (a long synchronous call, a large results file).
pub(crate) fn client() -> Result<reqwest::Client, ProviderError> {
    Ok(reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(600))
        .user_agent(concat!("orchestrator/", env!("CARGO_PKG_VERSION")))
        .build()?)
}

/// `retry-after-ms`, else `retry-after` in seconds (both providers and their SDKs read these).
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let number =
        |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<f64>().ok());
    number("retry-after-ms")
        .map(|ms| Duration::from_secs_f64(ms.max(0.0) / 1000.0))
        .or_else(|| number("retry-after").map(|s| Duration::from_secs_f64(s.max(0.0))))
}

#[cfg(test)]
mod tests {
    use reqwest::header::HeaderValue;

    use super::*;

    #[test]
    fn retry_after_reads_both_headers() {
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", HeaderValue::from_static("3"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(3)));
        headers.insert("retry-after-ms", HeaderValue::from_static("250"));
        assert_eq!(retry_after(&headers), Some(Duration::from_millis(250)));
    }
}
