//! `envoy.filters.http.wasm` running an `http-handler` component. The stream's
//! head, trailers or body chunk is lent to the store while a hook runs, so the
//! guest reads and edits the proxy's own copy through the `message` interface.

use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use legate_filter_api::{
    BodyShape, DataAction, HeadersAction, HttpFilter, HttpFilterFactory, LocalReply, RequestHead,
    ResponseHead, Step, StreamInfo,
};

use super::super::Plugin;
use super::super::abi::{HeaderScratch, Op, edit};
use super::super::calls::OutCall;
use super::super::slot::{Lent, Slot, slot};
use super::super::vm::{Loans, lend};
use super::{CVm, Failed, Inbox, WAction, WLocalReply, WPoll, call_result, start_calls};

/// Builds the per-stream filters of a component plugin.
pub struct ComponentHttpFactory {
    plugin: Arc<Plugin>,
}

impl ComponentHttpFactory {
    pub fn new(plugin: Arc<Plugin>) -> ComponentHttpFactory {
        ComponentHttpFactory { plugin }
    }
}

impl HttpFilterFactory for ComponentHttpFactory {
    fn create(&self) -> Box<dyn HttpFilter> {
        let slot = slot::<CVm>(&self.plugin);
        Box::new(ComponentHttpFilter {
            data: slot.take_data(),
            slot,
            plugin: self.plugin.clone(),
            cx: None,
            inbox: None,
            bypass: false,
            request_buffered: false,
        })
    }
}

pub struct ComponentHttpFilter {
    slot: Rc<Slot<CVm>>,
    plugin: Arc<Plugin>,
    /// The instance and the number it gave the stream.
    cx: Option<(Rc<CVm>, u32)>,
    /// Made when the stream first calls out.
    inbox: Option<Rc<Inbox>>,
    /// FAIL_OPEN after a failure: the filter steps aside for the rest of the stream.
    bypass: bool,
    /// What the running hook may read and change, lent to the store.
    data: Lent,
    /// The request body went through `on_request_buffered`: the body hooks pass.
    request_buffered: bool,
}

/// Where a hook stands.
enum Progress {
    Ended(WAction),
    /// Awaiting calls, in this instance, on the stream with this number.
    Pending(Rc<CVm>, u32),
}

/// Which hook runs.
#[derive(Clone, Copy)]
enum Hook {
    RequestHeaders(bool),
    RequestBody(u64, bool),
    RequestTrailers,
    ResponseHeaders(bool),
    ResponseBody(u64, bool),
    ResponseTrailers,
}

impl Hook {
    fn bit(self) -> u8 {
        1 << match self {
            Hook::RequestHeaders(_) => 0,
            Hook::RequestBody(..) => 1,
            Hook::RequestTrailers => 2,
            Hook::ResponseHeaders(_) => 3,
            Hook::ResponseBody(..) => 4,
            Hook::ResponseTrailers => 5,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Hook::RequestHeaders(_) => "on-request-headers",
            Hook::RequestBody(..) => "on-request-body",
            Hook::RequestTrailers => "on-request-trailers",
            Hook::ResponseHeaders(_) => "on-response-headers",
            Hook::ResponseBody(..) => "on-response-body",
            Hook::ResponseTrailers => "on-response-trailers",
        }
    }
}

impl ComponentHttpFilter {
    fn context(&mut self) -> Result<(Rc<CVm>, u32), Failed> {
        if let Some((vm, id)) = &self.cx {
            return Ok((vm.clone(), *id));
        }
        let vm = self.slot.vm().map_err(Failed)?;
        let ((id,), _) = vm.call("new-stream", &mut self.data, false, |vm, s| {
            vm.http()?.new.call(s, ())
        })?;
        self.cx = Some((vm.clone(), id));
        Ok((vm, id))
    }

    /// Calls a hook with `loans` lent. It ends now, or is pending on the
    /// calls it made (they have been started).
    fn call(&mut self, hook: Hook, loans: Loans<'_>) -> Result<Progress, Failed> {
        let (vm, id, poll, calls) = match (&self.cx, hook) {
            // The usual start: make the stream and run its first hook in one call.
            (None, Hook::RequestHeaders(eos))
                if self
                    .slot
                    .current()
                    .is_none_or(|vm| vm.unimplemented.get() & hook.bit() == 0) =>
            {
                let vm = self.slot.vm().map_err(Failed)?;
                let (((id, poll),), calls) = lend(&mut self.data, loans, |d| {
                    vm.call(hook.name(), d, true, |vm, s| {
                        vm.http()?.start.call(s, (eos,))
                    })
                })?;
                self.cx = Some((vm.clone(), id));
                (vm, id, poll, calls)
            }
            _ => {
                let (vm, id) = self.context()?;
                if vm.unimplemented.get() & hook.bit() != 0 {
                    return Ok(Progress::Ended(WAction::Continue));
                }
                let ((poll,), calls) = lend(&mut self.data, loans, |d| {
                    vm.call(hook.name(), d, true, |vm, s| {
                        let f = vm.http()?;
                        match hook {
                            Hook::RequestHeaders(eos) => f.request_headers.call(s, (id, eos)),
                            Hook::RequestBody(n, eos) => f.request_body.call(s, (id, n, eos)),
                            Hook::RequestTrailers => f.request_trailers.call(s, (id,)),
                            Hook::ResponseHeaders(eos) => f.response_headers.call(s, (id, eos)),
                            Hook::ResponseBody(n, eos) => f.response_body.call(s, (id, n, eos)),
                            Hook::ResponseTrailers => f.response_trailers.call(s, (id,)),
                        }
                    })
                })?;
                (vm, id, poll, calls)
            }
        };
        self.progress(hook, vm, id, poll, calls)
    }

