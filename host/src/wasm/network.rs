//! `envoy.filters.network.wasm`: a proxy-wasm connection context behind the native
//! [`NetworkFilter`] trait. Downstream data is buffer type 2, upstream data type 3.

use std::rc::Rc;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::BytesMut;
use legate_filter_api::network::{
    ConnectionInfo, NetworkAction, NetworkFilter, NetworkFilterFactory,
};

use super::Plugin;
use super::slot::{Slot, slot};
use super::vm::{ConnFacts, Data, Failed, Outcome, Vm};

pub struct WasmNetworkFactory {
    plugin: Arc<Plugin>,
}

impl WasmNetworkFactory {
    pub fn new(plugin: Arc<Plugin>) -> WasmNetworkFactory {
        WasmNetworkFactory { plugin }
    }
}

impl NetworkFilterFactory for WasmNetworkFactory {
    fn create(&self) -> Box<dyn NetworkFilter> {
        Box::new(WasmNetworkFilter {
            slot: slot(&self.plugin),
            plugin: self.plugin.clone(),
            cx: None,
            bypass: false,
            data: Data::default(),
            down_buf: BytesMut::new(),
            up_buf: BytesMut::new(),
        })
    }
}

pub struct WasmNetworkFilter {
    slot: Rc<Slot<Vm>>,
    plugin: Arc<Plugin>,
    cx: Option<(Rc<Vm>, u32)>,
    bypass: bool,
    data: Data,
    /// Data held while the filter pauses.
    down_buf: BytesMut,
    up_buf: BytesMut,
}

impl WasmNetworkFilter {
    fn context(&mut self, info: &ConnectionInfo) -> Result<(Rc<Vm>, u32), Failed> {
        if let Some((vm, id)) = &self.cx {
            return Ok((vm.clone(), *id));
        }
        self.data.conn = Some(ConnFacts {
            remote: info.remote_address,
            local: info.local_address,
            id: info.connection_id,
        });
        let vm = self.slot.vm().map_err(Failed)?;
        let id = vm.new_context()?;
        self.cx = Some((vm.clone(), id));
        Ok((vm, id))
    }

    /// FAIL_OPEN steps aside; the other policies close the connection.
    fn failure(&mut self, Failed(why): Failed) -> NetworkAction {
        if self.plugin.fails_open(&why) {
            self.bypass = true;
            NetworkAction::Continue
        } else {
            NetworkAction::Close
        }
    }

    fn outcome(out: &Outcome) -> Option<NetworkAction> {
        if out.close || out.reply.is_some() {
            return Some(NetworkAction::Close);
        }
        None
    }

    fn data(
        &mut self,
        downstream: bool,
        data: &mut BytesMut,
        eos: bool,
        info: &mut ConnectionInfo,
    ) -> NetworkAction {
        if self.bypass {
            return NetworkAction::Continue;
        }
        let (vm, id) = match self.context(info) {
            Ok(c) => c,
            Err(e) => return self.failure(e),
        };
        // Call responses that arrived since the last callback.
        let mut early = Outcome::default();
        if let Err(e) = vm.drain(id, &mut self.data, &mut early) {
            return self.failure(e);
        }
        if let Some(a) = Self::outcome(&early) {
            return a;
        }
        let buf = if downstream {
            &mut self.down_buf
        } else {
            &mut self.up_buf
        };
        buf.extend_from_slice(data);
        let size = buf.len();
        let lent = std::mem::take(buf).freeze();
        self.data.body = Some((if downstream { 2 } else { 3 }, lent));
        let r = vm.data(id, downstream, size, eos, &mut self.data);
        let held = self.data.body.take().map(|(_, b)| b).unwrap_or_default();
        let buf = if downstream {
            &mut self.down_buf
        } else {
            &mut self.up_buf
        };
        // Back to a buffer without copying, unless the guest's edit is shared.
        *buf = held
            .try_into_mut()
            .unwrap_or_else(|b| BytesMut::from(&b[..]));
        match r {
            Ok(out) => {
                if let Some(a) = Self::outcome(&out) {
                    return a;
                }
                // A pause holds the bytes until a later callback continues.
                if out.action == 0 || out.resume || eos {
                    *data = buf.split();
                } else {
                    data.clear();
                }
                NetworkAction::Continue
            }
            Err(e) => {
                *data = buf.split();
                self.failure(e)
            }
        }
    }
}

#[async_trait(?Send)]
impl NetworkFilter for WasmNetworkFilter {
    async fn on_new_connection(&mut self, info: &mut ConnectionInfo) -> NetworkAction {
        let (vm, id) = match self.context(info) {
            Ok(c) => c,
            Err(e) => return self.failure(e),
        };
        match vm.new_connection(id, &mut self.data) {
            Ok(out) => Self::outcome(&out).unwrap_or(NetworkAction::Continue),
            Err(e) => self.failure(e),
        }
    }

    async fn on_read(
        &mut self,
        data: &mut BytesMut,
        end_stream: bool,
        info: &mut ConnectionInfo,
    ) -> NetworkAction {
        self.data(true, data, end_stream, info)
    }

    async fn on_write(
        &mut self,
        data: &mut BytesMut,
        end_stream: bool,
        info: &mut ConnectionInfo,
    ) -> NetworkAction {
        self.data(false, data, end_stream, info)
    }

    fn on_close(&mut self, _info: &ConnectionInfo) {
        if let Some((vm, id)) = self.cx.take() {
            if !self.bypass {
                vm.connection_closed(id, &mut self.data);
            }
            vm.finish(id, !self.bypass, &mut self.data);
        }
    }
}

impl Drop for WasmNetworkFilter {
    /// A connection dropped without `on_close` still ends its context.
    fn drop(&mut self) {
        if let Some((vm, id)) = self.cx.take() {
            vm.finish(id, !self.bypass, &mut self.data);
        }
    }
}
