//! Bad requests, health and reflection on the gRPC port.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_with_what_was_wrong() {
    let server = TestServer::start(&["--max-client-batch-size", "8"]);
    let mut client = server.client().await;
    let rerank = |query: &str, documents: usize, top_n: Option<u32>| RerankRequest {
        query: query.into(),
        documents: vec!["a document".into(); documents],
        top_n,
        ..Default::default()
    };
    let cases = [
        (rerank("", 2, None), "query is empty"),
        (rerank("q", 0, None), "documents is empty"),
        (
            rerank("q", 9, None),
            "documents has 9 entries; the limit (max_client_batch_size) is 8",
        ),
        (rerank("q", 2, Some(0)), "top_n is 0"),
    ];
    for (request, message) in cases {
        let status = client.rerank(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(
            status.message().starts_with(message),
            "{}",
            status.message()
        );
    }
    let status = client.infer(InferRequest::default()).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().starts_with("pairs is empty"));
    let too_many = InferRequest {
        pairs: vec![
            Pair {
                query: "q".into(),
                document: "d".into()
            };
            9
        ],
        raw_scores: false,
        instruction: None,
        ..Default::default()
    };
    let status = client.infer(too_many).await.unwrap_err();
    assert!(
        status.message().contains("max_client_batch_size) is 8"),
        "{}",
        status.message()
    );
    // The server is still fine after all of that.
    let ok = client
        .rerank(rerank("q", 8, None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.results.len(), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_answer_on_the_grpc_port() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let server = TestServer::start(&[]);
    let endpoint = format!("http://{}", server.grpc_addr);
    let channel = tonic::transport::Endpoint::from_shared(endpoint)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel.clone());
    let status = health
        .check(HealthCheckRequest {
            service: "crossenc.v1.CrossEncoder".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);

    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses
        .message()
        .await
        .unwrap()
        .expect("a reflection answer");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer {response:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"crossenc.v1.CrossEncoder".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_string()),
        "{names:?}"
    );

    assert_eq!(http_get(server.http_addr, "/health").unwrap().0, 200);
}
