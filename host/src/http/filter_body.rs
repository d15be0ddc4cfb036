//! Body and trailer hooks. When a stream's filters want bodies, the filters and the
//! stream info move into a [`SharedChain`]; request and response bodies then pass
//! through [`FilteredBody`], which runs each frame through the hooks (request in
//! chain order, response in reverse). Streams whose filters do not want bodies
//! never build any of this.

use std::cell::{RefCell, RefMut};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::Frame;
use legate_filter_api::{DataAction, HttpFilter, LocalReply, StreamInfo};

use super::body::{Body, BoxError};

/// The filters of one stream and what they share, once bodies are filtered.
pub(crate) struct Chain {
    pub filters: Vec<Box<dyn HttpFilter>>,
    pub info: StreamInfo,
    /// A local reply a request-body hook asked for; the stream answers with it
    /// once the upstream request has been abandoned.
    pub local_reply: Option<LocalReply>,
}

/// The chain, shared by the stream and its filtered bodies. A hook that waits
/// keeps it locked across its await, so the lock is async; taking a free one is
/// a `RefCell` borrow (a worker is one thread).
#[derive(Clone)]
pub(crate) struct SharedChain(Rc<ChainCell>);

struct ChainCell {
    chain: RefCell<Chain>,
    unlocked: tokio::sync::Notify,
}

/// The chain, locked.
pub(crate) struct ChainGuard<'a> {
    chain: RefMut<'a, Chain>,
    unlocked: &'a tokio::sync::Notify,
}

impl SharedChain {
    pub(crate) fn new(chain: Chain) -> SharedChain {
        SharedChain(Rc::new(ChainCell {
            chain: RefCell::new(chain),
            unlocked: tokio::sync::Notify::new(),
        }))
    }

    pub(crate) async fn lock(&self) -> ChainGuard<'_> {
        loop {
            if let Some(g) = self.try_lock() {
                return g;
            }
            self.0.unlocked.notified().await;
        }
    }

    pub(crate) fn try_lock(&self) -> Option<ChainGuard<'_>> {
        let chain = self.0.chain.try_borrow_mut().ok()?;
        Some(ChainGuard {
            chain,
            unlocked: &self.0.unlocked,
        })
    }
}

impl std::ops::Deref for ChainGuard<'_> {
    type Target = Chain;
    fn deref(&self) -> &Chain {
        &self.chain
    }
}

impl std::ops::DerefMut for ChainGuard<'_> {
    fn deref_mut(&mut self) -> &mut Chain {
        &mut self.chain
    }
}

impl Drop for ChainGuard<'_> {
    fn drop(&mut self) {
        // A waiter wakes after this task yields, when the borrow is gone; with
        // none, the permit kept just makes the next contended lock retry.
        self.unlocked.notify_one();
    }
}

type Polled = Option<Result<Frame<Bytes>, BoxError>>;

/// Starts the hooks on one frame (see [`run`]).
type Run<F> = fn(SharedChain, Option<Frame<Bytes>>, bool, bool) -> F;

pin_project_lite::pin_project! {
    /// A body whose frames run through the chain's body and trailer hooks.
    struct FilteredBody<F> {
        inner: Body,
        chain: SharedChain,
        request: bool,
        run: Run<F>,
        // The hooks at work on a frame, kept in the body itself (pinned with
        // it) rather than in a box of their own.
        #[pin]
        pending: Option<F>,
        // `pending` holds hooks that have not finished.
        busy: bool,
        // The hooks have seen `end_of_stream`.
        ended: bool,
        // The rest of a response chunk split for a filter's
        // [`HttpFilter::max_response_chunk`], and whether it ends the stream.
        carry: Option<(Bytes, bool)>,
        // The smallest chunk limit of the filters, once asked (responses only).
        chunk_limit: Option<Option<usize>>,
    }
}

/// `inner`, its frames run through the chain's hooks (request hooks when
/// `request`, else response hooks).
pub(crate) fn filtered(inner: Body, chain: SharedChain, request: bool) -> Body {
    Body::Filtered(Box::pin(FilteredBody {
        inner,
        chain,
        request,
        run,
        pending: None,
        busy: false,
        ended: false,
        carry: None,
        chunk_limit: None,
    }))
}

/// Runs one frame (or the end of the stream, as an empty chunk) through the hooks.
async fn run(chain: SharedChain, frame: Option<Frame<Bytes>>, eos: bool, request: bool) -> Polled {
    let mut guard = chain.lock().await;
    let c = &mut *guard;
    let n = c.filters.len();
    let order = |i: usize| if request { i } else { n - 1 - i };
    let frame = frame.unwrap_or_else(|| Frame::data(Bytes::new()));
    let out = match frame.into_data() {
        Ok(mut chunk) => {
            for i in 0..n {
                let f = &mut c.filters[order(i)];
                let step = if request {
                    f.on_request_body(&mut chunk, eos, &mut c.info)
                } else {
                    f.on_response_body(&mut chunk, eos, &mut c.info)
                };
                if let DataAction::Respond(r) = step.action().await {
                    return refuse(c, *r, request);
                }
            }
            if chunk.is_empty() && eos {
                return None;
            }
            Frame::data(chunk)
        }
        Err(frame) => match frame.into_trailers() {
            Ok(mut trailers) => {
                for i in 0..n {
                    let f = &mut c.filters[order(i)];
                    let step = if request {
                        f.on_request_trailers(&mut trailers, &mut c.info)
                    } else {
                        f.on_response_trailers(&mut trailers, &mut c.info)
                    };
                    if let DataAction::Respond(r) = step.action().await {
                        return refuse(c, *r, request);
                    }
                }
                Frame::trailers(trailers)
            }
            // Unknown frame kinds pass untouched.
            Err(other) => other,
        },
    };
    Some(Ok(out))
}

