//! `envoy.filters.http.wasm`: a proxy-wasm stream context behind the native
//! [`HttpFilter`] trait. A callback that does not pause answers its hook at once;
//! a paused one makes a waiting hook ([`Step::wait`]), which awaits its context's
//! events (call responses, `proxy_continue_stream`, a local reply) and runs the
//! callbacks they trigger with the stream's data lent to the VM.

use std::rc::Rc;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use legate_filter_api::{
    BodyShape, DataAction, HeadersAction, HttpFilter, HttpFilterFactory, LocalReply, RequestHead,
    ResponseHead, Step, StreamInfo,
};

use super::Plugin;
use super::slot::{Lent, Slot, slot};
use super::vm::{Data, Failed, Inbox, Outcome, Vm};

/// Builds the per-stream filters of one plugin.
pub struct WasmHttpFactory {
    plugin: Arc<Plugin>,
}

impl WasmHttpFactory {
    pub fn new(plugin: Arc<Plugin>) -> WasmHttpFactory {
        WasmHttpFactory { plugin }
    }
}

impl HttpFilterFactory for WasmHttpFactory {
    fn create(&self) -> Box<dyn HttpFilter> {
        let slot = slot(&self.plugin);
        Box::new(WasmHttpFilter {
            data: slot.take_data(),
            slot,
            plugin: self.plugin.clone(),
            cx: None,
            bypass: false,
            req_buf: BytesMut::new(),
            resp_buf: BytesMut::new(),
            request_buffered: false,
            response_buffered: false,
        })
    }
}

/// The stream's context in its VM.
struct Cx {
    vm: Rc<Vm>,
    id: u32,
}

pub struct WasmHttpFilter {
    slot: Rc<Slot<Vm>>,
    plugin: Arc<Plugin>,
    cx: Option<Cx>,
    /// FAIL_OPEN after a failure: the filter steps aside for the rest of the stream.
    bypass: bool,
    data: Lent,
    req_buf: BytesMut,
    resp_buf: BytesMut,
    /// The request body went through `on_request_buffered`: the body hooks pass.
    request_buffered: bool,
    /// The same for the response and `on_response_buffered`.
    response_buffered: bool,
}

/// How a callback (and whatever it waited for) ended.
enum Done {
    Continue,
    /// Paused on a body chunk: keep buffering.
    Buffer,
    /// Paused on request headers with nothing pending: wait for the body, as
    /// Envoy's StopIteration does.
    WaitForBody,
    Reply(Box<LocalReply>),
}

pub(super) fn placeholder_request() -> RequestHead {
    RequestHead {
        method: http::Method::GET,
        uri: http::Uri::default(),
        version: http::Version::HTTP_11,
        headers: http::HeaderMap::new(),
    }
}

/// Where a callback left its context.
enum Progress {
    /// Done with the hook, one way or another.
    Ended(Result<Done, Failed>),
    /// Paused on something the host will deliver to this inbox.
    Paused(Rc<Inbox>, Outcome),
}

impl WasmHttpFilter {
    /// The stream's context, created on first use.
    fn context(&mut self) -> Result<(Rc<Vm>, u32), Failed> {
        if let Some(c) = &self.cx {
            return Ok((c.vm.clone(), c.id));
        }
        let vm = self.slot.vm().map_err(Failed)?;
        let id = vm.new_context()?;
        self.cx = Some(Cx { vm: vm.clone(), id });
        Ok((vm, id))
    }

    /// What the failure policy gives the stream.
    fn failure(&mut self, Failed(why): Failed) -> Option<Box<LocalReply>> {
        if self.plugin.fails_open(&why) {
            self.bypass = true;
            None
        } else {
            Some(super::fail_reply())
        }
    }

    /// Runs a callback, and the events it has waiting.
    fn call(
        &mut self,
        wait: bool,
        body_follows: bool,
        f: impl FnOnce(&Vm, u32, &mut Data) -> Result<Outcome, Failed>,
    ) -> Progress {
        let r = self
            .context()
            .and_then(|(vm, id)| f(&vm, id, &mut self.data));
        match r {
            Ok(out) => self.settle(out, wait, body_follows),
            Err(e) => Progress::Ended(Err(e)),
        }
    }

