//! `envoy.filters.http.wasm`: a proxy-wasm stream context behind the native
//! [`HttpFilter`] trait. A paused callback is an awaiting hook: the filter waits
//! for its context's events (call responses, `proxy_continue_stream`, a local
//! reply) and runs the callbacks they trigger with the stream's data lent to
//! the VM.

use std::rc::Rc;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use legate_filter_api::{
    DataAction, HeadersAction, HttpFilter, HttpFilterFactory, LocalReply, RequestHead,
    ResponseHead, StreamInfo,
};

use super::Plugin;
use super::vm::{Data, Failed, Outcome, Slot, Vm, slot};
use crate::config::FailurePolicy;

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
        })
    }
}

/// The stream's context in its VM.
struct Cx {
    vm: Rc<Vm>,
    id: u32,
}

pub struct WasmHttpFilter {
    slot: Rc<Slot>,
    plugin: Arc<Plugin>,
    cx: Option<Cx>,
    /// FAIL_OPEN after a failure: the filter steps aside for the rest of the stream.
    bypass: bool,
    data: Data,
    req_buf: BytesMut,
    resp_buf: BytesMut,
    /// The request body went through `on_request_buffered`: the body hooks pass.
    request_buffered: bool,
}

/// How a callback (and whatever it waited for) ended.
enum Done {
    Continue,
    /// Paused on a body chunk: keep buffering.
    Buffer,
    /// Paused on request headers with nothing pending: wait for the body, as
    /// Envoy's StopIteration does.
    WaitForBody,
    Reply(LocalReply),
}

