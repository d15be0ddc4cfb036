//! Network (L4) filters and their export as the `network-handler` interface.

use std::cell::RefCell;
use std::marker::PhantomData;

use crate::bindings::network::exports::legate::filter::network_handler as wit;
use crate::filter::{configure, root};
use crate::{Body, Unconfigured};

/// What a network hook decided.
///
/// ```
/// assert_ne!(legate_sdk::NetworkAction::Continue, legate_sdk::NetworkAction::Close);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetworkAction {
    /// Pass the (possibly rewritten) bytes on.
    Continue,
    /// Pass them on, then close the connection.
    Close,
}

/// A per-connection network filter. Hooks default to passing bytes through.
///
/// ```
/// use legate_sdk::{Body, NetworkAction, NetworkFilter};
///
/// #[derive(Default)]
/// struct Upper;
///
/// impl NetworkFilter for Upper {
///     fn on_downstream_data(&mut self, data: &mut Body, _eos: bool) -> NetworkAction {
///         let up = data.bytes().to_ascii_uppercase();
///         data.set(up);
///         NetworkAction::Continue
///     }
/// }
/// legate_sdk::export_network_filter!(Upper);
/// ```
pub trait NetworkFilter: 'static {
    /// The connection was accepted. [`NetworkAction::Close`] closes it at once.
    fn on_new_connection(&mut self) -> NetworkAction {
        NetworkAction::Continue
    }

    /// Bytes from the client, on their way to the upstream.
    fn on_downstream_data(&mut self, _data: &mut Body, _end_of_stream: bool) -> NetworkAction {
        NetworkAction::Continue
    }

    /// Bytes from the upstream, on their way to the client.
    fn on_upstream_data(&mut self, _data: &mut Body, _end_of_stream: bool) -> NetworkAction {
        NetworkAction::Continue
    }

    /// The connection closed.
    fn on_close(&mut self) {}
}

/// The per-plugin root of a network filter: gets the configuration once and
/// makes a filter per connection.
///
/// ```
/// use legate_sdk::{NetworkFilter, NetworkPlugin};
/// struct Root;
/// #[derive(Default)]
/// struct Conn;
/// impl NetworkFilter for Conn {}
/// impl NetworkPlugin for Root {
///     type Filter = Conn;
///     fn configure(_: &[u8]) -> Result<Self, String> { Ok(Root) }
///     fn new_filter(&self) -> Conn { Conn }
/// }
/// legate_sdk::export_network_filter!(plugin = Root);
/// ```
pub trait NetworkPlugin: Sized + 'static {
    /// The per-connection filter.
    type Filter: NetworkFilter;
    /// Builds the root from the plugin's `configuration`; an error refuses the
    /// proxy config.
    fn configure(configuration: &[u8]) -> Result<Self, String>;
    /// A filter for a new connection.
    fn new_filter(&self) -> Self::Filter;
}

impl<F: NetworkFilter + Default> NetworkPlugin for Unconfigured<F> {
    type Filter = F;
    fn configure(_: &[u8]) -> Result<Self, String> {
        Ok(Unconfigured(PhantomData))
    }
    fn new_filter(&self) -> F {
        F::default()
    }
}

/// Runs a data hook and says what goes back to the proxy.
pub(crate) fn data_hook(
    hook: impl FnOnce(&mut Body) -> NetworkAction,
    data: Vec<u8>,
) -> (Option<Vec<u8>>, bool) {
    let mut body = Body::new(data);
    let action = hook(&mut body);
    let changed = body.changed();
    (
        changed.then(|| body.into_bytes()),
        action == NetworkAction::Close,
    )
}

/// The `network-handler` export of plugin `P`; made by
/// [`crate::export_network_filter`].
#[doc(hidden)]
pub struct __NetworkExport<P>(PhantomData<P>);

/// The exported `connection` resource.
#[doc(hidden)]
pub struct ConnectionExport<P: NetworkPlugin>(RefCell<P::Filter>);

impl<P: NetworkPlugin> wit::Guest for __NetworkExport<P> {
    type Connection = ConnectionExport<P>;

    fn configure(configuration: Vec<u8>) -> Result<(), String> {
        configure(|| P::configure(&configuration))
    }
}

impl<P: NetworkPlugin> wit::GuestConnection for ConnectionExport<P> {
    fn new() -> Self {
        ConnectionExport(RefCell::new(root(|| P::configure(b"")).new_filter()))
    }

    fn on_new_connection(&self) -> bool {
        self.0.borrow_mut().on_new_connection() == NetworkAction::Continue
    }

    fn on_downstream_data(&self, data: Vec<u8>, end_of_stream: bool) -> wit::DataOutcome {
        let (data, close) = data_hook(
            |b| self.0.borrow_mut().on_downstream_data(b, end_of_stream),
            data,
        );
        wit::DataOutcome { data, close }
    }

    fn on_upstream_data(&self, data: Vec<u8>, end_of_stream: bool) -> wit::DataOutcome {
        let (data, close) = data_hook(
            |b| self.0.borrow_mut().on_upstream_data(b, end_of_stream),
            data,
        );
        wit::DataOutcome { data, close }
    }

    fn on_close(&self) {
        self.0.borrow_mut().on_close();
    }
}