/// A body hook answered locally: the request side records the reply and aborts
/// the upstream request; on the response side the headers are gone, so the
/// stream is reset.
fn refuse(c: &mut Chain, r: LocalReply, request: bool) -> Polled {
    if request {
        c.local_reply = Some(r);
        Some(Err("request body refused by a filter".into()))
    } else {
        Some(Err("response body refused by a filter".into()))
    }
}

/// A response chunk cut to the filters' chunk limit; the rest is kept in
/// `carry` for the next poll, and only the last piece carries the end of the
/// stream.
fn split(
    chain: &SharedChain,
    chunk_limit: &mut Option<Option<usize>>,
    carry: &mut Option<(Bytes, bool)>,
    mut data: Bytes,
    eos: bool,
) -> (Option<Frame<Bytes>>, bool) {
    let limit = match *chunk_limit {
        Some(l) => l,
        None => match chain.try_lock() {
            Some(c) => {
                let l = c
                    .filters
                    .iter()
                    .filter_map(|f| f.max_response_chunk())
                    .min();
                *chunk_limit = Some(l);
                l
            }
            // A request hook holds the chain: ask again on the next chunk.
            None => None,
        },
    };
    match limit {
        Some(n) if data.len() > n.max(1) => {
            let rest = data.split_off(n.max(1));
            *carry = Some((rest, eos));
            (Some(Frame::data(data)), false)
        }
        _ => (Some(Frame::data(data)), eos),
    }
}

impl<F: Future<Output = Polled>> http_body::Body for FilteredBody<F> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Polled> {
        let mut this = self.project();
        loop {
            if *this.busy
                && let Some(p) = this.pending.as_mut().as_pin_mut()
            {
                let r = ready!(p.poll(cx));
                *this.busy = false;
                if r.is_none() && !*this.ended {
                    continue;
                }
                return Poll::Ready(r);
            }
            if *this.ended {
                return Poll::Ready(None);
            }
            let (chain, limit, carry) = (&*this.chain, &mut *this.chunk_limit, &mut *this.carry);
            let (frame, eos) = match carry.take() {
                Some((rest, eos)) => split(chain, limit, carry, rest, eos),
                None => match ready!(Pin::new(&mut *this.inner).poll_frame(cx)) {
                    Some(Ok(f)) => {
                        let eos = this.inner.is_end_stream() || f.is_trailers();
                        match f.into_data() {
                            Ok(data) if !*this.request => split(chain, limit, carry, data, eos),
                            Ok(data) => (Some(Frame::data(data)), eos),
                            Err(f) => (Some(f), eos),
                        }
                    }
                    // The stream ended without an end-of-stream frame: the hooks get
                    // an empty last chunk, as Envoy's do.
                    None => (None, true),
                    Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                },
            };
            *this.ended = eos;
            let hooks = (this.run)(this.chain.clone(), frame, eos, *this.request);
            this.pending.set(Some(hooks));
            *this.busy = true;
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended && !self.busy
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::time::SystemTime;

    use http_body_util::BodyExt;
    use legate_filter_api::Step;

    use super::*;

    struct Tagger {
        tag: &'static str,
        log: Rc<RefCell<Vec<String>>>,
        refuse_request_body: bool,
    }

    impl HttpFilter for Tagger {
        fn on_request_body<'a>(
            &'a mut self,
            chunk: &'a mut Bytes,
            eos: bool,
            _info: &'a mut StreamInfo,
        ) -> Step<'a, DataAction> {
            Step::wait(async move {
                tokio::task::yield_now().await;
                self.log
                    .borrow_mut()
                    .push(format!("req:{}:{eos}", self.tag));
                if self.refuse_request_body {
                    let r = LocalReply::new(http::StatusCode::PAYLOAD_TOO_LARGE, "no");
                    return DataAction::Respond(Box::new(r));
                }
                *chunk = Bytes::from(format!("{}{}", String::from_utf8_lossy(chunk), self.tag));
                DataAction::Continue
            })
        }

