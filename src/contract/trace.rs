//! W3C Trace Context: a valid `traceparent` (and its `tracestate`) travels on
//! as MQTT 5 user properties of the same names, the W3C's trace-context-mqtt
//! convention, so a subscriber continues the caller's trace. An invalid
//! `traceparent` is dropped, never an error: tracing must not break publishing.

use http::HeaderMap;

/// The `traceparent` header (and user property).
pub const TRACEPARENT: &str = "traceparent";
/// The `tracestate` header (and user property).
pub const TRACESTATE: &str = "tracestate";
/// Longest `tracestate` forwarded: the length the W3C asks every vendor to
/// propagate. A longer one is dropped (its `traceparent` still travels).
const MAX_TRACESTATE_BYTES: usize = 512;
/// Most list members a `tracestate` may hold (W3C).
const MAX_TRACESTATE_MEMBERS: usize = 32;

/// A request's valid trace context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// The `traceparent` as sent.
    pub traceparent: String,
    /// The `tracestate` as sent (several headers joined with `,`), if valid.
    pub tracestate: Option<String>,
}

impl TraceContext {
    /// The request's trace context, if it sent exactly one valid `traceparent`.
    pub fn from_headers(headers: &HeaderMap) -> Option<TraceContext> {
        let traceparent = traceparent(headers)?;
        Some(TraceContext { traceparent: traceparent.to_owned(), tracestate: tracestate(headers) })
    }

    /// The 32 hex digits of the trace id of the request's valid `traceparent`,
    /// for its log line, without copying anything.
    pub fn trace_id_of(headers: &HeaderMap) -> Option<&str> {
        traceparent(headers).map(|t| &t[3..35])
    }

    /// The user properties that carry it, in order.
    pub fn user_properties(&self) -> impl Iterator<Item = (String, String)> + '_ {
        std::iter::once((TRACEPARENT.to_owned(), self.traceparent.clone()))
            .chain(self.tracestate.iter().map(|state| (TRACESTATE.to_owned(), state.clone())))
    }
}

/// The request's one `traceparent`, if valid.
fn traceparent(headers: &HeaderMap) -> Option<&str> {
    let mut values = headers.get_all(TRACEPARENT).iter();
    let (Some(value), None) = (values.next(), values.next()) else { return None };
    value.to_str().ok().filter(|v| is_traceparent(v))
}

/// `version-traceid-parentid-flags` in lower-case hex: version `ff` is invalid,
/// version `00` is exactly 55 characters, a later version may append `-...`;
/// all-zero trace and parent ids are invalid.
fn is_traceparent(value: &str) -> bool {
    let hex =
        |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let zero = |s: &str| s.bytes().all(|b| b == b'0');
    // Visible ASCII only: what a later version appends travels as MQTT text too.
    if value.len() < 55 || !value.bytes().all(|b| b.is_ascii_graphic()) {
        return false;
    }
    let (version, trace_id, parent_id, flags) = (&value[0..2], &value[3..35], &value[36..52], &value[53..55]);
    let dashes = [2, 35, 52].iter().all(|&i| value.as_bytes()[i] == b'-');
    let length_ok = match version {
        "00" => value.len() == 55,
        _ => value.len() == 55 || value.as_bytes()[55] == b'-',
    };
    dashes
        && length_ok
        && hex(version, 2)
        && version != "ff"
        && hex(trace_id, 32)
        && !zero(trace_id)
        && hex(parent_id, 16)
        && !zero(parent_id)
        && hex(flags, 2)
}

/// Every non-empty `tracestate` header joined with `,`, if it is a W3C list
/// within the W3C's bounds: 1 to 32 `key=value` members with distinct keys,
/// in at most 512 bytes; else none.
fn tracestate(headers: &HeaderMap) -> Option<String> {
    let mut joined = String::new();
    for value in headers.get_all(TRACESTATE) {
        let value = value.to_str().ok()?;
        if value.trim().is_empty() {
            continue; // an empty header adds no list member, first or not
        }
        if !joined.is_empty() {
            joined.push(',');
        }
        joined.push_str(value);
    }
    // Forwarded as its members alone, joined with `,`: the spaces and tabs the
    // grammar allows around them are no part of them, and a tab is no MQTT text.
    let mut forwarded = String::new();
    let mut keys: Vec<&str> = Vec::new();
    for member in joined.split(',').map(|m| m.trim_matches([' ', '\t'])).filter(|m| !m.is_empty()) {
        let key = list_member_key(member)?;
        if keys.contains(&key) || keys.len() == MAX_TRACESTATE_MEMBERS {
            return None;
        }
        keys.push(key);
        if !forwarded.is_empty() {
            forwarded.push(',');
        }
        forwarded.push_str(member);
    }
    (!keys.is_empty() && forwarded.len() <= MAX_TRACESTATE_BYTES).then_some(forwarded)
}

