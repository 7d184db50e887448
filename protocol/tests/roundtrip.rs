//! Round trip of every RPC over a unix socket: the generated server and client bindings,
//! ttrpc framing and message encoding agree with each other.

use std::sync::Arc;

use hull_protocol::agent::{check_response::ServingStatus, *};
use hull_protocol::agent_ttrpc::{create_agent, Agent, AgentClient};
use hull_protocol::ttrpc::{self, r#async::TtrpcContext};

struct Fake;

#[async_trait::async_trait]
impl Agent for Fake {
    async fn check(&self, _: &TtrpcContext, _: CheckRequest) -> ttrpc::Result<CheckResponse> {
        Ok(CheckResponse {
            status: ServingStatus::SERVING.into(),
            ..Default::default()
        })
    }
    async fn version(&self, _: &TtrpcContext, _: VersionRequest) -> ttrpc::Result<VersionResponse> {
        Ok(VersionResponse {
            agent_version: "9.9.9".into(),
            protocol_major: hull_protocol::PROTOCOL_MAJOR,
            kernel_release: "6.1.0-test".into(),
            uptime_seconds: 1.5,
            ..Default::default()
        })
    }
    async fn shutdown(
        &self,
        _: &TtrpcContext,
        _: ShutdownRequest,
    ) -> ttrpc::Result<ShutdownResponse> {
        Err(ttrpc::Error::RpcStatus(ttrpc::get_status(
            ttrpc::Code::FAILED_PRECONDITION,
            "not in this test",
        )))
    }
}

#[tokio::test]
async fn every_rpc_round_trips_over_a_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.sock");
    let service = create_agent(Arc::new(Fake));
    let mut server = ttrpc::r#async::Server::new()
        .bind(&format!("unix://{}", path.display()))
        .unwrap()
        .register_service(service);
    server.start().await.unwrap();

    let client = AgentClient::new(
        ttrpc::r#async::Client::connect(&format!("unix://{}", path.display()))
            .await
            .unwrap(),
    );
    let ctx = ttrpc::context::with_timeout(5_000_000_000);
    let check = client
        .check(ctx.clone(), &CheckRequest::new())
        .await
        .unwrap();
    assert_eq!(check.status.enum_value(), Ok(ServingStatus::SERVING));

    let v = client
        .version(ctx.clone(), &VersionRequest::new())
        .await
        .unwrap();
    assert_eq!(v.agent_version, "9.9.9");
    assert_eq!(v.kernel_release, "6.1.0-test");
    assert_eq!(v.protocol_major, 1);
    assert_eq!(v.uptime_seconds, 1.5);

    // A server-side error keeps its code across the wire.
    match client.shutdown(ctx, &ShutdownRequest::new()).await {
        Err(ttrpc::Error::RpcStatus(s)) => {
            assert_eq!(s.code(), ttrpc::Code::FAILED_PRECONDITION);
            assert_eq!(s.message(), "not in this test");
        }
        other => panic!("expected FAILED_PRECONDITION, got {other:?}"),
    }
    server.shutdown().await.unwrap();
}