        fn on_response_body<'a>(
            &'a mut self,
            chunk: &'a mut Bytes,
            eos: bool,
            _info: &'a mut StreamInfo,
        ) -> Step<'a, DataAction> {
            self.log
                .borrow_mut()
                .push(format!("resp:{}:{eos}", self.tag));
            *chunk = Bytes::from(format!("{}{}", String::from_utf8_lossy(chunk), self.tag));
            Step::Done(DataAction::Continue)
        }

        fn on_response_trailers<'a>(
            &'a mut self,
            trailers: &'a mut http::HeaderMap,
            _info: &'a mut StreamInfo,
        ) -> Step<'a, DataAction> {
            trailers.append("x-seen", self.tag.parse().unwrap());
            Step::Done(DataAction::Continue)
        }

        fn wants_body(&self, _body: legate_filter_api::BodyShape) -> bool {
            true
        }
    }

    fn chain(log: &Rc<RefCell<Vec<String>>>, refuse: bool) -> SharedChain {
        let filters: Vec<Box<dyn HttpFilter>> = ["a", "b"]
            .iter()
            .map(|t| {
                Box::new(Tagger {
                    tag: t,
                    log: log.clone(),
                    refuse_request_body: refuse && *t == "b",
                }) as Box<dyn HttpFilter>
            })
            .collect();
        SharedChain::new(Chain {
            filters,
            info: StreamInfo::new(
                SystemTime::now(),
                "127.0.0.1:1".parse().unwrap(),
                "127.0.0.1:2".parse().unwrap(),
                1,
            ),
            local_reply: None,
        })
    }

    #[tokio::test]
    async fn request_bodies_run_in_order_responses_in_reverse() {
        let log = Rc::new(RefCell::new(Vec::new()));
        let c = chain(&log, false);
        let req = filtered(Body::full("x"), c.clone(), true);
        let out = req.collect().await.unwrap().to_bytes();
        assert_eq!(out, "xab");
        let resp = filtered(Body::full("y"), c.clone(), false);
        let out = resp.collect().await.unwrap().to_bytes();
        assert_eq!(out, "yba");
        assert_eq!(
            *log.borrow(),
            ["req:a:true", "req:b:true", "resp:b:true", "resp:a:true"]
        );
    }

    #[tokio::test]
    async fn trailers_pass_the_hooks() {
        let log = Rc::new(RefCell::new(Vec::new()));
        let c = chain(&log, false);
        let mut t = http::HeaderMap::new();
        t.insert("grpc-status", "0".parse().unwrap());
        let inner = http_body_util::StreamBody::new(futures_stream(vec![
            Frame::data(Bytes::from("m")),
            Frame::trailers(t),
        ]));
        let body = filtered(
            Body::Stream(http_body_util::BodyExt::boxed_unsync(inner)),
            c,
            false,
        );
        let collected = body.collect().await.unwrap();
        let trailers = collected.trailers().cloned().unwrap();
        let seen: Vec<_> = trailers.get_all("x-seen").iter().collect();
        assert_eq!(seen, ["b", "a"]);
        assert_eq!(trailers["grpc-status"], "0");
        // The data frame was not the end: no `end_of_stream` on it.
        assert_eq!(*log.borrow(), ["resp:b:false", "resp:a:false"]);
    }

    #[tokio::test]
    async fn a_refused_request_body_records_the_reply() {
        let log = Rc::new(RefCell::new(Vec::new()));
        let c = chain(&log, true);
        let req = filtered(Body::full("x"), c.clone(), true);
        assert!(req.collect().await.is_err());
        let reply = c.lock().await.local_reply.take().unwrap();
        assert_eq!(reply.status, http::StatusCode::PAYLOAD_TOO_LARGE);
    }

    struct Slicer(Rc<RefCell<Vec<String>>>);

    impl HttpFilter for Slicer {
        fn on_response_body<'a>(
            &'a mut self,
            chunk: &'a mut Bytes,
            eos: bool,
            _info: &'a mut StreamInfo,
        ) -> Step<'a, DataAction> {
            let s = format!("{}:{eos}", String::from_utf8_lossy(chunk));
            self.0.borrow_mut().push(s);
            Step::Done(DataAction::Continue)
        }

        fn wants_body(&self, _body: legate_filter_api::BodyShape) -> bool {
            true
        }

        fn max_response_chunk(&self) -> Option<usize> {
            Some(2)
        }
    }

    #[tokio::test]
    async fn response_chunks_are_cut_to_the_smallest_limit() {
        let log = Rc::new(RefCell::new(Vec::new()));
        let c = SharedChain::new(Chain {
            filters: vec![Box::new(Slicer(log.clone()))],
            info: StreamInfo::new(
                SystemTime::now(),
                "127.0.0.1:1".parse().unwrap(),
                "127.0.0.1:2".parse().unwrap(),
                1,
            ),
            local_reply: None,
        });
        let out = filtered(Body::full("abcde"), c.clone(), false)
            .collect()
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(out, "abcde");
        assert_eq!(*log.borrow(), ["ab:false", "cd:false", "e:true"]);
        // Requests are not cut.
        let out = filtered(Body::full("abcde"), c, true)
            .collect()
            .await
            .unwrap();
        assert_eq!(out.to_bytes(), "abcde");
        assert_eq!(log.borrow().len(), 3);
    }

    fn futures_stream(
        frames: Vec<Frame<Bytes>>,
    ) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, BoxError>> + Send {
        futures_util::stream::iter(frames.into_iter().map(Ok))
    }
}