    /// Where a hook stands after a guest call.
    fn progress(
        &mut self,
        hook: Hook,
        vm: Rc<CVm>,
        id: u32,
        poll: WPoll,
        calls: Vec<OutCall>,
    ) -> Result<Progress, Failed> {
        if !calls.is_empty() {
            let inbox = self.inbox.get_or_insert_with(Default::default);
            start_calls(&vm, inbox, calls);
        }
        match poll {
            WPoll::Ready(kind) => Ok(Progress::Ended(vm.decide(kind))),
            WPoll::Unimplemented => {
                vm.unimplemented.set(vm.unimplemented.get() | hook.bit());
                Ok(Progress::Ended(WAction::Continue))
            }
            WPoll::Pending => Ok(Progress::Pending(vm, id)),
        }
    }

    /// Feeds a pending hook the results of the calls it awaits until it ends,
    /// with `loans` lent.
    async fn wait(
        &mut self,
        hook: Hook,
        mut loans: Loans<'_>,
        mut vm: Rc<CVm>,
        mut id: u32,
    ) -> Result<WAction, Failed> {
        loop {
            let next = match self.inbox.clone() {
                Some(inbox) => inbox.next().await,
                None => None,
            };
            let Some((token, resp)) = next else {
                // A filter bug (it awaits something only it could wake): the
                // stream fails, the instance stays.
                let why = format!(
                    "{}: the hook is pending but awaits no outbound call",
                    hook.name()
                );
                tracing::warn!(plugin = %self.plugin.config.name, "Wasm filter failed: {why}");
                return Err(Failed(why));
            };
            let ((poll,), calls) = lend(&mut self.data, loans.reborrow(), |d| {
                vm.call("resume", d, true, |vm, s| {
                    vm.http()?.resume.call(s, (id, token, call_result(&resp)))
                })
            })?;
            match self.progress(hook, vm, id, poll, calls)? {
                Progress::Ended(action) => return Ok(action),
                Progress::Pending(v, i) => (vm, id) = (v, i),
            }
        }
    }

    /// Runs a hook with `loans` lent, and gives its filter hook the step:
    /// `finish` makes the action, at once or after the wait.
    fn step<'a, A: 'a>(
        &'a mut self,
        hook: Hook,
        mut loans: Loans<'a>,
        finish: impl FnOnce(&mut Self, Result<WAction, Failed>) -> A + 'a,
    ) -> Step<'a, A> {
        match self.call(hook, loans.reborrow()) {
            Ok(Progress::Ended(a)) => Step::Done(finish(self, Ok(a))),
            Err(e) => Step::Done(finish(self, Err(e))),
            Ok(Progress::Pending(vm, id)) => Step::wait(async move {
                let r = self.wait(hook, loans, vm, id).await;
                finish(self, r)
            }),
        }
    }

    /// What the failure policy gives the stream.
    fn failure(&mut self, Failed(why): Failed) -> Option<Box<LocalReply>> {
        if self.plugin.fails_open(&why) {
            self.bypass = true;
            None
        } else {
            Some(super::super::fail_reply())
        }
    }

    fn headers_action(&mut self, r: Result<WAction, Failed>, request: bool) -> HeadersAction {
        match r {
            Ok(WAction::Continue) => HeadersAction::Continue,
            Ok(WAction::WaitForBody) if request => HeadersAction::WaitForBody {
                limit: self.plugin.config.limits.max_buffered_body_bytes,
            },
            Ok(WAction::WaitForBody) => HeadersAction::Continue,
            Ok(WAction::Respond(reply)) => HeadersAction::Respond(Box::new(local_reply(reply))),
            Err(e) => match self.failure(e) {
                Some(r) => HeadersAction::Respond(r),
                None => HeadersAction::Continue,
            },
        }
    }

    fn data_action(&mut self, r: Result<WAction, Failed>) -> DataAction {
        match self.headers_action(r, false) {
            HeadersAction::Respond(r) => DataAction::Respond(r),
            _ => DataAction::Continue,
        }
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
        let n = chunk.len() as u64;
        // The chunk itself, uncopied.
        self.data.body = Some((u32::from(!request), std::mem::take(chunk)));
        let hook = if request {
            Hook::RequestBody(n, eos)
        } else {
            Hook::ResponseBody(n, eos)
        };
        let loans = Loans {
            info: Some(info),
            ..Loans::default()
        };
        self.step(hook, loans, move |this, r| {
            if let Some((_, b)) = this.data.body.take() {
                *chunk = b;
            }
            this.data_action(r)
        })
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
        let mut loans = Loans {
            info: Some(info),
            ..Loans::default()
        };
        let hook = if request {
            loans.req_trailers = Some(trailers);
            Hook::RequestTrailers
        } else {
            loans.resp_trailers = Some(trailers);
            Hook::ResponseTrailers
        };
        self.step(hook, loans, |this, r| this.data_action(r))
    }

    /// Ends the stream in the guest, which runs `on_done` and drops it.
    fn finish(&mut self) {
        if let Some((vm, n)) = self.cx.take() {
            vm.drop_item(n, &mut self.data);
        }
    }
}