    /// How a callback (and the events delivered since) left the context:
    /// delivers its pending events until it resumes or has to wait.
    fn settle(&mut self, mut out: Outcome, wait: bool, body_follows: bool) -> Progress {
        let Some(cx) = &self.cx else {
            return Progress::Ended(Ok(Done::Continue));
        };
        let (vm, id) = (cx.vm.clone(), cx.id);
        let done = loop {
            if let Some(r) = out.reply.take() {
                break Done::Reply(r);
            }
            if out.close {
                let mut r = LocalReply::new(http::StatusCode::SERVICE_UNAVAILABLE, Bytes::new());
                r.details = "wasm_close_stream";
                break Done::Reply(Box::new(r));
            }
            if out.action == 0 || out.resume {
                break Done::Continue;
            }
            if !wait {
                break Done::Buffer;
            }
            match vm.drain(id, &mut self.data, &mut out) {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => return Progress::Ended(Err(e)),
            }
            if !vm.has_pending(id) {
                // Nothing the host holds can resume it: wait for the request body
                // if one follows, else go on (Envoy would hang the stream).
                break if body_follows {
                    Done::WaitForBody
                } else {
                    Done::Continue
                };
            }
            match vm.inbox(id) {
                Some(inbox) => return Progress::Paused(inbox, out),
                None => break Done::Continue,
            }
        };
        Progress::Ended(Ok(done))
    }

    /// Waits out a paused callback.
    async fn wait(&mut self, mut progress: Progress, body_follows: bool) -> Result<Done, Failed> {
        loop {
            match progress {
                Progress::Ended(r) => return r,
                Progress::Paused(inbox, out) => {
                    inbox.notify.notified().await;
                    progress = self.settle(out, true, body_follows);
                }
            }
        }
    }

    /// Runs a callback and gives its hook the step: `finish` takes the lent
    /// data back and makes the hook's action, at once or after the wait.
    fn step<'a, A: 'a>(
        &'a mut self,
        wait: bool,
        body_follows: bool,
        f: impl FnOnce(&Vm, u32, &mut Data) -> Result<Outcome, Failed>,
        finish: impl FnOnce(&mut Self, Result<Done, Failed>) -> A + 'a,
    ) -> Step<'a, A> {
        match self.call(wait, body_follows, f) {
            Progress::Ended(r) => Step::Done(finish(self, r)),
            paused => Step::wait(async move {
                let r = self.wait(paused, body_follows).await;
                finish(self, r)
            }),
        }
    }

    /// What a hook answers for how its callback ended.
    fn headers_action(&mut self, r: Result<Done, Failed>) -> HeadersAction {
        match r {
            Ok(Done::Reply(r)) => HeadersAction::Respond(r),
            Ok(Done::WaitForBody) => HeadersAction::WaitForBody {
                limit: self.plugin.config.limits.max_buffered_body_bytes,
            },
            Ok(Done::Continue | Done::Buffer) => HeadersAction::Continue,
            Err(e) => match self.failure(e) {
                Some(r) => HeadersAction::Respond(r),
                None => HeadersAction::Continue,
            },
        }
    }

    /// Events that arrived while the stream was not paused.
    fn drain_events(&mut self) -> Result<Option<Box<LocalReply>>, Failed> {
        let Some(cx) = &self.cx else { return Ok(None) };
        let (vm, id) = (cx.vm.clone(), cx.id);
        let mut out = Outcome::default();
        vm.drain(id, &mut self.data, &mut out)?;
        Ok(out.reply)
    }

    fn body<'a>(
        &'a mut self,
        request: bool,
        chunk: &'a mut Bytes,
        eos: bool,
        info: &'a mut StreamInfo,
    ) -> Step<'a, DataAction> {
        if self.bypass {
            return Step::Done(DataAction::Continue);
        }
        let limit = self.plugin.config.limits.max_buffered_body_bytes;
        let held = if request {
            &mut self.req_buf
        } else {
            &mut self.resp_buf
        };
        // Nothing held back: the chunk itself, uncopied.
        let body = if held.is_empty() {
            std::mem::take(chunk)
        } else {
            held.extend_from_slice(chunk);
            held.split().freeze()
        };
        if body.len() > limit {
            // Envoy's answers when a buffering filter overflows.
            let (status, body) = if request {
                (http::StatusCode::PAYLOAD_TOO_LARGE, "Payload Too Large")
            } else {
                (
                    http::StatusCode::INTERNAL_SERVER_ERROR,
                    "Internal Server Error",
                )
            };
            let mut r = LocalReply::new(status, body);
            r.details = if request {
                "request_payload_too_large"
            } else {
                "response_payload_too_large"
            };
            return Step::Done(DataAction::Respond(Box::new(r)));
        }
        let size = body.len();
        self.data.body = Some((if request { 0 } else { 1 }, body));
        self.data.info = Some(info.take());
        self.step(
            eos,
            false,
            |vm, id, d| vm.body(id, request, size, eos, d),
            move |this, r| {
                if let Some(i) = this.data.info.take() {
                    *info = i;
                }
                let body = this.data.body.take().map(|(_, b)| b).unwrap_or_default();
                match r {
                    Ok(Done::Continue | Done::WaitForBody) => {
                        *chunk = body;
                        DataAction::Continue
                    }
                    Ok(Done::Buffer) => {
                        // Held back until a later chunk continues.
                        let held = if request {
                            &mut this.req_buf
                        } else {
                            &mut this.resp_buf
                        };
                        *held = body
                            .try_into_mut()
                            .unwrap_or_else(|b| BytesMut::from(&b[..]));
                        *chunk = Bytes::new();
                        DataAction::Continue
                    }
                    Ok(Done::Reply(r)) => DataAction::Respond(r),
                    Err(e) => {
                        *chunk = body;
                        match this.failure(e) {
                            Some(r) => DataAction::Respond(r),
                            None => DataAction::Continue,
                        }
                    }
                }
            },
        )
    }

    /// For a filter that waited for a whole message (its head already lent):
    /// the body callback with all of the body, then the trailers callback.
    async fn whole_body(
        &mut self,
        request: bool,
        body: &mut Bytes,
        trailers: &mut Option<http::HeaderMap>,
        info: &mut StreamInfo,
    ) -> Result<Done, Failed> {
        let eos = trailers.is_none();
        let size = body.len();
        let lent = trailers.take();
        let n = lent.as_ref().map(http::HeaderMap::len);
        if request {
            self.data.req_trailers = lent;
        } else {
            self.data.resp_trailers = lent;
        }
        self.data.info = Some(info.take());
        self.data.body = Some((u32::from(!request), body.clone()));
        let p = self.call(true, false, |vm, id, d| vm.body(id, request, size, eos, d));
        let mut r = self.wait(p, false).await;
        if let (Ok(Done::Continue), Some(n)) = (&r, n) {
            let p = self.call(true, false, |vm, id, d| vm.trailers(id, request, n, d));
            r = self.wait(p, false).await;
        }
        if let Some(i) = self.data.info.take() {
            *info = i;
        }
        if let Some((_, b)) = self.data.body.take() {
            *body = b;
        }
        *trailers = if request {
            self.data.req_trailers.take()
        } else {
            self.data.resp_trailers.take()
        };
        r
    }

    fn trailers<'a>(
        &'a mut self,
        request: bool,
        trailers: &'a mut http::HeaderMap,
        info: &'a mut StreamInfo,
    ) -> Step<'a, DataAction> {
        if self.bypass {
            return Step::Done(DataAction::Continue);
        }
        let n = trailers.len();
        let slot = if request {
            &mut self.data.req_trailers
        } else {
            &mut self.data.resp_trailers
        };
        *slot = Some(std::mem::take(trailers));
        self.data.info = Some(info.take());
        self.step(
            true,
            false,
            |vm, id, d| vm.trailers(id, request, n, d),
            move |this, r| {
                if let Some(i) = this.data.info.take() {
                    *info = i;
                }
                let slot = if request {
                    &mut this.data.req_trailers
                } else {
                    &mut this.data.resp_trailers
                };
                *trailers = slot.take().unwrap_or_default();
                match this.headers_action(r) {
                    HeadersAction::Respond(r) => DataAction::Respond(r),
                    _ => DataAction::Continue,
                }
            },
        )
    }
}

