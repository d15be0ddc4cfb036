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
use super::vm::{Data, Failed, Inbox, Loans, Outcome, Vm, lend};

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

    /// Runs a callback with `loans` lent, and the events it has waiting.
    fn call(
        &mut self,
        mut loans: Loans<'_>,
        wait: bool,
        body_follows: bool,
        f: impl FnOnce(&Vm, u32, &mut Data) -> Result<Outcome, Failed>,
    ) -> Progress {
        let r = self
            .context()
            .and_then(|(vm, id)| lend(&mut self.data, loans.reborrow(), |d| f(&vm, id, d)));
        match r {
            Ok(out) => self.settle(loans, out, wait, body_follows),
            Err(e) => Progress::Ended(Err(e)),
        }
    }

    /// How a callback (and the events delivered since) left the context:
    /// delivers its pending events, with `loans` lent, until it resumes or
    /// has to wait.
    fn settle(
        &mut self,
        mut loans: Loans<'_>,
        mut out: Outcome,
        wait: bool,
        body_follows: bool,
    ) -> Progress {
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
            match lend(&mut self.data, loans.reborrow(), |d| {
                vm.drain(id, d, &mut out)
            }) {
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

    /// Waits out a paused callback, lending `loans` to what it runs.
    async fn wait(
        &mut self,
        mut loans: Loans<'_>,
        mut progress: Progress,
        body_follows: bool,
    ) -> Result<Done, Failed> {
        loop {
            match progress {
                Progress::Ended(r) => return r,
                Progress::Paused(inbox, out) => {
                    inbox.notify.notified().await;
                    progress = self.settle(loans.reborrow(), out, true, body_follows);
                }
            }
        }
    }

    /// Runs a callback with `loans` lent and gives its hook the step:
    /// `finish` makes the hook's action, at once or after the wait.
    fn step<'a, A: 'a>(
        &'a mut self,
        mut loans: Loans<'a>,
        wait: bool,
        body_follows: bool,
        f: impl FnOnce(&Vm, u32, &mut Data) -> Result<Outcome, Failed>,
        finish: impl FnOnce(&mut Self, Loans<'a>, Result<Done, Failed>) -> A + 'a,
    ) -> Step<'a, A> {
        match self.call(loans.reborrow(), wait, body_follows, f) {
            Progress::Ended(r) => Step::Done(finish(self, loans, r)),
            paused => Step::wait(async move {
                let r = self.wait(loans.reborrow(), paused, body_follows).await;
                finish(self, loans, r)
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
        let loans = Loans {
            info: Some(info),
            ..Loans::default()
        };
        self.step(
            loans,
            eos,
            false,
            |vm, id, d| vm.body(id, request, size, eos, d),
            move |this, _, r| {
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

    /// For a filter that waited for a whole message (its head and info in
    /// `loans`): the body callback with all of the body, then the trailers
    /// callback.
    async fn whole_body(
        &mut self,
        mut loans: Loans<'_>,
        request: bool,
        body: &mut Bytes,
        trailers: &mut Option<http::HeaderMap>,
    ) -> Result<Done, Failed> {
        let eos = trailers.is_none();
        let size = body.len();
        let n = trailers.as_ref().map(http::HeaderMap::len);
        if request {
            loans.req_trailers = trailers.as_mut();
        } else {
            loans.resp_trailers = trailers.as_mut();
        }
        self.data.body = Some((u32::from(!request), body.clone()));
        let p = self.call(loans.reborrow(), true, false, |vm, id, d| {
            vm.body(id, request, size, eos, d)
        });
        let mut r = self.wait(loans.reborrow(), p, false).await;
        if let (Ok(Done::Continue), Some(n)) = (&r, n) {
            let p = self.call(loans.reborrow(), true, false, |vm, id, d| {
                vm.trailers(id, request, n, d)
            });
            r = self.wait(loans, p, false).await;
        }
        if let Some((_, b)) = self.data.body.take() {
            *body = b;
        }
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
        let mut loans = Loans {
            info: Some(info),
            ..Loans::default()
        };
        if request {
            loans.req_trailers = Some(trailers);
        } else {
            loans.resp_trailers = Some(trailers);
        }
        self.step(
            loans,
            true,
            false,
            |vm, id, d| vm.trailers(id, request, n, d),
            move |this, _, r| match this.headers_action(r) {
                HeadersAction::Respond(r) => DataAction::Respond(r),
                _ => DataAction::Continue,
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
        let loans = Loans {
            req: Some(head),
            info: Some(info),
            ..Loans::default()
        };
        self.step(
            loans,
            true,
            !eos,
            |vm, id, d| vm.headers(id, true, n, eos, d),
            move |this, loans, r| {
                if let Some(head) = loans.req {
                    this.data.req_seen.set_request(head);
                }
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
            let loans = Loans {
                req: Some(&mut *head),
                info: Some(info),
                ..Loans::default()
            };
            let r = self.whole_body(loans, true, body, trailers).await;
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
        let loans = Loans {
            resp: Some(head),
            info: Some(info),
            ..Loans::default()
        };
        // A pause with nothing pending waits for the body, as Envoy's
        // StopIteration holds the headers; the body callback may still change them.
        self.step(
            loans,
            true,
            !eos,
            |vm, id, d| vm.headers(id, false, n, eos, d),
            move |this, loans, r| {
                if let Some(head) = loans.resp {
                    this.data.resp_seen.set_response(head);
                }
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
            let loans = Loans {
                resp: Some(&mut *head),
                info: Some(info),
                ..Loans::default()
            };
            let r = self.whole_body(loans, false, body, trailers).await;
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
        self.finish(Some(info));
    }
}

impl WasmHttpFilter {
    /// `on_log`, `on_done`, `on_delete`: once, when the stream ends or the filter
    /// is dropped (a reset stream, or the end of the response body).
    fn finish(&mut self, info: Option<&StreamInfo>) {
        if let Some(cx) = self.cx.take() {
            let log = !self.bypass;
            let loans = Loans {
                info_seen: info,
                ..Loans::default()
            };
            lend(&mut self.data, loans, |d| cx.vm.finish(cx.id, log, d));
        }
    }
}

impl Drop for WasmHttpFilter {
    fn drop(&mut self) {
        self.finish(None);
        self.slot.give_back(&mut self.data);
    }
}