fn placeholder_request() -> RequestHead {
    RequestHead {
        method: http::Method::GET,
        uri: http::Uri::default(),
        version: http::Version::HTTP_11,
        headers: http::HeaderMap::new(),
    }
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
    fn failure(&mut self, Failed(why): Failed) -> Option<LocalReply> {
        let stats = &self.plugin.stats;
        tracing::debug!(plugin = %self.plugin.config.name, "Wasm filter failed: {why}");
        match self.plugin.config.failure_policy {
            FailurePolicy::FailOpen => {
                stats.fail_open.inc();
                self.bypass = true;
                None
            }
            FailurePolicy::FailClosed | FailurePolicy::FailReload => {
                stats.fail_closed.inc();
                let mut r = LocalReply::new(http::StatusCode::SERVICE_UNAVAILABLE, Bytes::new());
                r.details = "wasm_fail_stream";
                Some(r)
            }
        }
    }

    /// Runs a callback and, if it paused on something the host will deliver,
    /// waits for it.
    async fn run(
        &mut self,
        wait: bool,
        body_follows: bool,
        f: impl FnOnce(&Vm, u32, &mut Data) -> Result<Outcome, Failed>,
    ) -> Result<Done, Failed> {
        let (vm, id) = self.context()?;
        let mut out = f(&vm, id, &mut self.data)?;
        loop {
            if let Some(r) = out.reply.take() {
                return Ok(Done::Reply(r));
            }
            if out.close {
                let mut r = LocalReply::new(http::StatusCode::SERVICE_UNAVAILABLE, Bytes::new());
                r.details = "wasm_close_stream";
                return Ok(Done::Reply(r));
            }
            if out.action == 0 || out.resume {
                return Ok(Done::Continue);
            }
            if !wait {
                return Ok(Done::Buffer);
            }
            // Paused: deliver this context's events until it resumes.
            if vm.drain(id, &mut self.data, &mut out)? {
                continue;
            }
            if !vm.has_pending(id) {
                // Nothing the host holds can resume it: wait for the request body
                // if one follows, else go on (Envoy would hang the stream).
                return Ok(if body_follows {
                    Done::WaitForBody
                } else {
                    Done::Continue
                });
            }
            let Some(inbox) = vm.inbox(id) else {
                return Ok(Done::Continue);
            };
            inbox.notify.notified().await;
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
    fn drain_events(&mut self) -> Result<Option<LocalReply>, Failed> {
        let Some(cx) = &self.cx else { return Ok(None) };
        let (vm, id) = (cx.vm.clone(), cx.id);
        let mut out = Outcome::default();
        vm.drain(id, &mut self.data, &mut out)?;
        Ok(out.reply)
    }

    async fn body(
        &mut self,
        request: bool,
        chunk: &mut Bytes,
        eos: bool,
        info: &mut StreamInfo,
    ) -> DataAction {
        if self.bypass {
            return DataAction::Continue;
        }
        let limit = self.plugin.config.limits.max_buffered_body_bytes;
        let buf = if request {
            &mut self.req_buf
        } else {
            &mut self.resp_buf
        };
        if buf.is_empty() {
            // Nothing held back: take the chunk itself, copying only if shared.
            *buf = std::mem::take(chunk)
                .try_into_mut()
                .unwrap_or_else(|b| BytesMut::from(&b[..]));
        } else {
            buf.extend_from_slice(chunk);
        }
        if buf.len() > limit {
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
            return DataAction::Respond(r);
        }
        let size = buf.len();
        self.data.body = Some((if request { 0 } else { 1 }, std::mem::take(buf)));
        self.data.info = Some(info.take());
        let r = self
            .run(eos, false, |vm, id, d| vm.body(id, request, size, eos, d))
            .await;
        if let Some(i) = self.data.info.take() {
            *info = i;
        }
        let buffered = self.data.body.take().map(|(_, b)| b).unwrap_or_default();
        let buf = if request {
            &mut self.req_buf
        } else {
            &mut self.resp_buf
        };
        *buf = buffered;
        match r {
            Ok(Done::Continue | Done::WaitForBody) => {
                *chunk = buf.split().freeze();
                DataAction::Continue
            }
            Ok(Done::Buffer) => {
                *chunk = Bytes::new();
                DataAction::Continue
            }
            Ok(Done::Reply(r)) => DataAction::Respond(r),
            Err(e) => {
                *chunk = buf.split().freeze();
                match self.failure(e) {
                    Some(r) => DataAction::Respond(r),
                    None => DataAction::Continue,
                }
            }
        }
    }

    async fn trailers(
        &mut self,
        request: bool,
        trailers: &mut http::HeaderMap,
        info: &mut StreamInfo,
    ) -> DataAction {
        if self.bypass {
            return DataAction::Continue;
        }
        let n = trailers.len();
        let slot = if request {
            &mut self.data.req_trailers
        } else {
            &mut self.data.resp_trailers
        };
        *slot = Some(std::mem::take(trailers));
        self.data.info = Some(info.take());
        let r = self
            .run(true, false, |vm, id, d| vm.trailers(id, request, n, d))
            .await;
        if let Some(i) = self.data.info.take() {
            *info = i;
        }
        let slot = if request {
            &mut self.data.req_trailers
        } else {
            &mut self.data.resp_trailers
        };
        *trailers = slot.take().unwrap_or_default();
        match self.headers_action(r) {
            HeadersAction::Respond(r) => DataAction::Respond(r),
            _ => DataAction::Continue,
        }
    }
}

#[async_trait(?Send)]
impl HttpFilter for WasmHttpFilter {
    async fn on_request_headers(
        &mut self,
        head: &mut RequestHead,
        eos: bool,
        info: &mut StreamInfo,
    ) -> HeadersAction {
        if self.bypass {
            return HeadersAction::Continue;
        }
        // Pseudo-headers count too, as in Envoy.
        let n = head.headers.len() + 4;
        self.data.req = Some(std::mem::replace(head, placeholder_request()));
        self.data.info = Some(info.take());
        let r = self
            .run(true, !eos, |vm, id, d| vm.headers(id, true, n, eos, d))
            .await;
        if let Some(h) = self.data.req.take() {
            *head = h;
        }
        if let Some(i) = self.data.info.take() {
            *info = i;
        }
        self.data.req_seen.set_request(head);
        self.headers_action(r)
    }

    async fn on_request_buffered(
        &mut self,
        head: &mut RequestHead,
        body: &mut Bytes,
        trailers: &mut Option<http::HeaderMap>,
        info: &mut StreamInfo,
    ) -> HeadersAction {
        self.request_buffered = true;
        if self.bypass {
            return HeadersAction::Continue;
        }
        let eos = trailers.is_none();
        let size = body.len();
        self.data.req = Some(std::mem::replace(head, placeholder_request()));
        self.data.info = Some(info.take());
        self.data.body = Some((0, BytesMut::from(&body[..])));
        self.data.req_trailers = trailers.take();
        let mut r = self
            .run(true, false, |vm, id, d| vm.body(id, true, size, eos, d))
            .await;
        if let (Ok(Done::Continue), Some(t)) = (&r, &self.data.req_trailers) {
            let n = t.len();
            r = self
                .run(true, false, |vm, id, d| vm.trailers(id, true, n, d))
                .await;
        }
        if let Some(h) = self.data.req.take() {
            *head = h;
        }
        if let Some(i) = self.data.info.take() {
            *info = i;
        }
        if let Some((_, b)) = self.data.body.take() {
            *body = b.freeze();
        }
        *trailers = self.data.req_trailers.take();
        self.data.req_seen.set_request(head);
        self.headers_action(r)
    }

    async fn on_request_body(
        &mut self,
        chunk: &mut Bytes,
        eos: bool,
        info: &mut StreamInfo,
    ) -> DataAction {
        if self.request_buffered {
            return DataAction::Continue;
        }
        self.body(true, chunk, eos, info).await
    }

    async fn on_request_trailers(
        &mut self,
        trailers: &mut http::HeaderMap,
        info: &mut StreamInfo,
    ) -> DataAction {
        if self.request_buffered {
            return DataAction::Continue;
        }
        self.trailers(true, trailers, info).await
    }

    async fn on_response_headers(
        &mut self,
        head: &mut ResponseHead,
        eos: bool,
        info: &mut StreamInfo,
    ) -> HeadersAction {
        if self.bypass {
            return HeadersAction::Continue;
        }
        match self.drain_events() {
            Ok(Some(r)) => return HeadersAction::Respond(r),
            Ok(None) => {}
            Err(e) => {
                if let Some(r) = self.failure(e) {
                    return HeadersAction::Respond(r);
                }
                return HeadersAction::Continue;
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
        let r = self
            .run(true, false, |vm, id, d| vm.headers(id, false, n, eos, d))
            .await;
        if let Some(h) = self.data.resp.take() {
            *head = h;
        }
        if let Some(i) = self.data.info.take() {
            *info = i;
        }
        self.data.resp_seen.set_response(head);
        self.headers_action(r)
    }

    async fn on_response_body(
        &mut self,
        chunk: &mut Bytes,
        eos: bool,
        info: &mut StreamInfo,
    ) -> DataAction {
        self.body(false, chunk, eos, info).await
    }

    async fn on_response_trailers(
        &mut self,
        trailers: &mut http::HeaderMap,
        info: &mut StreamInfo,
    ) -> DataAction {
        self.trailers(false, trailers, info).await
    }

    fn wants_body(&self) -> bool {
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
        self.slot.give_back(std::mem::take(&mut self.data));
    }
}