impl HttpFilter for WasmHttpFilter {
    fn on_request_headers<'a>(
        &'a mut self,
        head: &'a mut RequestHead,
        eos: bool,
        info: &'a mut StreamInfo,
    ) -> Step<'a, HeadersAction> {
        if self.bypass {
            return Step::Done(HeadersAction::Continue);
        }
        // Pseudo-headers count too, as in Envoy.
        let n = head.headers.len() + 4;
        // The guest may change the request, so it is routed again, as Envoy
        // clears the route cache when a Wasm filter edits request headers.
        info.route_cache_cleared = true;
        self.data.req = Some(std::mem::replace(head, placeholder_request()));
        self.data.info = Some(info.take());
        self.step(
            true,
            !eos,
            |vm, id, d| vm.headers(id, true, n, eos, d),
            move |this, r| {
                if let Some(h) = this.data.req.take() {
                    *head = h;
                }
                if let Some(i) = this.data.info.take() {
                    *info = i;
                }
                this.data.req_seen.set_request(head);
                this.headers_action(r)
            },
        )
    }

    fn on_request_buffered<'a>(
        &'a mut self,
        head: &'a mut RequestHead,
        body: &'a mut Bytes,
        trailers: &'a mut Option<http::HeaderMap>,
        info: &'a mut StreamInfo,
    ) -> Step<'a, HeadersAction> {
        self.request_buffered = true;
        if self.bypass {
            return Step::Done(HeadersAction::Continue);
        }
        // Rare (a filter waited for the whole request): one future for both
        // callbacks.
        Step::wait(async move {
            self.data.req = Some(std::mem::replace(head, placeholder_request()));
            let r = self.whole_body(true, body, trailers, info).await;
            if let Some(h) = self.data.req.take() {
                *head = h;
            }
            self.data.req_seen.set_request(head);
            self.headers_action(r)
        })
    }

    fn on_request_body<'a>(
        &'a mut self,
        chunk: &'a mut Bytes,
        eos: bool,
        info: &'a mut StreamInfo,
    ) -> Step<'a, DataAction> {
        if self.request_buffered {
            return Step::Done(DataAction::Continue);
        }
        self.body(true, chunk, eos, info)
    }

    fn on_request_trailers<'a>(
        &'a mut self,
        trailers: &'a mut http::HeaderMap,
        info: &'a mut StreamInfo,
    ) -> Step<'a, DataAction> {
        if self.request_buffered {
            return Step::Done(DataAction::Continue);
        }
        self.trailers(true, trailers, info)
    }

    fn on_response_headers<'a>(
        &'a mut self,
        head: &'a mut ResponseHead,
        eos: bool,
        info: &'a mut StreamInfo,
    ) -> Step<'a, HeadersAction> {
        if self.bypass {
            return Step::Done(HeadersAction::Continue);
        }
        match self.drain_events() {
            Ok(Some(r)) => return Step::Done(HeadersAction::Respond(r)),
            Ok(None) => {}
            Err(e) => {
                return Step::Done(match self.failure(e) {
                    Some(r) => HeadersAction::Respond(r),
                    None => HeadersAction::Continue,
                });
            }
        }
        let n = head.headers.len() + 1;
        self.data.resp = Some(std::mem::replace(
            head,
            ResponseHead {
                status: head.status,
                headers: http::HeaderMap::new(),
            },
        ));
        self.data.info = Some(info.take());
        // A pause with nothing pending waits for the body, as Envoy's
        // StopIteration holds the headers; the body callback may still change them.
        self.step(
            true,
            !eos,
            |vm, id, d| vm.headers(id, false, n, eos, d),
            move |this, r| {
                if let Some(h) = this.data.resp.take() {
                    *head = h;
                }
                if let Some(i) = this.data.info.take() {
                    *info = i;
                }
                this.data.resp_seen.set_response(head);
                this.headers_action(r)
            },
        )
    }

    fn on_response_buffered<'a>(
        &'a mut self,
        head: &'a mut ResponseHead,
        body: &'a mut Bytes,
        trailers: &'a mut Option<http::HeaderMap>,
        info: &'a mut StreamInfo,
    ) -> Step<'a, HeadersAction> {
        self.response_buffered = true;
        if self.bypass {
            return Step::Done(HeadersAction::Continue);
        }
        // Rare, as for requests: one future for both callbacks, with the
        // headers still lent, so the body callback can change them.
        Step::wait(async move {
            let empty = ResponseHead {
                status: head.status,
                headers: http::HeaderMap::new(),
            };
            self.data.resp = Some(std::mem::replace(head, empty));
            let r = self.whole_body(false, body, trailers, info).await;
            if let Some(h) = self.data.resp.take() {
                *head = h;
            }
            self.data.resp_seen.set_response(head);
            self.headers_action(r)
        })
    }

    fn on_response_body<'a>(
        &'a mut self,
        chunk: &'a mut Bytes,
        eos: bool,
        info: &'a mut StreamInfo,
    ) -> Step<'a, DataAction> {
        if self.response_buffered {
            return Step::Done(DataAction::Continue);
        }
        self.body(false, chunk, eos, info)
    }

    fn on_response_trailers<'a>(
        &'a mut self,
        trailers: &'a mut http::HeaderMap,
        info: &'a mut StreamInfo,
    ) -> Step<'a, DataAction> {
        if self.response_buffered {
            return Step::Done(DataAction::Continue);
        }
        self.trailers(false, trailers, info)
    }

    fn wants_body(&self, _body: BodyShape) -> bool {
        true
    }

    fn on_stream_complete(&mut self, info: &StreamInfo) {
        self.data.info = Some(info.clone());
        self.finish();
    }
}

impl WasmHttpFilter {
    /// `on_log`, `on_done`, `on_delete`: once, when the stream ends or the filter
    /// is dropped (a reset stream, or the end of the response body).
    fn finish(&mut self) {
        if let Some(cx) = self.cx.take() {
            cx.vm.finish(cx.id, !self.bypass, &mut self.data);
        }
    }
}

impl Drop for WasmHttpFilter {
    fn drop(&mut self) {
        self.finish();
        self.slot.give_back(&mut self.data);
    }
}
