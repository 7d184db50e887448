//! Generates the protobuf messages and async ttrpc bindings for `protos/*.proto` into OUT_DIR.
//! The generated code is never committed.

use ttrpc_codegen::{Codegen, Customize, ProtobufCustomize};

fn main() {
    let out_dir = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    let protos = ["protos/agent.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    Codegen::new()
        .out_dir(&out_dir)
        .inputs(protos)
        .include("protos")
        .rust_protobuf()
        .customize(Customize {
            async_all: true,
            ..Default::default()
        })
        .rust_protobuf_customize(ProtobufCustomize::default().gen_mod_rs(false))
        .run()
        .expect("generating the agent protocol from protos/agent.proto");

    // The generated files start with inner attributes (`#![allow(...)]`), which `include!`
    // cannot take; lib.rs puts equivalent `#[allow]`s on the modules instead.
    for name in ["agent.rs", "agent_ttrpc.rs"] {
        let path = std::path::Path::new(&out_dir).join(name);
        let code = std::fs::read_to_string(&path).expect("reading generated code");
        let kept: Vec<&str> = code
            .lines()
            .filter(|l| !l.starts_with("#![") && !l.starts_with("//!"))
            .collect();
        std::fs::write(&path, kept.join("\n")).expect("writing generated code");
    }
}
