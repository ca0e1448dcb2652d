//! W3C trace context (`traceparent`, version 00) as it travels on assignments and
//! results: `00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`. Plain bytes
//! here; the server and the SDK turn them into OpenTelemetry types.

/// A parsed `traceparent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub flags: u8,
}

impl TraceParent {
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }
}

fn hex_bytes<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Parses a `traceparent`; `None` for anything but a valid version-00 value
/// (all-zero ids are invalid).
pub fn parse(raw: &str) -> Option<TraceParent> {
    let mut parts = raw.trim().split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version != "00" || parts.next().is_some() {
        return None;
    }
    let trace_id = hex_bytes::<16>(trace)?;
    let span_id = hex_bytes::<8>(span)?;
    let [flags] = hex_bytes::<1>(flags)?;
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some(TraceParent {
        trace_id,
        span_id,
        flags,
    })
}

/// Formats a `traceparent`.
pub fn format(trace_id: [u8; 16], span_id: [u8; 8], flags: u8) -> String {
    let mut out = String::with_capacity(55);
    out.push_str("00-");
    for b in trace_id {
        out.push_str(&format!("{b:02x}"));
    }
    out.push('-');
    for b in span_id {
        out.push_str(&format!("{b:02x}"));
    }
    out.push_str(&format!("-{flags:02x}"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_garbage() {
        let raw = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let tp = parse(raw).unwrap();
        assert_eq!(tp.trace_id[0], 0x0a);
        assert_eq!(tp.span_id[7], 0x31);
        assert!(tp.sampled());
        assert_eq!(format(tp.trace_id, tp.span_id, tp.flags), raw);
        assert!(
            !parse("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00")
                .unwrap()
                .sampled()
        );
        for bad in [
            "",
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b716920333-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-x",
            "00-zzf7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-1",
            "00-+af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ] {
            assert!(parse(bad).is_none(), "{bad}");
        }
    }
}
