//! Native tests of `pii-mask`: detector cases, the plugin over batches, a labelled corpus with
//! precision/recall per entity, and a throughput measurement.

mod corpus;
mod throughput;

use gatehouse_plugin_sdk::rows::{apply_edits, batch_from_rows};
use gatehouse_plugin_sdk::{Config, Hook, OnRows, Plugin, testing};

use super::*;

fn found(text: &str, hints: Hints) -> Vec<(Entity, String)> {
    let d = Detector::new(EntitySet::all());
    let mut spans = Vec::new();
    d.scan(text.as_bytes(), hints, &mut spans);
    spans
        .iter()
        .map(|s| (s.entity, text[s.start..s.end].to_owned()))
        .collect()
}

fn one(text: &str) -> Vec<(Entity, String)> {
    found(text, Hints::default())
}

fn expect(text: &str, entity: Entity, value: &str) {
    assert_eq!(one(text), vec![(entity, value.to_owned())], "in {text:?}");
}

fn nothing(text: &str) {
    assert_eq!(one(text), vec![], "in {text:?}");
}

#[test]
fn cards() {
    expect("4111111111111111", Entity::CreditCard, "4111111111111111");
    expect(
        "card 4111 1111 1111 1111 exp 12/27",
        Entity::CreditCard,
        "4111 1111 1111 1111",
    );
    expect(
        "paid with 5555-5555-5555-4444.",
        Entity::CreditCard,
        "5555-5555-5555-4444",
    );
    expect("amex 3782 822463 10005", Entity::CreditCard, "3782 822463 10005");
    expect("378282246310005", Entity::CreditCard, "378282246310005");
    expect("disc 6011111111111117 ok", Entity::CreditCard, "6011111111111117");
    expect(
        "ref 12 4111 1111 1111 1111",
        Entity::CreditCard,
        "4111 1111 1111 1111",
    );
    expect("2221000000000009", Entity::CreditCard, "2221000000000009");
    // Luhn failure, implausible issuer, glued to an order id, too short/long.
    nothing("4111111111111112");
    nothing("1234567812345670");
    nothing("ORD-4111111111111111");
    nothing("4111-1111-1111-1111-1111");
    nothing("411111111111");
    nothing("41111111111111111111");
}

#[test]
fn ssns() {
    expect("SSN 123-45-6789 on file", Entity::UsSsn, "123-45-6789");
    nothing("000-12-3456");
    nothing("666-12-3456");
    nothing("912-12-3456");
    nothing("123-00-4567");
    nothing("123-45-0000");
    nothing("123456789");
    nothing("123-45-6789-1");
    let ssn = Hints {
        ssn: true,
        phone: false,
    };
    assert_eq!(
        found("123456789", ssn),
        vec![(Entity::UsSsn, "123456789".to_owned())]
    );
    assert_eq!(
        found("123 45 6789", ssn),
        vec![(Entity::UsSsn, "123 45 6789".to_owned())]
    );
    assert_eq!(found("666456789", ssn), vec![]);
}

#[test]
fn emails() {
    expect(
        "mail alice.smith+tag@mail.example.co.uk now",
        Entity::Email,
        "alice.smith+tag@mail.example.co.uk",
    );
    expect("<bob@example.com>.", Entity::Email, "bob@example.com");
    nothing("user@localhost");
    nothing("foo@bar");
    nothing("@example.com");
    nothing("a..b@example.com");
    nothing("x@example.c0m");
}

#[test]
fn phones() {
    expect("call (415) 555-2671 today", Entity::Phone, "(415) 555-2671");
    expect("415-555-2671", Entity::Phone, "415-555-2671");
    expect("415.555.2671", Entity::Phone, "415.555.2671");
    expect("+1 415 555 2671", Entity::Phone, "+1 415 555 2671");
    expect("+14155552671", Entity::Phone, "+14155552671");
    expect("1-800-555-0199", Entity::Phone, "1-800-555-0199");
    expect("tel +44 20 7946 0958", Entity::Phone, "+44 20 7946 0958");
    expect("+49-30-12345678", Entity::Phone, "+49-30-12345678");
    nothing("123-456-7890");
    nothing("555-123-4567");
    nothing("4155552671");
    nothing("+1 123 555 2671");
    nothing("555-0199");
    let phone = Hints {
        ssn: false,
        phone: true,
    };
    assert_eq!(
        found("4155552671", phone),
        vec![(Entity::Phone, "4155552671".to_owned())]
    );
}

