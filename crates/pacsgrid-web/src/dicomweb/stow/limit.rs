//! A request body stream that stops at a byte budget, for bodies sent without a
//! Content-Length (chunked) or with a false one.

use bytes::Bytes;
use futures::{Stream, StreamExt};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// Error type of the limited stream.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body went past the budget.
#[derive(Debug, thiserror::Error)]
#[error("request body larger than {0} bytes")]
pub(crate) struct TooLarge(pub u64);

/// What the handler reads after the stream ended or failed: how much came and whether the
/// budget was exceeded (the multipart reader wraps stream errors, so the flag is the reliable signal).
#[derive(Debug, Default)]
pub(crate) struct BodyMeter {
    seen: AtomicU64,
    exceeded: AtomicBool,
}

impl BodyMeter {
    /// Bytes received so far.
    pub fn seen(&self) -> u64 {
        self.seen.load(Ordering::Relaxed)
    }

    /// Whether the stream was cut for exceeding the budget.
    pub fn exceeded(&self) -> bool {
        self.exceeded.load(Ordering::Relaxed)
    }
}

/// Wraps a body stream: counts bytes and fails with [`TooLarge`] once more than `max` came.
pub(crate) fn limited<S, E>(
    body: S,
    max: u64,
    meter: Arc<BodyMeter>,
) -> impl Stream<Item = Result<Bytes, BoxError>> + Send + 'static
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: Into<BoxError>,
{
    body.map(move |item| {
        let chunk = item.map_err(Into::into)?;
        let total = meter
            .seen
            .fetch_add(chunk.len() as u64, Ordering::Relaxed)
            .saturating_add(chunk.len() as u64);
        if total > max {
            meter.exceeded.store(true, Ordering::Relaxed);
            return Err(Box::new(TooLarge(max)) as BoxError);
        }
        Ok(chunk)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn passes_under_the_budget_and_fails_over_it() {
        let chunks = || {
            futures::stream::iter(vec![
                Ok::<_, std::io::Error>(Bytes::from_static(b"12345")),
                Ok(Bytes::from_static(b"67890")),
            ])
        };
        let meter = Arc::new(BodyMeter::default());
        let got: Vec<_> = limited(chunks(), 10, Arc::clone(&meter)).collect().await;
        assert!(got.iter().all(|r| r.is_ok()));
        assert_eq!(meter.seen(), 10);
        assert!(!meter.exceeded());

        let meter = Arc::new(BodyMeter::default());
        let got: Vec<_> = limited(chunks(), 7, Arc::clone(&meter)).collect().await;
        assert!(got[0].is_ok());
        assert!(got[1].is_err());
        assert!(meter.exceeded());
    }
}
