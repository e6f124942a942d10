use super::*;
use serde_json::json;

fn flow(v: serde_json::Value) -> Result<IvrFlow, String> {
    let f: IvrFlow = serde_json::from_value(v).map_err(|e| e.to_string())?;
    f.validate().map_err(|e| e.to_string())?;
    Ok(f)
}

fn survey() -> serde_json::Value {
    json!({
        "start": "hello",
        "nodes": {
            "hello": {"type": "play", "text": "Hello {first_name}.", "next": "ask"},
            "ask": {"type": "gather", "var": "choice", "max_digits": 1, "say": {"text": "Press 1 or 2"},
                    "next": "route", "no_input": "bye"},
            "route": {"type": "branch", "var": "choice", "cases": {"1": "sales", "2": "yesno"}, "default": "bye"},
            "sales": {"type": "transfer", "skills": {"sales": 3}, "no_agent": "msg"},
            "yesno": {"type": "gather", "var": "ok", "input": "speech", "grammar": {"kind": "yes_no"}, "next": "hook"},
            "hook": {"type": "webhook", "url": "https://crm.example/ivr", "next": "bye"},
            "msg": {"type": "record", "say": {"prompt": "leave-message"}, "next": "bye"},
            "bye": {"type": "hangup"}
        }
    })
}

