//! Headers, trailers and body as hooks see them. Inside the proxy they are
//! views of the proxy's own copy: reads and changes go straight to it, so a
//! hook pays only for what it touches.

use std::cell::OnceCell;

use crate::host;

/// Which of the stream's header maps a [`Headers`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Map {
    RequestHeaders,
    RequestTrailers,
    ResponseHeaders,
    ResponseTrailers,
}

/// A list of headers, kept in order, names lowercase.
pub(crate) type List = Vec<(String, Vec<u8>)>;

/// Header list operations, shared by detached [`Headers`] and the test mock.
pub(crate) mod list {
    use super::List;

    pub fn get<'a>(l: &'a List, name: &str) -> Option<&'a [u8]> {
        l.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    pub fn get_all(l: &List, name: &str) -> Vec<Vec<u8>> {
        l.iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .collect()
    }

    pub fn set(l: &mut List, name: &str, value: &[u8]) {
        let name = name.to_ascii_lowercase();
        match l.iter().position(|(n, _)| *n == name) {
            Some(i) => {
                l[i].1 = value.to_vec();
                let mut j = i + 1;
                while j < l.len() {
                    if l[j].0 == name {
                        l.remove(j);
                    } else {
                        j += 1;
                    }
                }
            }
            None => l.push((name, value.to_vec())),
        }
    }

    pub fn append(l: &mut List, name: &str, value: &[u8]) {
        l.push((name.to_ascii_lowercase(), value.to_vec()));
    }

    pub fn remove(l: &mut List, name: &str) {
        l.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
    }
}

/// Headers or trailers: names are lowercase, values are bytes. Request
/// headers start with their pseudo-headers (`:method`, `:path`, `:authority`,
/// `:scheme`), response headers with `:status`. In a hook, a `Headers` is the
/// proxy's live map; [`Headers::from_pairs`] makes a detached one.
///
/// ```
/// let mut h = legate_sdk::Headers::from_pairs([(":path", "/a"), ("x-id", "7")]);
/// h.set("x-id", "8");
/// h.append("x-more", "1");
/// h.remove("x-gone");
/// assert_eq!(h.get_str("x-id").as_deref(), Some("8"));
/// assert_eq!(h.path().as_deref(), Some("/a"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Headers(Inner);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Inner {
    Live(Map),
    Detached(List),
}

impl Default for Headers {
    fn default() -> Self {
        Headers(Inner::Detached(Vec::new()))
    }
}

impl Headers {
    /// Detached headers from name/value pairs, e.g. for tests. Names are
    /// lowercased.
    ///
    /// ```
    /// let h = legate_sdk::Headers::from_pairs([("Content-Type", "text/plain")]);
    /// assert_eq!(h.get_str("content-type").as_deref(), Some("text/plain"));
    /// ```
    pub fn from_pairs<N: AsRef<str>, V: AsRef<[u8]>>(
        pairs: impl IntoIterator<Item = (N, V)>,
    ) -> Headers {
        Headers(Inner::Detached(
            pairs
                .into_iter()
                .map(|(n, v)| (n.as_ref().to_ascii_lowercase(), v.as_ref().to_vec()))
                .collect(),
        ))
    }

    pub(crate) fn live(map: Map) -> Headers {
        Headers(Inner::Live(map))
    }

    pub(crate) fn detached(list: List) -> Headers {
        Headers(Inner::Detached(list))
    }

    /// The first value of `name` (case-insensitive).
    ///
    /// ```
    /// let h = legate_sdk::Headers::from_pairs([("x-a", "1"), ("x-a", "2")]);
    /// assert_eq!(h.get("X-A"), Some(b"1".to_vec()));
    /// ```
    pub fn get(&self, name: &str) -> Option<Vec<u8>> {
        match &self.0 {
            Inner::Live(m) => host::header_get(*m, name),
            Inner::Detached(l) => list::get(l, name).map(<[u8]>::to_vec),
        }
    }

    /// The first value of `name`, if it is UTF-8.
    ///
    /// ```
    /// let h = legate_sdk::Headers::from_pairs([("x-a", "yes")]);
    /// assert_eq!(h.get_str("x-a").as_deref(), Some("yes"));
    /// ```
    pub fn get_str(&self, name: &str) -> Option<String> {
        String::from_utf8(self.get(name)?).ok()
    }

    /// Whether `name` is present.
    ///
    /// ```
    /// assert!(legate_sdk::Headers::from_pairs([("x-a", "")]).contains("x-a"));
    /// ```
    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Every value of `name`, in order.
    ///
    /// ```
    /// let h = legate_sdk::Headers::from_pairs([("x-a", "1"), ("x-a", "2")]);
    /// assert_eq!(h.get_all("x-a").len(), 2);
    /// ```
    pub fn get_all(&self, name: &str) -> Vec<Vec<u8>> {
        match &self.0 {
            Inner::Live(m) => host::header_get_all(*m, name),
            Inner::Detached(l) => list::get_all(l, name),
        }
    }

    /// Every header, in order, pseudo-headers first.
    ///
    /// ```
    /// let h = legate_sdk::Headers::from_pairs([("a", "1"), ("b", "2")]);
    /// let names: Vec<String> = h.entries().into_iter().map(|(n, _)| n).collect();
    /// assert_eq!(names, ["a", "b"]);
    /// ```
    pub fn entries(&self) -> Vec<(String, Vec<u8>)> {
        match &self.0 {
            Inner::Live(m) => host::header_entries(*m),
            Inner::Detached(l) => l.clone(),
        }
    }

