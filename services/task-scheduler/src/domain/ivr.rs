//! IVR flows and machine detection as a campaign sets them: the sent JSON
//! parsed into the contract's types and validated (errors name `ivr_flow`
//! and the node at fault, or `amd`), and what dial commands need of them.
//! No I/O here.

use dialstack_contract::ivr::{AmdMode, MachineAction, Say};
use dialstack_contract::{AmdSpec, IvrFlow, IvrNode};
use serde::Deserialize;

use super::campaign::{invalid, Invalid};

/// Most bytes of an IVR flow as JSON (as sent, and as stored).
pub const MAX_IVR_FLOW_BYTES: usize = 64 * 1024;

/// Parses and validates a sent IVR flow; errors name `ivr_flow` and, where
/// one is at fault, the node.
pub fn parse_ivr_flow(v: &serde_json::Value) -> Result<IvrFlow, Invalid> {
    if json_len(v) > MAX_IVR_FLOW_BYTES {
        return Err(invalid(
            "ivr_flow",
            format!("at most {MAX_IVR_FLOW_BYTES} bytes of JSON"),
        ));
    }
    let flow = IvrFlow::deserialize(v).map_err(|e| {
        // serde's message names the variant or field but not the node:
        // find the node that does not parse on its own.
        let node = v
            .get("nodes")
            .and_then(serde_json::Value::as_object)
            .and_then(|nodes| {
                nodes
                    .iter()
                    .find_map(|(name, n)| IvrNode::deserialize(n).err().map(|e| (name, e)))
            });
        match node {
            Some((name, e)) => invalid("ivr_flow", format!("node '{name}': {e}")),
            None => invalid("ivr_flow", e.to_string()),
        }
    })?;
    check_flow(&flow)?;
    Ok(flow)
}

/// A parsed flow's rules: the contract's, and its size as stored (defaults
/// written out).
pub(super) fn check_flow(flow: &IvrFlow) -> Result<(), Invalid> {
    flow.validate().map_err(|e| invalid(e.field, e.reason))?;
    if serde_json::to_string(flow).map_or(usize::MAX, |s| s.len()) > MAX_IVR_FLOW_BYTES {
        return Err(invalid(
            "ivr_flow",
            format!("at most {MAX_IVR_FLOW_BYTES} bytes of JSON with its defaults written out"),
        ));
    }
    Ok(())
}

fn json_len(v: &serde_json::Value) -> usize {
    serde_json::to_string(v).map_or(usize::MAX, |s| s.len())
}

/// Parses and validates sent answering-machine detection settings; errors
/// name `amd`.
pub fn parse_amd(v: &serde_json::Value) -> Result<AmdSpec, Invalid> {
    if json_len(v) > 8 * 1024 {
        return Err(invalid("amd", "at most 8192 bytes of JSON"));
    }
    let amd = AmdSpec::deserialize(v).map_err(|e| invalid("amd", e.to_string()))?;
    amd.validate().map_err(|e| invalid(e.field, e.reason))?;
    Ok(amd)
}

/// Validates a sent compliance message for abandoned calls: a stored
/// prompt's id or text (with lead fields), as in a flow's `play`.
pub fn parse_abandon_message(v: &serde_json::Value) -> Result<Say, Invalid> {
    if json_len(v) > 8 * 1024 {
        return Err(invalid("abandon_message", "at most 8192 bytes of JSON"));
    }
    let say = Say::deserialize(v).map_err(|e| invalid("abandon_message", e.to_string()))?;
    say.check("abandon_message", true)
        .map_err(|e| invalid(e.field, e.reason))?;
    Ok(say)
}

/// Whether a campaign with this flow, machine detection and compliance
/// message says lead fields: only a flow, a machine message or a
/// compliance text can.
pub fn needs_lead_fields(
    flow: Option<&IvrFlow>,
    amd: Option<&AmdSpec>,
    abandon_message: Option<&Say>,
) -> bool {
    flow.is_some()
        || amd.is_some_and(|a| {
            detects(a) && a.on_machine == MachineAction::Message && !a.message.is_empty()
        })
        || abandon_message.is_some_and(|m| m.text.as_deref().is_some_and(|t| t.contains('{')))
}

