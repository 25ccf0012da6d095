//! Arbitrary JSON bodies and arbitrary gRPC messages: never a server error.

use super::*;

/// Field names the JSON routes take (and some they do not).
const KEYS: &[&str] = &[
    "query",
    "documents",
    "texts",
    "pairs",
    "top_n",
    "raw_scores",
    "return_documents",
    "document",
    "text",
    "model",
    "truncate",
];

/// The fields that make a request's shape, for near misses.
const SHAPES: &[&str] = &["query", "texts", "documents", "pairs"];

const ROUTES: [&str; 3] = ["/rerank", "/v1/rerank", "/score"];

fn key() -> BoxedStrategy<String> {
    prop_oneof![
        4 => prop::sample::select(KEYS).prop_map(|k| k.to_string()),
        1 => "[a-z_]{1,12}",
    ]
    .boxed()
}

fn json_value() -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("a finite number", |f| {
            serde_json::Number::from_f64(f).map(Value::Number)
        }),
        "\\PC{0,40}".prop_map(Value::from),
        prop::sample::select(KEYS).prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map(key(), inner, 0..8)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
    .boxed()
}

/// A request that is nearly right: some of the shape fields, with texts, and maybe one
/// field of any value.
fn near_miss() -> BoxedStrategy<Value> {
    (
        prop::sample::subsequence(SHAPES, 0..=SHAPES.len()),
        "\\PC{0,30}",
        prop::collection::vec("\\PC{0,30}", 0..5),
        prop::option::of((prop::sample::select(KEYS), json_value())),
    )
        .prop_map(|(fields, query, texts, extra)| {
            let mut body = serde_json::Map::new();
            for field in fields {
                let value = match field {
                    "query" => Value::from(query.clone()),
                    "pairs" => texts
                        .iter()
                        .map(|t| json!({"query": query, "document": t}))
                        .collect(),
                    _ => Value::from(texts.clone()),
                };
                body.insert(field.to_string(), value);
            }
            if let Some((field, value)) = extra {
                body.insert(field.to_string(), value);
            }
            Value::Object(body)
        })
        .boxed()
}

fn json_body() -> BoxedStrategy<Value> {
    prop_oneof![
        1 => json_value(),
        2 => prop::collection::btree_map(key(), json_value(), 0..6)
            .prop_map(|map| Value::Object(map.into_iter().collect())),
        2 => near_miss(),
    ]
    .boxed()
}

#[test]
fn arbitrary_bodies_never_get_a_server_error() {
    let _serial = SERIAL.blocking_lock();
    let server = TestServer::start(&[]);
    let addr = server.http_addr;
    let config = ProptestConfig {
        cases: 64,
        failure_persistence: None,
        max_shrink_iters: 64,
        ..ProptestConfig::default()
    };
    let check = |body: &[u8]| -> Result<(), TestCaseError> {
        for path in ROUTES {
            let (status, text) = http_post_bytes(addr, path, "application/json", body)
                .map_err(|e| TestCaseError::fail(format!("{path} gave no answer: {e}")))?;
            prop_assert!(
                (200..500).contains(&status),
                "{path} answered {status}: {text}"
            );
            if status >= 400 {
                let error = serde_json::from_str::<Value>(&text).ok();
                prop_assert!(
                    error.as_ref().is_some_and(|e| e["error"].is_string()),
                    "{path} answered {status} without a JSON error: {text}"
                );
            }
        }
        Ok(())
    };
    let bytes = prop::collection::vec(any::<u8>(), 0..2048);
    let run = TestRunner::new(config.clone()).run(&bytes, |body| check(body.as_slice()));
    if let Err(failure) = run {
        panic!("arbitrary bytes: {failure}");
    }
    let bodies = json_body();
    if let Err(failure) = TestRunner::new(config).run(&bodies, |value| {
        let body = serde_json::to_vec(&value).expect("a JSON value serializes");
        check(body.as_slice())
    }) {
        panic!("arbitrary JSON: {failure}");
    }
    let (status, text) = http_get(addr, "/health").expect("GET /health");
    assert_eq!(status, 200, "{text}");
    assert!(is_running(server.pid()), "the supervisor is still up");
}

/// Sends its bytes as the message, unchanged, and takes the answer's bytes as they are:
/// a client that speaks gRPC but not protobuf.
#[derive(Debug, Clone, Default)]
struct RawCodec;

struct RawBytes;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawBytes;
    type Decoder = RawBytes;

    fn encoder(&mut self) -> RawBytes {
        RawBytes
    }

    fn decoder(&mut self) -> RawBytes {
        RawBytes
    }
}

impl tonic::codec::Encoder for RawBytes {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Vec<u8>,
        buf: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        buf.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawBytes {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        buf: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        use bytes::Buf;
        Ok(Some(buf.copy_to_bytes(buf.remaining()).to_vec()))
    }
}

/// Protobuf-like bytes: fields 1 to 5 with any wire type and arbitrary contents, so that
/// many inputs get past the first byte of the decoder.
fn protobuf_like() -> BoxedStrategy<Vec<u8>> {
    let field = (1u8..6, 0u8..6, prop::collection::vec(any::<u8>(), 0..24)).prop_map(
        |(number, wire, mut rest)| {
            let mut bytes = vec![(number << 3) | wire];
            if wire == 2 {
                // A length that may or may not match what follows.
                bytes.push(rest.len().min(127) as u8 ^ (rest.first().copied().unwrap_or(0) & 1));
            }
            bytes.append(&mut rest);
            bytes
        },
    );
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..512),
        prop::collection::vec(field, 0..8).prop_map(|fields| fields.concat()),
    ]
    .boxed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arbitrary_messages_never_get_a_server_error_over_grpc() {
    let _serial = SERIAL.lock().await;
    let server = TestServer::start(&[]);
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", server.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut runner = TestRunner::new(ProptestConfig::with_cases(96));
    let mut seen = std::collections::BTreeMap::new();
    for method in ["Rerank", "Infer"] {
        let path: tonic::codegen::http::uri::PathAndQuery =
            format!("/crossenc.v1.CrossEncoder/{method}")
                .parse()
                .unwrap();
        let cases = (0..96)
            .map(|_| protobuf_like().new_tree(&mut runner).unwrap().current())
            .collect::<Vec<_>>();
        for bytes in cases {
            let mut grpc = tonic::client::Grpc::new(channel.clone());
            grpc.ready().await.unwrap();
            let mut request = tonic::Request::new(bytes.clone());
            request.set_timeout(Duration::from_secs(30));
            let code = match grpc.unary(request, path.clone(), RawCodec).await {
                Ok(_) => Code::Ok,
                Err(status) => status.code(),
            };
            *seen.entry(format!("{code:?}")).or_insert(0) += 1;
            assert!(
                matches!(
                    code,
                    Code::Ok | Code::InvalidArgument | Code::ResourceExhausted
                ),
                "{method} of {bytes:?} answered {code:?}: a client's mistake is no server error"
            );
        }
    }
    println!("answers to arbitrary gRPC messages: {seen:?}");
    assert!(seen.contains_key("InvalidArgument"), "{seen:?}");
    assert!(is_running(server.pid()), "the supervisor is still up");
}
