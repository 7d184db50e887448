//! Containers through the real hull-agent binary in host mode (the same code that runs in
//! the guest), with youki's libcontainer creating real namespaces and cgroups. Needs root.

mod support;

use hull_protocol::agent::*;
use support::*;

async fn create(agent: &HostAgent, id: &str, args: &[&str], streams: (&str, &str, &str)) -> u32 {
    let rootfs = agent.rootfs(id);
    let r = agent
        .client
        .create_container(
            ctx(),
            &CreateContainerRequest {
                container_id: id.into(),
                spec_json: spec_json(&spec(args)),
                rootfs,
                stdio: stdio(streams.0, streams.1, streams.2),
                ..Default::default()
            },
        )
        .await
        .unwrap_or_else(|e| panic!("create {id}: {e:?}"));
    r.pid
}

/// The parent pid of `pid`, from /proc (None once it is gone).
fn parent_of(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .and_then(|v| v.trim().parse().ok())
}

/// The processes whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| parent_of(p) == Some(pid))
        .collect()
}

fn req(id: &str) -> ContainerRequest {
    ContainerRequest {
        container_id: id.into(),
        ..Default::default()
    }
}

fn preq(id: &str, exec: &str) -> ProcessRequest {
    ProcessRequest {
        container_id: id.into(),
        exec_id: exec.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_container_runs_and_its_output_and_exit_code_come_back() {
    let agent = HostAgent::start().await;
    let out = agent.stream("c1-out").await;
    let err = agent.stream("c1-err").await;
    let pid = create(
        &agent,
        "c1",
        &["sh", "-c", "echo hello; echo oops >&2; hostname; exit 3"],
        ("", "c1-out", "c1-err"),
    )
    .await;
    assert!(pid > 1);
    // Built by a helper process (hull_agent::build), which is gone: the container's
    // process is the agent's own child now, and the agent reaps it.
    assert_eq!(
        parent_of(pid),
        Some(agent.child.id()),
        "parent of the container's init"
    );
    let helpers: Vec<u32> = children_of(agent.child.id())
        .into_iter()
        .filter(|&c| c != pid)
        .collect();
    assert!(
        helpers.is_empty(),
        "agent children besides the init: {helpers:?}"
    );
    agent
        .client
        .start_container(ctx(), &req("c1"))
        .await
        .unwrap();
    let (o, e) = tokio::join!(read_all(out), read_all(err));
    let w = agent
        .client
        .wait_process(ctx(), &preq("c1", ""))
        .await
        .unwrap();
    assert_eq!(w.exit_status, 3);
    assert_eq!(w.signal, 0);
    assert!(!w.oom_killed);
    let o = String::from_utf8(o).unwrap();
    assert!(o.starts_with("hello\n"), "{o:?}");
    assert_eq!(String::from_utf8(e).unwrap(), "oops\n");
    assert!(
        !leftover_cgroups("c1").is_empty(),
        "the container's cgroup should exist while it does"
    );
    agent
        .client
        .remove_container(ctx(), &req("c1"))
        .await
        .unwrap();
    assert!(agent.leftover_processes().is_empty());
    assert_eq!(leftover_cgroups("c1"), Vec::<std::path::PathBuf>::new());
}

#[tokio::test]
async fn stdin_is_delivered_and_closing_it_ends_the_process() {
    use tokio::io::AsyncWriteExt;
    let agent = HostAgent::start().await;
    let mut input = agent.stream("c2-in").await;
    let out = agent.stream("c2-out").await;
    create(
        &agent,
        "c2",
        &["sh", "-c", "tr a-z A-Z; echo done"],
        ("c2-in", "c2-out", ""),
    )
    .await;
    agent
        .client
        .start_container(ctx(), &req("c2"))
        .await
        .unwrap();
    input.write_all(b"shout\n").await.unwrap();
    input.shutdown().await.unwrap();
    let o = read_all(out).await;
    assert_eq!(String::from_utf8(o).unwrap(), "SHOUT\ndone\n");
    let w = agent
        .client
        .wait_process(ctx(), &preq("c2", ""))
        .await
        .unwrap();
    assert_eq!(w.exit_status, 0);
    agent
        .client
        .remove_container(ctx(), &req("c2"))
        .await
        .unwrap();
}

#[tokio::test]
async fn output_written_just_before_exit_is_complete() {
    let agent = HostAgent::start().await;
    let out = agent.stream("c3-out").await;
    // 4 MiB then exit at once: nothing may be lost.
    create(
        &agent,
        "c3",
        &["sh", "-c", "head -c 4194304 /dev/zero | tr '\\0' x; exit 0"],
        ("", "c3-out", ""),
    )
    .await;
    agent
        .client
        .start_container(ctx(), &req("c3"))
        .await
        .unwrap();
    let wait = preq("c3", "");
    let (w, o) = tokio::join!(agent.client.wait_process(ctx(), &wait), read_all(out));
    assert_eq!(w.unwrap().exit_status, 0);
    assert_eq!(o.len(), 4 * 1024 * 1024);
    assert!(o.iter().all(|&b| b == b'x'));
    agent
        .client
        .remove_container(ctx(), &req("c3"))
        .await
        .unwrap();
}

#[tokio::test]
async fn signals_exec_and_process_listing_work() {
    let agent = HostAgent::start().await;
    create(&agent, "c4", &["sleep", "1000"], ("", "", "")).await;
    agent
        .client
        .start_container(ctx(), &req("c4"))
        .await
        .unwrap();

    let out = agent.stream("c4-exec-out").await;
    let mut p = spec(&["sh", "-c", "echo from-exec; exit 7"])
        .process()
        .clone()
        .unwrap();
    p.set_cwd("/".into());
    let r = agent
        .client
        .exec_process(
            ctx(),
            &ExecProcessRequest {
                container_id: "c4".into(),
                exec_id: "e1".into(),
                process_json: serde_json::to_vec(&p).unwrap(),
                stdio: stdio("", "c4-exec-out", ""),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(r.pid > 1);
    let w = agent
        .client
        .wait_process(ctx(), &preq("c4", "e1"))
        .await
        .unwrap();
    assert_eq!(w.exit_status, 7);
    assert_eq!(
        String::from_utf8(read_all(out).await).unwrap(),
        "from-exec\n"
    );

    let pids = agent
        .client
        .list_processes(ctx(), &req("c4"))
        .await
        .unwrap()
        .pids;
    assert!(!pids.is_empty(), "the sleeping init must be listed");

    // Removing a running container is refused.
    let e = agent
        .client
        .remove_container(ctx(), &req("c4"))
        .await
        .unwrap_err();
    assert!(format!("{e:?}").contains("FAILED_PRECONDITION"), "{e:?}");

    // PID 1 of a pid namespace ignores signals it has no handler for (SIGTERM to `sleep`
    // does nothing, as with runc); SIGKILL always works.
    agent
        .client
        .signal_process(
            ctx(),
            &SignalProcessRequest {
                container_id: "c4".into(),
                signal: 9,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let w = agent
        .client
        .wait_process(ctx(), &preq("c4", ""))
        .await
        .unwrap();
    assert_eq!((w.exit_status, w.signal), (137, 9));
    agent
        .client
        .remove_container(ctx(), &req("c4"))
        .await
        .unwrap();
    assert!(agent.leftover_processes().is_empty());
}

#[tokio::test]
async fn bad_requests_get_precise_codes_and_leave_nothing() {
    let agent = HostAgent::start().await;
    let code = |e: ttrpc::Error| match e {
        ttrpc::Error::RpcStatus(s) => (s.code(), s.message().to_string()),
        other => panic!("not a status: {other:?}"),
    };
    // Unknown container.
    let (c, _) = code(
        agent
            .client
            .start_container(ctx(), &req("nope"))
            .await
            .unwrap_err(),
    );
    assert_eq!(c, ttrpc::Code::NOT_FOUND);
    // Malformed spec.
    let rootfs = agent.rootfs("bad");
    let (c, m) = code(
        agent
            .client
            .create_container(
                ctx(),
                &CreateContainerRequest {
                    container_id: "bad".into(),
                    spec_json: b"{not json".to_vec(),
                    rootfs: rootfs.clone(),
                    ..Default::default()
                },
            )
            .await
            .unwrap_err(),
    );
    assert_eq!(c, ttrpc::Code::INVALID_ARGUMENT);
    assert!(m.contains("spec_json"), "{m}");
    // A rootfs outside the share.
    let (c, m) = code(
        agent
            .client
            .create_container(
                ctx(),
                &CreateContainerRequest {
                    container_id: "bad".into(),
                    spec_json: spec_json(&spec(&["true"])),
                    rootfs: "../../etc".into(),
                    ..Default::default()
                },
            )
            .await
            .unwrap_err(),
    );
    assert_eq!(c, ttrpc::Code::INVALID_ARGUMENT);
    assert!(m.contains("rootfs"), "{m}");
    // A bad id.
    let (c, m) = code(
        agent
            .client
            .create_container(
                ctx(),
                &CreateContainerRequest {
                    container_id: "a/b".into(),
                    spec_json: spec_json(&spec(&["true"])),
                    rootfs: rootfs.clone(),
                    ..Default::default()
                },
            )
            .await
            .unwrap_err(),
    );
    assert_eq!(c, ttrpc::Code::INVALID_ARGUMENT);
    assert!(m.contains("container_id"), "{m}");
    // Duplicate id.
    create(&agent, "dup", &["true"], ("", "", "")).await;
    let (c, _) = code(
        agent
            .client
            .create_container(
                ctx(),
                &CreateContainerRequest {
                    container_id: "dup".into(),
                    spec_json: spec_json(&spec(&["true"])),
                    rootfs,
                    ..Default::default()
                },
            )
            .await
            .unwrap_err(),
    );
    assert_eq!(c, ttrpc::Code::ALREADY_EXISTS);
    // Nothing left of the failed creations: only the one real container's bundle.
    let bundles: Vec<_> = std::fs::read_dir(agent.dir.path().join("state/bundles"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(bundles, vec![std::ffi::OsString::from("dup")]);
    agent
        .client
        .start_container(ctx(), &req("dup"))
        .await
        .unwrap();
    agent
        .client
        .wait_process(ctx(), &preq("dup", ""))
        .await
        .unwrap();
    agent
        .client
        .remove_container(ctx(), &req("dup"))
        .await
        .unwrap();
    assert!(std::fs::read_dir(agent.dir.path().join("state/bundles"))
        .unwrap()
        .next()
        .is_none());
    assert!(agent.leftover_processes().is_empty());
    for id in ["bad", "dup"] {
        assert_eq!(leftover_cgroups(id), Vec::<std::path::PathBuf>::new());
    }
}

#[tokio::test]
async fn exec_with_a_terminal_gets_a_pty_that_can_be_resized() {
    let agent = HostAgent::start().await;
    let id = format!("ctty{}", std::process::id());
    create(&agent, &id, &["sleep", "1000"], ("", "", "")).await;
    agent
        .client
        .start_container(ctx(), &req(&id))
        .await
        .unwrap();

    let out = agent.stream(&format!("{id}-tty-out")).await;
    let mut p = spec(&[
        "sh",
        "-c",
        "test -t 0 && test -t 1 && echo on-a-tty; i=0; \
             while [ \"$(stty size 2>/dev/null)\" != \"33 101\" ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done; \
             stty size; exit 5",
    ])
    .process()
    .clone()
    .unwrap();
    p.set_terminal(Some(true));
    agent
        .client
        .exec_process(
            ctx(),
            &ExecProcessRequest {
                container_id: id.clone(),
                exec_id: "t1".into(),
                process_json: serde_json::to_vec(&p).unwrap(),
                stdio: stdio("", &format!("{id}-tty-out"), ""),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    agent
        .client
        .resize_tty(
            ctx(),
            &ResizeTtyRequest {
                container_id: id.clone(),
                exec_id: "t1".into(),
                rows: 33,
                cols: 101,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let w = agent
        .client
        .wait_process(ctx(), &preq(&id, "t1"))
        .await
        .unwrap();
    assert_eq!(w.exit_status, 5);
    // The pty translates \n to \r\n, as it does for runc's terminals.
    assert_eq!(
        String::from_utf8(read_all(out).await).unwrap(),
        "on-a-tty\r\n33 101\r\n"
    );

    // A terminal has no separate stderr.
    let e = agent
        .client
        .exec_process(
            ctx(),
            &ExecProcessRequest {
                container_id: id.clone(),
                exec_id: "t2".into(),
                process_json: serde_json::to_vec(&p).unwrap(),
                stdio: stdio("", "", "some-err"),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(format!("{e:?}").contains("INVALID_ARGUMENT"), "{e:?}");

    agent
        .client
        .signal_process(
            ctx(),
            &SignalProcessRequest {
                container_id: id.clone(),
                signal: 9,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    agent
        .client
        .wait_process(ctx(), &preq(&id, ""))
        .await
        .unwrap();
    agent
        .client
        .remove_container(ctx(), &req(&id))
        .await
        .unwrap();
    assert!(agent.leftover_processes().is_empty());
    assert_eq!(leftover_cgroups(&id), Vec::<std::path::PathBuf>::new());
}