#[test]
fn a_full_flow_is_valid_and_round_trips() {
    let f = flow(survey()).unwrap();
    assert_eq!(f.nodes.len(), 8);
    assert_eq!(f.prompt_ids(), vec!["leave-message"]);
    let again: IvrFlow = serde_json::from_value(serde_json::to_value(&f).unwrap()).unwrap();
    assert_eq!(again, f);
    match &f.nodes["ask"] {
        IvrNode::Gather {
            timeout_ms,
            retries,
            input,
            ..
        } => {
            assert_eq!(
                (*timeout_ms, *retries, *input),
                (5_000, 2, GatherInput::Dtmf)
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn broadcast_is_play_then_hangup() {
    let f = flow(json!({"start": "m", "nodes": {
        "m": {"type": "play", "text": "Your appointment is tomorrow.", "next": "h"},
        "h": {"type": "hangup"}}}))
    .unwrap();
    assert_eq!(f.nodes["m"].targets(), vec!["h"]);
}

#[test]
fn errors_name_the_node() {
    let cases: Vec<(serde_json::Value, &str)> = vec![
        (
            json!({"start": "x", "nodes": {"a": {"type": "hangup"}}}),
            "start node 'x'",
        ),
        (json!({"start": "a", "nodes": {}}), "1-64 nodes"),
        (
            json!({"start": "a", "nodes": {"a": {"type": "play", "text": "hi", "next": "b"}}}),
            "node 'a': goes to 'b'",
        ),
        (
            json!({"start": "a", "nodes": {"a": {"type": "play"}}}),
            "node 'a': needs a prompt or a text",
        ),
        (
            json!({"start": "a", "nodes": {"a": {"type": "play", "text": "x", "prompt": "p"}}}),
            "node 'a': give either",
        ),
        (
            json!({"start": "a", "nodes": {"a": {"type": "play", "text": "Hi {first name}"}}}),
            "node 'a': '{first name}'",
        ),
        (
            json!({"start": "a", "nodes": {"a": {"type": "play", "text": "Hi {x"}}}),
            "node 'a': unclosed",
        ),
        (
            json!({"start": "a", "nodes": {"a": {"type": "play", "text": "Hi x}"}}}),
            "node 'a': unmatched",
        ),
        (
            json!({"start": "a", "nodes": {"a": {"type": "play", "text": "x", "voice": "en;rm -rf"}}}),
            "node 'a': voice",
        ),
        (
            json!({"start": "a", "nodes": {"a": {"type": "play", "text": "x", "rate": 20}}}),
            "node 'a': rate",
        ),
        (
            json!({"start": "a", "nodes": {"a": {"type": "play", "dtmf": "12x"}}}),
            "node 'a': dtmf",
        ),
        (
            json!({"start": "g", "nodes": {"g": {"type": "gather", "var": "v", "input": "speech"}}}),
            "node 'g': speech input needs a grammar",
        ),
        (
            json!({"start": "g", "nodes": {"g": {"type": "gather", "var": "V"}}}),
            "node 'g': var",
        ),
        (
            json!({"start": "g", "nodes": {"g": {"type": "gather", "var": "v", "max_digits": 0}}}),
            "node 'g': max_digits",
        ),
        (
            json!({"start": "g", "nodes": {"g": {"type": "gather", "var": "v", "timeout_ms": 10}}}),
            "node 'g': timeout_ms",
        ),
        (
            json!({"start": "g", "nodes": {"g": {"type": "gather", "var": "v", "retries": 9}}}),
            "node 'g': retries",
        ),
        (
            json!({"start": "g", "nodes": {"g": {"type": "gather", "var": "v", "terminator": "x"}}}),
            "node 'g': terminator",
        ),
        (
            json!({"start": "g", "nodes": {"g": {"type": "gather", "var": "v", "input": "speech", "grammar": {"kind": "keywords", "words": ["Sales!"]}}}}),
            "node 'g': grammar word 'Sales!'",
        ),
        (
            json!({"start": "b", "nodes": {"b": {"type": "branch", "var": "v", "cases": {}}}}),
            "node 'b': cases",
        ),
        (
            json!({"start": "r", "nodes": {"r": {"type": "record", "max_ms": 10}}}),
            "node 'r': max_ms",
        ),
        (
            json!({"start": "t", "nodes": {"t": {"type": "transfer", "skills": {"sales": 11}}}}),
            "node 't':",
        ),
        (
            json!({"start": "w", "nodes": {"w": {"type": "webhook", "url": "ftp://x"}}}),
            "node 'w': url must start",
        ),
        (
            json!({"start": "w", "nodes": {"w": {"type": "webhook", "url": "https://user:pw@host/"}}}),
            "node 'w': url needs a host and no credentials",
        ),
        (
            json!({"start": "a", "nodes": {"a": {"type": "hangup"}, "stray": {"type": "hangup"}}}),
            "node 'stray': cannot be reached",
        ),
        (
            json!({"start": "a b", "nodes": {"a b": {"type": "hangup"}}}),
            "node 'a b': node names",
        ),
    ];
    for (v, want) in cases {
        let err = flow(v.clone()).unwrap_err();
        assert!(err.contains(want), "{v}: got {err:?}, want {want:?}");
        assert!(err.starts_with("ivr_flow: "), "{err}");
    }
}

#[test]
fn unknown_node_types_and_fields_are_refused_by_the_parser() {
    for v in [
        json!({"start": "a", "nodes": {"a": {"type": "dance"}}}),
        json!({"start": "a", "nodes": {"a": {"type": "hangup", "extra": 1}}}),
        json!({"start": "a", "nodes": {"a": {"type": "play", "txt": "typo"}}}),
        json!({"start": "a", "nodes": {"a": {"type": "hangup"}}, "version": 2}),
        json!({"start": "a"}),
    ] {
        assert!(serde_json::from_value::<IvrFlow>(v.clone()).is_err(), "{v}");
    }
}

#[test]
fn too_many_nodes() {
    let mut nodes = serde_json::Map::new();
    for i in 0..=MAX_IVR_NODES {
        let next = format!("n{}", i + 1);
        let node = if i == MAX_IVR_NODES {
            json!({"type": "hangup"})
        } else {
            json!({"type": "play", "text": "x", "next": next})
        };
        nodes.insert(format!("n{i}"), node);
    }
    let err = flow(json!({"start": "n0", "nodes": nodes})).unwrap_err();
    assert!(err.contains("1-64 nodes"), "{err}");
}

#[test]
fn templates_render_fields_safely() {
    let mut fields = BTreeMap::new();
    fields.insert("first_name".to_owned(), "Ann\u{7}\nMarie".to_owned());
    fields.insert("day".to_owned(), "x".repeat(500));
    assert_eq!(
        render_template("Hello {first_name}, {{literal}} {missing}!", &fields),
        "Hello AnnMarie, {literal} !"
    );
    assert_eq!(render_template("{day}", &fields).len(), 200);
    assert!(check_template("n", "{{ok}} {a_1}").is_ok());
    assert!(check_template("n", "{A}").is_err());
    assert!(check_template("n", "{}").is_err());
}

#[test]
fn amd_message_is_required_for_the_message_action() {
    let spec: AmdSpec =
        serde_json::from_value(json!({"mode": "detect", "on_machine": "message"})).unwrap();
    assert!(spec
        .validate()
        .unwrap_err()
        .reason
        .contains("needs a prompt or a text"));
    let ok: AmdSpec = serde_json::from_value(
        json!({"mode": "detect", "on_machine": "message", "message": {"text": "Call us back"}}),
    )
    .unwrap();
    ok.validate().unwrap();
    let off = AmdSpec::default();
    assert_eq!(
        (off.mode, off.on_machine),
        (AmdMode::Off, MachineAction::Hangup)
    );
    off.validate().unwrap();
}

#[test]
fn result_summary_is_stable() {
    let mut r = IvrResult::default();
    for (k, v) in [("b", "2"), ("a", "yes")] {
        r.vars.insert(
            k.to_owned(),
            Gathered {
                value: v.to_owned(),
                source: "dtmf".to_owned(),
                confidence: None,
            },
        );
    }
    assert_eq!(r.summary(), "a=yes&b=2");
}

#[test]
fn field_values_cannot_carry_engine_commands() {
    let evil = BTreeMap::from([(
        "name".to_owned(),
        "Bob\u{1}20S\u{1}\n[[h@l'oU]]<speak>x</speak>".to_owned(),
    )]);
    let out = render_template("Hi {name}", &evil);
    assert!(!out.chars().any(char::is_control), "{out:?}");
    assert!(!out.contains("[["), "{out:?}");
    // The template's own text is the operator's and kept as written.
    assert_eq!(render_template("[[h@l'oU]]", &evil), "[[h@l'oU]]");
}

#[test]
fn voices_are_checked() {
    for ok in ["en-us", "en+f3", "en-gb-x-rp", "a_b", &"a".repeat(40)] {
        assert!(valid_voice(ok), "{ok}");
    }
    for bad in [
        "",
        "en us",
        "en;rm",
        "../x",
        "en$(id)",
        "é",
        &"a".repeat(41),
    ] {
        assert!(!valid_voice(bad), "{bad}");
    }
}
