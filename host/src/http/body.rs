//! The one body type the proxy moves around: request and response bodies,
//! streamed from hyper or made locally.

use std::cell::Cell;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How much of a downstream request has arrived.
#[derive(Debug, Default)]
pub struct RequestProgress {
    pub bytes: Cell<u64>,
    /// The whole request (body and trailers) has been received.
    pub complete: Cell<bool>,
}

pub enum Body {
    Empty,
    Full(Option<Bytes>),
    /// A whole request a filter waited for: its data, then its trailers.
    Buffered(Option<Bytes>, Option<http::HeaderMap>),
    Incoming(Incoming),
    /// A downstream request body whose progress is recorded, for
    /// `%BYTES_RECEIVED%` and `request_timeout`.
    Counted(Incoming, Rc<RequestProgress>),
    /// A body that filters rebuilt; boxed because it is rare.
    Stream(UnsyncBoxBody<Bytes, BoxError>),
    /// A body running through the stream's body hooks (`filter_body::filtered`).
    Filtered(Pin<Box<dyn http_body::Body<Data = Bytes, Error = BoxError>>>),
}

impl Body {
    pub fn full(b: impl Into<Bytes>) -> Body {
        let b = b.into();
        if b.is_empty() {
            Body::Empty
        } else {
            Body::Full(Some(b))
        }
    }

    /// Whether the body may end in trailers; `http2` for a body received over
    /// HTTP/2. An HTTP/1 body framed by `content-length` cannot (only
    /// `chunked` carries them), nor can one already whole.
    pub fn may_have_trailers(&self, http2: bool) -> bool {
        match self {
            Body::Empty | Body::Full(_) => false,
            Body::Buffered(_, trailers) => trailers.is_some(),
            Body::Incoming(i) | Body::Counted(i, _) => {
                http2 || http_body::Body::size_hint(i).exact().is_none()
            }
            Body::Stream(_) | Body::Filtered(_) => true,
        }
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Body::Empty => Poll::Ready(None),
            Body::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Body::Buffered(data, trailers) => Poll::Ready(
                data.take()
                    .filter(|d| !d.is_empty())
                    .map(Frame::data)
                    .or_else(|| trailers.take().map(Frame::trailers))
                    .map(Ok),
            ),
            Body::Incoming(i) => Pin::new(i).poll_frame(cx).map_err(Into::into),
            Body::Counted(i, progress) => {
                let r = Pin::new(&mut *i).poll_frame(cx);
                match &r {
                    Poll::Ready(Some(Ok(f))) => {
                        if let Some(d) = f.data_ref() {
                            progress.bytes.set(progress.bytes.get() + d.len() as u64);
                        }
                        if i.is_end_stream() {
                            progress.complete.set(true);
                        }
                    }
                    Poll::Ready(None) => progress.complete.set(true),
                    _ => {}
                }
                r.map_err(Into::into)
            }
            Body::Stream(s) => Pin::new(s).poll_frame(cx),
            Body::Filtered(f) => f.as_mut().poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Empty => true,
            Body::Full(b) => b.is_none(),
            Body::Buffered(d, t) => d.as_ref().is_none_or(|d| d.is_empty()) && t.is_none(),
            Body::Incoming(i) | Body::Counted(i, _) => i.is_end_stream(),
            Body::Stream(s) => s.is_end_stream(),
            Body::Filtered(f) => f.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Empty => SizeHint::with_exact(0),
            Body::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            // With trailers the length is left open, so HTTP/1.1 goes chunked.
            Body::Buffered(d, None) => {
                SizeHint::with_exact(d.as_ref().map_or(0, |d| d.len() as u64))
            }
            Body::Buffered(_, Some(_)) => SizeHint::default(),
            Body::Incoming(i) | Body::Counted(i, _) => i.size_hint(),
            Body::Stream(s) => s.size_hint(),
            Body::Filtered(_) => SizeHint::default(),
        }
    }
}