/// The key of a `tracestate` list member, if the member is `key=value` as the
/// W3C's grammar has it: a key of lower-case letters, digits and `_-*/`
/// (starting with a letter; or `tenant@system`), a value of 1 to 256
/// printable characters but `,` and `=`, not ending in a space.
fn list_member_key(member: &str) -> Option<&str> {
    let (key, value) = member.split_once('=')?;
    let key_char = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-' | b'*' | b'/');
    let part = |text: &str, first_digit: bool, max: usize| {
        text.len() <= max
            && text.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || (first_digit && b.is_ascii_digit()))
            && text.bytes().all(key_char)
    };
    let key_ok = match key.split_once('@') {
        None => part(key, false, 256),
        Some((tenant, system)) => part(tenant, true, 241) && part(system, false, 14),
    };
    let value_char = |b: u8| (0x20..=0x7e).contains(&b) && b != b',' && b != b'=';
    let value_ok = (1..=256).contains(&value.len()) && value.bytes().all(value_char) && !value.ends_with(' ');
    (key_ok && value_ok).then_some(key)
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn context(pairs: &[(&'static str, &str)]) -> Option<TraceContext> {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, HeaderValue::from_str(value).unwrap());
        }
        TraceContext::from_headers(&headers)
    }

    #[test]
    fn a_valid_traceparent_travels_with_its_tracestate() {
        let c =
            context(&[(TRACEPARENT, VALID), (TRACESTATE, "congo=t61rcWkgMzE"), (TRACESTATE, "rojo=00f067aa0ba902b7")])
                .unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(TRACEPARENT, HeaderValue::from_static(VALID));
        assert_eq!(TraceContext::trace_id_of(&headers), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        let props: Vec<(String, String)> = c.user_properties().collect();
        assert_eq!(
            props,
            [(TRACEPARENT.into(), VALID.into()), (TRACESTATE.into(), "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7".into())]
        );
        assert_eq!(context(&[(TRACEPARENT, VALID)]).unwrap().tracestate, None);
    }

    #[test]
    fn invalid_traceparents_are_dropped() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-\tx",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01- x",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ] {
            assert_eq!(context(&[(TRACEPARENT, bad)]), None, "{bad:?}");
        }
        assert_eq!(context(&[(TRACEPARENT, VALID), (TRACEPARENT, VALID)]), None, "two traceparents");
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes-next";
        assert!(context(&[(TRACEPARENT, later)]).is_some(), "a later version may append fields");
    }

    #[test]
    fn an_oversized_tracestate_is_dropped_and_the_traceparent_kept() {
        let long = format!("k={}", "v".repeat(MAX_TRACESTATE_BYTES));
        let c = context(&[(TRACEPARENT, VALID), (TRACESTATE, &long)]).unwrap();
        assert_eq!(c.tracestate, None);
        let many = (0..33).map(|i| format!("k{i}=v")).collect::<Vec<_>>().join(",");
        assert_eq!(context(&[(TRACEPARENT, VALID), (TRACESTATE, &many)]).unwrap().tracestate, None);
    }

    #[test]
    fn a_tracestate_off_the_w3c_grammar_is_dropped_and_the_traceparent_kept() {
        let state = |value: &str| context(&[(TRACEPARENT, VALID), (TRACESTATE, value)]).unwrap().tracestate;
        for good in ["congo=t61rcWkgMzE", "a=1,b=2", "t@sys=x", "1tenant@s-y_s*/=v v", "k=!"] {
            assert_eq!(state(good).as_deref(), Some(good), "{good:?}");
        }
        // The spaces and tabs around members, and empty members, are not forwarded.
        assert_eq!(state(" k=v ,,\tj=w\t").as_deref(), Some("k=v,j=w"));
        for bad in ["garbage", "A=1", "a=b=c", "a=", "a=1,a=2", "1a=x", "a@B=x", "a@toolongsystemid=x", "=x"] {
            assert_eq!(state(bad), None, "{bad:?}");
        }
        assert_eq!(state(&format!("k={}", "v".repeat(257))), None, "a value over 256 characters");
    }
}
