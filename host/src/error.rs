//! Every way a request can fail before the guest's own response, and the one place where each
//! becomes an HTTP status and a JSON body.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;

/// Why fibhost, not the guest, answers a request.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ServeError {
    /// The request cannot be handed to a guest as it is.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The declared body is larger than `max-body-size`.
    #[error("request body of {declared} bytes exceeds the limit of {limit} bytes")]
    BodyTooLarge {
        /// Content-Length the client sent.
        declared: u64,
        /// The configured limit.
        limit: u64,
    },
    /// No route's prefix matches the path.
    #[error("no component is mounted at `{0}`")]
    NoRoute(String),
    /// Every worker is busy and the wait queue is full.
    #[error("all {workers} workers are busy and the queue of {queue} is full; retry shortly")]
    Overloaded {
        /// Workers of the component.
        workers: usize,
        /// Its queue bound.
        queue: usize,
    },
    /// The server is shutting down and takes no new work.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The guest trapped before sending a response.
    #[error("the guest failed: {0}")]
    Trap(String),
    /// The guest ran past `request-timeout`.
    #[error("the guest did not answer within the request timeout of {0:?}")]
    Timeout(Duration),
    /// The guest answered `response-outparam.set` with an error code.
    #[error("the guest reported an error: {0}")]
    GuestError(String),
    /// The guest returned without setting a response.
    #[error("the guest returned without sending a response")]
    NoResponse,
    /// A host-side failure that is not the client's nor the guest's doing.
    #[error("internal error: {0}")]
    Internal(String),
}

/// A response body that could not be completed (the guest failed mid-body, or its stream
/// broke). Hyper then aborts the response instead of ending it as if it were whole.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BodyError(String);

impl BodyError {
    /// A body error saying `why`.
    pub fn new(why: impl Into<String>) -> BodyError {
        BodyError(why.into())
    }
}

/// A complete JSON response: `body` with `status` (the admin API's and the errors' shape).
pub fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Seconds a client is told to wait after a 503.
const RETRY_AFTER_SECS: &str = "1";

impl ServeError {
    /// The status this failure is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            ServeError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ServeError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ServeError::NoRoute(_) => StatusCode::NOT_FOUND,
            ServeError::Overloaded { .. } | ServeError::ShuttingDown => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ServeError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ServeError::Trap(_)
            | ServeError::GuestError(_)
            | ServeError::NoResponse
            | ServeError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The complete HTTP response: `{"error": "..."}` with the matching status.
    pub fn to_response(&self) -> Response<Full<Bytes>> {
        let mut response = json_response(
            self.status(),
            &serde_json::json!({ "error": self.to_string() }),
        );
        if self.status() == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECS),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;

    #[tokio::test]
    async fn overload_is_503_with_retry_after_and_json() {
        let response = ServeError::Overloaded {
            workers: 2,
            queue: 0,
        }
        .to_response();
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert!(
            json["error"]
                .as_str()
                .unwrap()
                .contains("queue of 0 is full")
        );
    }

    #[test]
    fn statuses() {
        assert_eq!(ServeError::Timeout(Duration::from_secs(1)).status(), 504);
        assert_eq!(ServeError::Trap("x".into()).status(), 500);
        assert_eq!(ServeError::NoRoute("/x".into()).status(), 404);
        assert_eq!(
            ServeError::BodyTooLarge {
                declared: 2,
                limit: 1
            }
            .status(),
            413
        );
    }
}
