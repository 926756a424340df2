//! Admission: whether the server takes on a request at all, decided before the work.
//!
//! Input: each ingest request as it arrives, its body frames as they are read, and its
//! decompressed size. Output: an [`Admitted`] guard holding the request's share of the
//! budgets until the request is answered, or a refusal ([`AdmissionError`], answered 503 /
//! `UNAVAILABLE` with `Retry-After`). Invariants: each front end serves at most its
//! `--max-concurrent-requests` at once; the bytes of every request in flight — body as
//! read, then [`DECODE_FACTOR`] × its decompressed size (or its structural footprint, if
//! larger) for the decompressed body, the decoded request and its chunk — stay within
//! `--max-inflight-bytes`, counted before they are allocated. A request larger than the
//! whole budget still runs when nothing else is in flight: what is too large is decided by
//! the request cap and, for its decoding, by `max(--max-inflight-bytes,
//! 4 × --max-message-bytes)` (413 / `RESOURCE_EXHAUSTED`, never retried).
//! Each check is an atomic compare-and-swap; nothing waits.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::decode::footprint::{Shape, footprint};

/// Bytes reserved per decompressed byte for the decompressed body, the decoded request
/// and its chunk (measured on the synthetic requests of `crate::fake`: the prost tree
/// takes 2–3× the wire size, the chunk about 1×).
pub const DECODE_FACTOR: u64 = 4;

/// Why a request was not taken on.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AdmissionError {
    /// The front end already serves its maximum of requests.
    #[error(
        "{front} is serving its maximum of {limit} concurrent requests (--max-concurrent-requests); retry later"
    )]
    Concurrency {
        /// The front end.
        front: &'static str,
        /// Its bound.
        limit: usize,
    },
    /// Decoding this one request would hold more than any request may (its structure
    /// multiplies its size: many tiny spans, attributes or JSON containers).
    #[error(
        "decoding this request would hold about {needs} bytes, more than the {limit} one request may use (4 × --max-message-bytes, or --max-inflight-bytes if larger); send fewer, larger values per request"
    )]
    DecodesTooLarge {
        /// The estimate.
        needs: u64,
        /// The bound.
        limit: u64,
    },
    /// The bytes of the requests in flight would pass the budget.
    #[error(
        "the requests in flight hold their budget of {limit} bytes (--max-inflight-bytes); retry later"
    )]
    Bytes {
        /// The budget.
        limit: u64,
    },
}

impl AdmissionError {
    /// Whether retrying the same request could succeed (a busy server), as opposed to a
    /// request that is too large to ever be taken on.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, AdmissionError::DecodesTooLarge { .. })
    }
}

/// The bytes budget shared by every front end.
#[derive(Debug)]
pub struct Budget {
    limit: u64,
    /// The most that decoding one request may hold.
    request_limit: u64,
    used: AtomicU64,
}

impl Budget {
    /// A budget of `limit` bytes, with requests of at most `max_message_bytes`.
    pub fn new(limit: u64, max_message_bytes: u64) -> Arc<Self> {
        Arc::new(Self {
            limit,
            request_limit: limit.max(DECODE_FACTOR.saturating_mul(max_message_bytes)),
            used: AtomicU64::new(0),
        })
    }

    /// Takes `n` bytes if they fit, or if the taker (holding `own`) is the only holder.
    fn try_take(&self, n: u64, own: u64) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                let after = used.saturating_add(n);
                (used == own || after <= self.limit).then_some(after)
            })
            .is_ok()
    }

    fn give(&self, n: u64) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }

    /// Bytes held now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }
}

/// One front end's bound on concurrent requests, over the shared bytes budget.
#[derive(Debug, Clone)]
pub struct Admission {
    front: &'static str,
    slots: Arc<Semaphore>,
    limit: usize,
    budget: Arc<Budget>,
}

impl Admission {
    /// Admission for the front end `front` (named in refusals).
    pub fn new(front: &'static str, max_concurrent: usize, budget: Arc<Budget>) -> Self {
        Self {
            front,
            slots: Arc::new(Semaphore::new(max_concurrent)),
            limit: max_concurrent,
            budget,
        }
    }

    /// Takes a request on, or refuses it at once.
    pub fn admit(&self) -> Result<Arc<Admitted>, AdmissionError> {
        let slot =
            self.slots
                .clone()
                .try_acquire_owned()
                .map_err(|_| AdmissionError::Concurrency {
                    front: self.front,
                    limit: self.limit,
                })?;
        Ok(Arc::new(Admitted {
            _slot: slot,
            budget: self.budget.clone(),
            held: AtomicU64::new(0),
        }))
    }
}