    /// Replaces every value of `name` with `value`, or adds it. Returns false
    /// if the proxy refused the name or value as invalid in HTTP.
    ///
    /// ```
    /// let mut h = legate_sdk::Headers::from_pairs([("x-a", "1"), ("x-a", "2")]);
    /// h.set("x-a", "3");
    /// assert_eq!(h.get_all("x-a"), [b"3"]);
    /// ```
    pub fn set(&mut self, name: &str, value: impl AsRef<[u8]>) -> bool {
        match &mut self.0 {
            Inner::Live(m) => host::header_set(*m, name, value.as_ref()),
            Inner::Detached(l) => {
                list::set(l, name, value.as_ref());
                true
            }
        }
    }

    /// Adds a value of `name`, keeping the others. Returns false if the proxy
    /// refused it.
    ///
    /// ```
    /// let mut h = legate_sdk::Headers::default();
    /// h.append("x-a", "1");
    /// h.append("x-a", "2");
    /// assert_eq!(h.get_all("x-a").len(), 2);
    /// ```
    pub fn append(&mut self, name: &str, value: impl AsRef<[u8]>) -> bool {
        match &mut self.0 {
            Inner::Live(m) => host::header_append(*m, name, value.as_ref()),
            Inner::Detached(l) => {
                list::append(l, name, value.as_ref());
                true
            }
        }
    }

    /// Removes every value of `name`.
    ///
    /// ```
    /// let mut h = legate_sdk::Headers::from_pairs([("x-a", "1")]);
    /// h.remove("x-a");
    /// assert!(h.get("x-a").is_none());
    /// ```
    pub fn remove(&mut self, name: &str) {
        match &mut self.0 {
            Inner::Live(m) => host::header_remove(*m, name),
            Inner::Detached(l) => list::remove(l, name),
        }
    }

    /// `:path` of request headers.
    ///
    /// ```
    /// let h = legate_sdk::Headers::from_pairs([(":path", "/x?y=1")]);
    /// assert_eq!(h.path().as_deref(), Some("/x?y=1"));
    /// ```
    pub fn path(&self) -> Option<String> {
        self.get_str(":path")
    }

    /// `:method` of request headers.
    ///
    /// ```
    /// let h = legate_sdk::Headers::from_pairs([(":method", "GET")]);
    /// assert_eq!(h.method().as_deref(), Some("GET"));
    /// ```
    pub fn method(&self) -> Option<String> {
        self.get_str(":method")
    }

    /// `:authority` of request headers.
    ///
    /// ```
    /// let h = legate_sdk::Headers::from_pairs([(":authority", "example.com")]);
    /// assert_eq!(h.authority().as_deref(), Some("example.com"));
    /// ```
    pub fn authority(&self) -> Option<String> {
        self.get_str(":authority")
    }

    /// `:status` of response headers.
    ///
    /// ```
    /// let h = legate_sdk::Headers::from_pairs([(":status", "404")]);
    /// assert_eq!(h.status(), Some(404));
    /// ```
    pub fn status(&self) -> Option<u16> {
        self.get_str(":status")?.parse().ok()
    }
}

/// A chunk of body (or the whole body, after [`crate::Action::WaitForBody`]).
/// In a hook the bytes are fetched from the proxy on first use.
///
/// ```
/// let mut b = legate_sdk::Body::new("hello");
/// let upper = b.bytes().to_ascii_uppercase();
/// b.set(upper);
/// assert_eq!(b.bytes(), b"HELLO");
/// ```
#[derive(Debug, Clone, Default)]
pub struct Body {
    live: bool,
    len: usize,
    data: OnceCell<Vec<u8>>,
    changed: bool,
}

impl PartialEq for Body {
    fn eq(&self, other: &Body) -> bool {
        self.bytes() == other.bytes()
    }
}

impl Eq for Body {}

impl Body {
    /// A detached body with these bytes, e.g. for tests.
    ///
    /// ```
    /// assert_eq!(legate_sdk::Body::new("x").len(), 1);
    /// ```
    pub fn new(data: impl Into<Vec<u8>>) -> Body {
        let data: Vec<u8> = data.into();
        Body {
            live: false,
            len: data.len(),
            data: OnceCell::from(data),
            changed: false,
        }
    }

    pub(crate) fn live(len: usize) -> Body {
        Body {
            live: true,
            len,
            data: OnceCell::new(),
            changed: false,
        }
    }

    /// The bytes.
    ///
    /// ```
    /// assert_eq!(legate_sdk::Body::new("x").bytes(), b"x");
    /// ```
    pub fn bytes(&self) -> &[u8] {
        self.data.get_or_init(|| {
            if self.live {
                host::body_get()
            } else {
                Vec::new()
            }
        })
    }

    /// Replaces the bytes that go on.
    ///
    /// ```
    /// let mut b = legate_sdk::Body::new("x");
    /// b.set("y");
    /// assert_eq!(b.bytes(), b"y");
    /// ```
    pub fn set(&mut self, data: impl Into<Vec<u8>>) {
        let data: Vec<u8> = data.into();
        if self.live {
            host::body_set(&data);
        }
        self.len = data.len();
        self.data = OnceCell::from(data);
        self.changed = true;
    }

    /// How many bytes there are.
    ///
    /// ```
    /// assert_eq!(legate_sdk::Body::new("ab").len(), 2);
    /// ```
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none.
    ///
    /// ```
    /// assert!(legate_sdk::Body::default().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(crate) fn changed(&self) -> bool {
        self.changed
    }

    pub(crate) fn into_bytes(mut self) -> Vec<u8> {
        self.bytes();
        self.data.take().unwrap_or_default()
    }
}
