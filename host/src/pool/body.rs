//! The pool's response body: the guest's streamed body, carrying back to the pool what it must
//! learn from the response's end (bytes sent, for its worker's stats; a body cut short by a
//! failed guest, which must end as an error; the admission slot, released when it is done).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

use super::admission::Admission;
use super::stats::LaneStats;
use crate::error::BodyError;
use crate::guest::GuestBody;

/// What a job's worker and its response body share.
#[derive(Debug)]
pub(super) struct JobShared {
    /// The worker serving it (1-based); 0 until a worker takes it.
    pub worker: AtomicUsize,
    /// Set when the call failed (trap, timeout) before the instance is dropped: a body that
    /// ends after this was cut short, not finished.
    pub failed: AtomicBool,
    /// Its slot in the pool's admission count.
    pub admission: Admission,
}

/// A guest's response body on its way to the client.
pub struct PoolBody {
    inner: GuestBody,
    job: Arc<JobShared>,
    stats: Arc<LaneStats>,
    bytes: u64,
}

impl PoolBody {
    pub(super) fn new(inner: GuestBody, job: Arc<JobShared>, stats: Arc<LaneStats>) -> Self {
        PoolBody {
            inner,
            job,
            stats,
            bytes: 0,
        }
    }

    /// The worker that served the request (1-based).
    pub fn worker(&self) -> usize {
        self.job.worker.load(Ordering::Relaxed)
    }

    /// Body bytes handed on so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// A handle that releases the request's admission slot, for whoever holds the response
    /// when it is complete for the client (a buffer this body is pumped into).
    pub fn completion(&self) -> Completion {
        Completion(self.job.clone())
    }
}

/// Releases a request's admission slot when the response is complete for the client (see
/// [`PoolBody::completion`]); dropping it does the same.
pub struct Completion(Arc<JobShared>);

impl Drop for Completion {
    fn drop(&mut self) {
        self.0.admission.release();
    }
}

impl Body for PoolBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes += data.len() as u64;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(BodyError::new(format!(
                "guest response body failed: {e}"
            ))))),
            Poll::Ready(None) if self.job.failed.load(Ordering::Acquire) => Poll::Ready(Some(Err(
                BodyError::new("the guest failed before finishing the response body"),
            ))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for PoolBody {
    fn drop(&mut self) {
        if let Some(worker) = self.stats.0.worker(self.worker()) {
            worker.tx_bytes.fetch_add(self.bytes, Ordering::Relaxed);
        }
        self.job.admission.release();
    }
}
