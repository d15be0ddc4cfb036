//! Hand-built MySQL packets shared by this crate's tests: each builder returns a
//! payload; [`pkt`] frames it.

#![allow(dead_code)] // each test binary uses its own subset

use legate_mysql_proxy::messages::caps::*;
use legate_mysql_proxy::packet;

pub fn pkt(seq: u8, payload: &[u8]) -> Vec<u8> {
    packet::encode(payload, seq)
}

pub fn lenenc_str(out: &mut Vec<u8>, s: &[u8]) {
    assert!(s.len() < 251);
    out.push(s.len() as u8);
    out.extend_from_slice(s);
}

/// A v10 greeting. `mariadb` clears CLIENT_LONG_PASSWORD and fills the extended caps.
pub fn greeting(version: &str, plugin: &str, caps: u32, mariadb: bool) -> Vec<u8> {
    let mut g = vec![10];
    g.extend_from_slice(version.as_bytes());
    g.push(0);
    g.extend_from_slice(&42u32.to_le_bytes());
    g.extend_from_slice(b"abcdefgh");
    g.push(0);
    g.extend_from_slice(&(caps as u16).to_le_bytes());
    g.push(0x21);
    g.extend_from_slice(&2u16.to_le_bytes());
    g.extend_from_slice(&((caps >> 16) as u16).to_le_bytes());
    g.push(21);
    g.extend_from_slice(&[0; 6]);
    g.extend_from_slice(&(if mariadb { 0x1d_u32 } else { 0 }).to_le_bytes());
    g.extend_from_slice(b"ijklmnopqrst\0");
    g.extend_from_slice(plugin.as_bytes());
    g.push(0);
    g
}

pub fn login(caps: u32, user: &str, auth: &[u8], db: Option<&str>, plugin: &str) -> Vec<u8> {
    let mut l = Vec::new();
    l.extend_from_slice(&caps.to_le_bytes());
    l.extend_from_slice(&(16u32 << 20).to_le_bytes());
    l.push(0x2d);
    l.extend_from_slice(&[0; 23]);
    l.extend_from_slice(user.as_bytes());
    l.push(0);
    if caps & CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA != 0 {
        lenenc_str(&mut l, auth);
    } else {
        l.push(auth.len() as u8);
        l.extend_from_slice(auth);
    }
    if let Some(db) = db {
        l.extend_from_slice(db.as_bytes());
        l.push(0);
    }
    l.extend_from_slice(plugin.as_bytes());
    l.push(0);
    if caps & CLIENT_CONNECT_ATTRS != 0 {
        let mut attrs = Vec::new();
        lenenc_str(&mut attrs, b"_client_name");
        lenenc_str(&mut attrs, b"libmysql");
        lenenc_str(&mut l, &attrs);
    }
    l
}

pub fn ok(status: u16) -> Vec<u8> {
    let mut o = vec![0, 0, 0];
    o.extend_from_slice(&status.to_le_bytes());
    o.extend_from_slice(&0u16.to_le_bytes());
    o
}

pub fn eof(status: u16) -> Vec<u8> {
    let mut e = vec![0xFE, 0, 0];
    e.extend_from_slice(&status.to_le_bytes());
    e
}

pub fn err(code: u16, state: &str, msg: &str) -> Vec<u8> {
    let mut e = vec![0xFF];
    e.extend_from_slice(&code.to_le_bytes());
    e.push(b'#');
    e.extend_from_slice(state.as_bytes());
    e.extend_from_slice(msg.as_bytes());
    e
}

pub fn column_def(name: &str) -> Vec<u8> {
    let mut c = Vec::new();
    for s in [
        &b"def"[..],
        b"shop",
        b"t",
        b"t",
        name.as_bytes(),
        name.as_bytes(),
    ] {
        lenenc_str(&mut c, s);
    }
    c.extend_from_slice(&[0x0c, 0x21, 0, 0xff, 0, 0, 0, 0xfd, 0, 0, 0, 0, 0]);
    c
}

pub fn row(values: &[&str]) -> Vec<u8> {
    let mut r = Vec::new();
    for v in values {
        lenenc_str(&mut r, v.as_bytes());
    }
    r
}