fn local_reply(r: WLocalReply) -> LocalReply {
    let status =
        http::StatusCode::from_u16(r.status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    let mut reply = LocalReply::new(status, Bytes::from(r.body));
    let scratch = &mut HeaderScratch::default();
    for h in &r.headers {
        edit(
            &mut reply.headers,
            scratch,
            h.name.as_bytes(),
            &h.value,
            Op::Add,
        );
    }
    reply.grpc_status = r.grpc_status;
    reply.details = "wasm_local_reply";
    reply
}

impl HttpFilter for ComponentHttpFilter {
    fn on_request_headers<'a>(
        &'a mut self,
        head: &'a mut RequestHead,
        eos: bool,
        info: &'a mut StreamInfo,
    ) -> Step<'a, HeadersAction> {
        if self.bypass {
            return Step::Done(HeadersAction::Continue);
        }
        let loans = Loans {
            req: Some(head),
            info: Some(info),
            ..Loans::default()
        };
        self.step(Hook::RequestHeaders(eos), loans, |this, r| {
            this.headers_action(r, true)
        })
    }

    fn on_request_buffered<'a>(
        &'a mut self,
        _head: &'a mut RequestHead,
        body: &'a mut Bytes,
        trailers: &'a mut Option<http::HeaderMap>,
        info: &'a mut StreamInfo,
    ) -> Step<'a, HeadersAction> {
        self.request_buffered = true;
        if self.bypass {
            return Step::Done(HeadersAction::Continue);
        }
        Step::wait(async move {
            let eos = trailers.is_none();
            if let DataAction::Respond(r) = self.body(true, body, eos, info).action().await {
                return HeadersAction::Respond(r);
            }
            if let Some(t) = trailers.as_mut()
                && let DataAction::Respond(r) = self.trailers(true, t, info).action().await
            {
                return HeadersAction::Respond(r);
            }
            HeadersAction::Continue
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
        let loans = Loans {
            resp: Some(head),
            info: Some(info),
            ..Loans::default()
        };
        self.step(Hook::ResponseHeaders(eos), loans, |this, r| {
            this.headers_action(r, false)
        })
    }

    fn on_response_body<'a>(
        &'a mut self,
        chunk: &'a mut Bytes,
        eos: bool,
        info: &'a mut StreamInfo,
    ) -> Step<'a, DataAction> {
        self.body(false, chunk, eos, info)
    }

    fn on_response_trailers<'a>(
        &'a mut self,
        trailers: &'a mut http::HeaderMap,
        info: &'a mut StreamInfo,
    ) -> Step<'a, DataAction> {
        self.trailers(false, trailers, info)
    }

    /// A body passes by untouched once the filter said it implements neither
    /// its body hook nor, when it may end in trailers, its trailers hook.
    fn wants_body(&self, body: BodyShape) -> bool {
        let (data, trailers) = if body.request {
            (Hook::RequestBody(0, false), Hook::RequestTrailers)
        } else {
            (Hook::ResponseBody(0, false), Hook::ResponseTrailers)
        };
        let hooks = data.bit() | if body.trailers { trailers.bit() } else { 0 };
        let vm = match &self.cx {
            Some((vm, _)) => Some(vm.clone()),
            None => self.slot.current(),
        };
        vm.is_none_or(|vm| vm.unimplemented.get() & hooks != hooks)
    }

    fn on_stream_complete(&mut self, _info: &StreamInfo) {
        self.finish();
    }
}

impl Drop for ComponentHttpFilter {
    fn drop(&mut self) {
        self.finish();
        self.slot.give_back(&mut self.data);
    }
}