/// Whether machine detection is on (`off` is the same as none).
pub fn detects(a: &AmdSpec) -> bool {
    a.mode == AmdMode::Detect
}

/// The first `transfer` node of a flow, by name.
pub fn transfer_node(flow: &IvrFlow) -> Option<&str> {
    flow.nodes
        .iter()
        .find(|(_, n)| matches!(n, IvrNode::Transfer { .. }))
        .map(|(name, _)| name.as_str())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn flow() -> serde_json::Value {
        json!({
            "start": "hello",
            "nodes": {
                "hello": {"type": "gather", "var": "choice", "max_digits": 1,
                          "say": {"text": "Hello {first_name}, press 1 to talk to us"},
                          "next": "route"},
                "route": {"type": "branch", "var": "choice", "cases": {"1": "agent"}, "default": "bye"},
                "agent": {"type": "transfer", "no_agent": "bye"},
                "bye": {"type": "play", "text": "Goodbye", "next": "end"},
                "end": {"type": "hangup"}
            }
        })
    }

    /// The reason a changed flow is refused for (the field is always
    /// `ivr_flow`).
    fn refused(change: impl FnOnce(&mut serde_json::Value)) -> String {
        let mut f = flow();
        change(&mut f);
        let e = parse_ivr_flow(&f).unwrap_err();
        assert_eq!(e.field, "ivr_flow", "{e:?}");
        e.reason
    }

    #[test]
    fn a_flow_is_parsed_and_its_errors_name_the_node() {
        let f = parse_ivr_flow(&flow()).unwrap();
        assert_eq!((f.start.as_str(), f.nodes.len()), ("hello", 5));
        assert_eq!(transfer_node(&f), Some("agent"));
        assert!(
            needs_lead_fields(Some(&f), None, None),
            "a flow can say lead fields"
        );

        let why = refused(|f| f["nodes"]["bye"]["next"] = "nowhere".into());
        assert!(
            why.contains("node 'bye'") && why.contains("nowhere"),
            "{why}"
        );
        let why = refused(|f| f["nodes"]["hello"]["say"]["text"] = "Hi {First Name}".into());
        assert!(why.contains("node 'hello'"), "{why}");
        let why = refused(|f| f["nodes"]["bye"] = json!({"type": "dance", "next": "end"}));
        assert!(
            why.contains("node 'bye'") && why.contains("dance"),
            "unknown type: {why}"
        );
        let why = refused(|f| f["nodes"]["end"]["colour"] = "red".into());
        assert!(
            why.contains("node 'end'") && why.contains("colour"),
            "unknown field: {why}"
        );
        let why = refused(|f| f["nodes"]["route"]["cases"] = json!({}));
        assert!(why.contains("node 'route'"), "{why}");
        let why = refused(|f| *f = json!({"nodes": {}}));
        assert!(why.contains("start"), "{why}");
        let why = refused(|f| f["nodes"]["bye"]["text"] = "x".repeat(MAX_IVR_FLOW_BYTES).into());
        assert!(why.contains("bytes"), "{why}");
    }

    #[test]
    fn machine_detection_is_validated() {
        let a = parse_amd(&json!({"mode": "detect", "on_machine": "message",
            "message": {"text": "Hi {first_name}, call us back"}}))
        .unwrap();
        assert!(detects(&a));
        assert!(
            needs_lead_fields(None, Some(&a), None),
            "the message can say lead fields"
        );
        let e = parse_amd(&json!({"mode": "detect", "on_machine": "message"})).unwrap_err();
        assert_eq!(e.field, "amd");
        assert!(e.reason.contains("prompt or a text"), "{}", e.reason);
        for bad in [
            json!({"mode": "guess"}),
            json!({"mode": "detect", "beep": 1}),
            json!([1]),
        ] {
            assert_eq!(parse_amd(&bad).unwrap_err().field, "amd", "{bad}");
        }
        let off = parse_amd(&json!({"mode": "off"})).unwrap();
        assert!(!detects(&off));
        let hangup = parse_amd(&json!({"mode": "detect"})).unwrap();
        assert!(
            !needs_lead_fields(None, Some(&hangup), None),
            "hang-ups say nothing"
        );
        assert!(!needs_lead_fields(None, Some(&off), None));
    }
}