#[test]
fn ibans() {
    expect(
        "IBAN DE89370400440532013000",
        Entity::Iban,
        "DE89370400440532013000",
    );
    expect(
        "DE89 3704 0044 0532 0130 00 thanks",
        Entity::Iban,
        "DE89 3704 0044 0532 0130 00",
    );
    expect(
        "GB82 WEST 1234 5698 7654 32",
        Entity::Iban,
        "GB82 WEST 1234 5698 7654 32",
    );
    expect("NL91ABNA0417164300", Entity::Iban, "NL91ABNA0417164300");
    nothing("DE88370400440532013000");
    nothing("XX89370400440532013000");
    nothing("DE8937040044053201300");
}

#[test]
fn ips() {
    expect("from 192.168.1.20:5432", Entity::Ipv4, "192.168.1.20");
    expect("10.0.0.0/8", Entity::Ipv4, "10.0.0.0");
    expect("host 8.8.8.8.", Entity::Ipv4, "8.8.8.8");
    nothing("256.1.1.1");
    nothing("1.2.3");
    nothing("1.3.6.1.4.1");
    nothing("v1.2.3.4");
    nothing("01.02.03.04");
    expect(
        "addr 2001:db8:85a3::8a2e:370:7334 up",
        Entity::Ipv6,
        "2001:db8:85a3::8a2e:370:7334",
    );
    expect(
        "[fe80::1ff:fe23:4567:890a]:8080",
        Entity::Ipv6,
        "fe80::1ff:fe23:4567:890a",
    );
    expect(
        "2001:0db8:0000:0000:0000:ff00:0042:8329",
        Entity::Ipv6,
        "2001:0db8:0000:0000:0000:ff00:0042:8329",
    );
    nothing("at 10:30:45");
    nothing("mac 00:1a:2b:3c:4d:5e");
    nothing("std::vector");
    nothing("::1");
}

#[test]
fn jwts_keys_secrets() {
    let jwt = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";
    expect(&format!("Authorization: Bearer {jwt}"), Entity::Jwt, jwt);
    nothing("eyJhbGciOiJIUzI1NiJ9");
    nothing("eyJnb3RjaGEiOjF9.eyJzdWIiOiIxIn0.sig");
    expect(
        "key=AKIAIOSFODNN7EXAMPLE",
        Entity::AwsAccessKey,
        "AKIAIOSFODNN7EXAMPLE",
    );
    nothing("AKIAIOSFODNN7EXAMPL");
    expect(
        "secret: wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY end",
        Entity::Secret,
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    );
    expect(
        "sk_live_4eC39HqLyjWDarjtT1zdp7dc9Xz",
        Entity::Secret,
        "sk_live_4eC39HqLyjWDarjtT1zdp7dc9Xz",
    );
    nothing("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    nothing("550e8400-e29b-41d4-a716-446655440000");
    nothing("getCustomerAccountBalanceForInvoice2024");
    nothing("/usr/local/lib/python3.11/site-packages/Django");
}

#[test]
fn multiple_entities_in_one_cell() {
    let text = "Alice <alice@example.com>, card 4111 1111 1111 1111, ip 10.1.2.3, SSN 123-45-6789";
    let f = one(text);
    let entities: Vec<Entity> = f.iter().map(|(e, _)| *e).collect();
    assert_eq!(
        entities,
        [Entity::Email, Entity::CreditCard, Entity::Ipv4, Entity::UsSsn]
    );
}

#[test]
fn entity_filter() {
    let d = Detector::new(EntitySet::parse_name("email").unwrap());
    let mut spans = Vec::new();
    d.scan(
        b"alice@example.com 4111111111111111",
        Hints::default(),
        &mut spans,
    );
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0].entity, Entity::Email);
}

fn plugin(json: &str) -> Result<PiiMask, String> {
    PiiMask::new(&Config::from_json(json))
}

