//! Network (L4) filters and their export as the `network-handler` interface.

use std::marker::PhantomData;

use crate::bindings::network::exports::legate::filter::network_handler as wit;
use crate::filter::{configure, root};
use crate::live::Live;
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
    ///
    /// ```
    /// # use legate_sdk::{NetworkAction, NetworkFilter};
    /// struct LoopbackOnly;
    /// impl NetworkFilter for LoopbackOnly {
    ///     fn on_new_connection(&mut self) -> NetworkAction {
    ///         match legate_sdk::properties::get_str(&["source", "address"]) {
    ///             Some(a) if a.starts_with("127.") => NetworkAction::Continue,
    ///             _ => NetworkAction::Close,
    ///         }
    ///     }
    /// }
    /// ```
    fn on_new_connection(&mut self) -> NetworkAction {
        NetworkAction::Continue
    }

    /// Bytes from the client, on their way to the upstream. See the trait's
    /// example.
    fn on_downstream_data(&mut self, _data: &mut Body, _end_of_stream: bool) -> NetworkAction {
        NetworkAction::Continue
    }

    /// Bytes from the upstream, on their way to the client.
    ///
    /// ```
    /// # use legate_sdk::{Body, NetworkAction, NetworkFilter};
    /// struct CloseOnBye;
    /// impl NetworkFilter for CloseOnBye {
    ///     fn on_upstream_data(&mut self, data: &mut Body, _eos: bool) -> NetworkAction {
    ///         if data.bytes().ends_with(b"BYE\r\n") { NetworkAction::Close } else { NetworkAction::Continue }
    ///     }
    /// }
    /// ```
    fn on_upstream_data(&mut self, _data: &mut Body, _end_of_stream: bool) -> NetworkAction {
        NetworkAction::Continue
    }

    /// The connection closed.
    ///
    /// ```
    /// # use legate_sdk::NetworkFilter;
    /// struct Closes;
    /// impl NetworkFilter for Closes {
    ///     fn on_close(&mut self) {
    ///         legate_sdk::metrics::Counter::new("closed").increment(1);
    ///     }
    /// }
    /// ```
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
    /// proxy config. See the trait's example.
    fn configure(configuration: &[u8]) -> Result<Self, String>;
    /// A filter for a new connection. See the trait's example.
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

/// Runs `f` on the instance's connections.
fn connections<F: 'static, R>(f: impl FnOnce(&mut Live<F>) -> R) -> R {
    crate::live::instance(|cell| crate::live::with(cell, Live::default, f))
}

/// Runs `f` on the filter of the live connection numbered `n`.
fn with_filter<P: NetworkPlugin, R>(n: u32, f: impl FnOnce(&mut P::Filter) -> R) -> R {
    connections(|live: &mut Live<P::Filter>| f(live.get(n)))
}

impl<P: NetworkPlugin> wit::Guest for __NetworkExport<P> {
    fn configure(configuration: Vec<u8>) -> Result<(), String> {
        configure(|| P::configure(&configuration))
    }

    fn new_connection() -> u32 {
        let filter = root(|| P::configure(b"")).new_filter();
        connections(|live: &mut Live<P::Filter>| live.insert(filter))
    }

    fn on_new_connection(connection: u32) -> bool {
        with_filter::<P, _>(connection, |f| f.on_new_connection()) == NetworkAction::Continue
    }

    fn on_downstream_data(connection: u32, data: Vec<u8>, end_of_stream: bool) -> wit::DataOutcome {
        let (data, close) = with_filter::<P, _>(connection, |f| {
            data_hook(|b| f.on_downstream_data(b, end_of_stream), data)
        });
        wit::DataOutcome { data, close }
    }

    fn on_upstream_data(connection: u32, data: Vec<u8>, end_of_stream: bool) -> wit::DataOutcome {
        let (data, close) = with_filter::<P, _>(connection, |f| {
            data_hook(|b| f.on_upstream_data(b, end_of_stream), data)
        });
        wit::DataOutcome { data, close }
    }

    fn on_close(connection: u32) {
        with_filter::<P, _>(connection, |f| f.on_close());
    }

    fn drop_connection(connection: u32) {
        connections(|live: &mut Live<P::Filter>| live.remove(connection));
    }
}