/// A request taken on: its concurrency slot and the bytes it holds, given back on drop.
#[derive(Debug)]
pub struct Admitted {
    _slot: OwnedSemaphorePermit,
    budget: Arc<Budget>,
    held: AtomicU64,
}

impl Admitted {
    /// Reserves `n` more bytes for this request, or refuses it.
    pub fn reserve(&self, n: u64) -> Result<(), AdmissionError> {
        if !self.budget.try_take(n, self.held.load(Ordering::Acquire)) {
            return Err(AdmissionError::Bytes {
                limit: self.budget.limit,
            });
        }
        self.held.fetch_add(n, Ordering::AcqRel);
        Ok(())
    }

    /// Reserves what decoding `body` (decompressed) as `shape` will hold: [`DECODE_FACTOR`]
    /// × its size, or its structural [`footprint`] where that is larger. A request whose
    /// footprint passes what one request may hold is refused as too large.
    /// `held` is what the body itself already holds in the budget (its decompression).
    pub fn reserve_decoding(
        &self,
        body: &[u8],
        shape: Shape,
        held: u64,
    ) -> Result<(), AdmissionError> {
        let needs = footprint(shape, body);
        let limit = self.budget.request_limit;
        if needs > limit {
            return Err(AdmissionError::DecodesTooLarge { needs, limit });
        }
        let total = needs.max(DECODE_FACTOR.saturating_mul(body.len() as u64));
        self.reserve(total.saturating_sub(held))
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.budget.give(self.held.load(Ordering::Acquire));
    }
}

/// A body frame refused by the budget: the refusal for HTTP, and (as its source) the
/// UNAVAILABLE status that tonic finds in an error's source chain and answers as it is.
#[derive(Debug)]
pub struct Refused {
    /// Why.
    pub error: AdmissionError,
    status: tonic::Status,
}

impl Refused {
    /// The refusal in `e` or its sources (a body error may come wrapped).
    pub fn in_chain<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a Refused> {
        let mut at = Some(e);
        while let Some(err) = at {
            if let Some(refused) = err.downcast_ref::<Refused>() {
                return Some(refused);
            }
            at = err.source();
        }
        None
    }
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for Refused {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.status)
    }
}

/// A request body that reserves each frame's bytes before handing it on; when the budget
/// is spent it fails with [`Refused`].
pub struct BudgetedBody<B> {
    inner: Pin<Box<B>>,
    admitted: Arc<Admitted>,
}

impl<B> BudgetedBody<B> {
    /// `inner`, counted against `admitted`.
    pub fn new(inner: B, admitted: Arc<Admitted>) -> Self {
        Self {
            inner: Box::pin(inner),
            admitted,
        }
    }
}

impl<B> http_body::Body for BudgetedBody<B>
where
    B: http_body::Body,
    B::Data: bytes::Buf,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = B::Data;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let frame = match self.inner.as_mut().poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => return Poll::Pending,
        };
        if let Some(data) = frame.data_ref() {
            let n = bytes::Buf::remaining(data) as u64;
            if let Err(error) = self.admitted.reserve(n) {
                let status = tonic::Status::unavailable(error.to_string());
                return Poll::Ready(Some(Err(Box::new(Refused { error, status }))));
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrency_and_bytes_are_bounded_and_given_back() {
        let budget = Budget::new(100, 10);
        let admission = Admission::new("test", 2, budget.clone());
        let a = admission.admit().unwrap();
        let b = admission.admit().unwrap();
        assert!(matches!(
            admission.admit(),
            Err(AdmissionError::Concurrency { limit: 2, .. })
        ));
        a.reserve(60).unwrap();
        assert!(matches!(
            b.reserve(50),
            Err(AdmissionError::Bytes { limit: 100 })
        ));
        b.reserve(40).unwrap();
        assert_eq!(budget.used(), 100);
        drop(a);
        assert_eq!(budget.used(), 40);
        drop(b);
        assert_eq!(budget.used(), 0);
        // Alone, a request larger than the budget is still taken on, in steps too.
        let c = admission.admit().unwrap();
        c.reserve(10).unwrap();
        c.reserve(1_000).unwrap();
        let d = admission.admit().unwrap();
        assert!(d.reserve(1).is_err());
    }
}