#[test]
fn config_validation() {
    assert!(plugin("{}").is_ok());
    assert!(
        plugin(r#"{"strategy": "hash"}"#)
            .unwrap_err()
            .contains("hash_key")
    );
    assert!(
        plugin(r#"{"strategies": {"email": "hash"}}"#)
            .unwrap_err()
            .contains("hash_key")
    );
    assert!(plugin(r#"{"strategies": {"email": "hash"}, "entities": ["credit-card"]}"#).is_ok());
    assert!(plugin(r#"{"strategy": "hash", "hash_key": "k"}"#).is_ok());
    assert!(
        plugin(r#"{"entities": ["credit-card", "nope"]}"#)
            .unwrap_err()
            .contains("nope")
    );
    assert!(plugin(r#"{"strategy": "blur"}"#).is_err());
    assert!(plugin(r#"{"unknown": 1}"#).is_err());
    assert!(plugin(r#"{"columns": {"ssn": "us-ssn"}, "entities": ["ip-address"]}"#).is_ok());
    let info = gatehouse_plugin_sdk::describe!(PiiMask);
    assert_eq!(info.name, "pii-mask");
    assert_eq!(info.hooks, [Hook::OnRows]);
}

#[test]
fn masks_a_batch() {
    let p = plugin(r#"{"strategies": {"email": "hash", "us-ssn": "full"}, "hash_key": "k", "columns": {"secret_answer": "secret"}}"#)
        .unwrap();
    let batch = batch_from_rows(
        &["id", "email", "note", "ssn", "secret_answer"],
        &[
            vec![
                Some("1"),
                Some("alice@example.com"),
                Some("card 4111-1111-1111-1111 thanks"),
                Some("123456789"),
                Some("blue"),
            ],
            vec![Some("2"), Some("bob@example.com"), None, Some("n/a"), None],
            vec![
                Some("3"),
                Some("alice@example.com"),
                Some("no pii here"),
                Some("123-45-6789"),
                Some("red"),
            ],
        ],
    );
    let r = p.on_rows(&testing::session(), &batch).unwrap();
    let masked = apply_edits(&batch, &r.edits).unwrap();
    let cells: Vec<Option<String>> = gatehouse_plugin_sdk::rows::BatchView::new(&masked)
        .unwrap()
        .cells()
        .map(|c| c.value.as_str().map(str::to_owned))
        .collect();
    let token = cells[1].clone().unwrap();
    assert!(token.starts_with("tok_"), "{token}");
    assert_eq!(cells[11], Some(token), "same e-mail, same token");
    assert_ne!(cells[6], cells[1]);
    assert_eq!(cells[2].as_deref(), Some("card ****-****-****-1111 thanks"));
    assert_eq!(cells[3].as_deref(), Some("****"));
    assert_eq!(
        cells[4].as_deref(),
        Some("****"),
        "configured column, partial of a short value"
    );
    assert_eq!(cells[8].as_deref(), Some("n/a"));
    assert_eq!(cells[12].as_deref(), Some("no pii here"));
    assert_eq!(cells[13].as_deref(), Some("****"));
    let mut findings: Vec<(String, String, u32)> = r
        .findings
        .iter()
        .map(|f| (f.entity.clone(), f.field.clone(), f.count))
        .collect();
    findings.sort();
    assert_eq!(
        findings,
        [
            ("credit-card".to_owned(), "note".to_owned(), 1),
            ("email".to_owned(), "email".to_owned(), 3),
            ("secret".to_owned(), "secret_answer".to_owned(), 2),
            ("us-ssn".to_owned(), "ssn".to_owned(), 2),
        ]
    );
    // Nothing in the findings is a value.
    for f in &r.findings {
        assert!(!f.entity.contains('@') && !f.field.contains('@'));
    }
}

#[test]
fn non_text_columns_become_null() {
    let p = plugin("{}").unwrap();
    let mut batch = batch_from_rows(
        &["n", "addr"],
        &[vec![Some("4111111111111111"), Some("10.0.0.1")]],
    );
    batch.columns[0].type_oid = 20; // int8
    batch.columns[1].type_oid = 869; // inet
    let r = p.mask_batch(&batch).unwrap();
    assert_eq!(r.edits.len(), 2);
    assert!(r.edits.iter().all(|e| e.value.is_none()));
}

#[test]
fn binary_and_null_cells_are_skipped_and_bad_batches_rejected() {
    let p = plugin("{}").unwrap();
    let mut batch = batch_from_rows(&["a"], &[vec![None::<&str>]]);
    batch.lengths = vec![-2];
    assert!(p.mask_batch(&batch).unwrap().edits.is_empty());
    batch.lengths = vec![5];
    assert!(p.mask_batch(&batch).is_err());
}

#[test]
fn pathological_inputs_stay_linear() {
    let d = Detector::new(EntitySet::all());
    let mut spans = Vec::new();
    let inputs: Vec<Vec<u8>> = vec![
        b"a:".repeat(200_000),
        b"1.".repeat(200_000),
        b"1-".repeat(200_000),
        b"eyJ".repeat(100_000),
        b"x@".repeat(200_000),
        b"Ab1".repeat(100_000),
        b"DE89 ".repeat(80_000),
        vec![0xff; 400_000],
    ];
    for input in inputs {
        let start = std::time::Instant::now();
        d.scan(
            &input,
            Hints {
                ssn: true,
                phone: true,
            },
            &mut spans,
        );
        assert!(
            start.elapsed() < std::time::Duration::from_secs(2),
            "{:?}",
            &input[..8]
        );
    }
}
