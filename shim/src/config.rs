//! hull's configuration file: one TOML file, `/etc/hull/config.toml` unless a path is named.
//!
//! Who names another path, first match wins:
//! 1. the `ConfigPath` of containerd's runtime options (`runtimeoptions.v1.Options`: the CRI
//!    runtime's `options` table, or `ctr run --runtime-config-path`), see [`config_path_of`];
//! 2. the `HULL_CONFIG` environment variable of the shim (and of `hull check`).
//!
//! A named file must exist. The default file may be absent: hull then runs with the defaults
//! below. Unknown keys and invalid values are errors that name the file, the key and the
//! value, so a typo never silently falls back to a default. `HULL_KERNEL` and `HULL_INITRD`
//! override the guest image paths (for development and tests).
//!
//! ```toml
//! # Hypervisor backend: "auto" (default), "qemu" or "hull-vmm".
//! backend = "auto"
//! # QEMU accelerator: "auto" (default: kvm where KVM runs guest kernels natively, else tcg),
//! # "kvm" or "tcg".
//! accelerator = "auto"
//! # Log level of the shim and the guest agent: error, warn, info (default), debug, trace.
//! log_level = "info"
//!
//! [guest]
//! kernel = "/usr/local/share/hull/vmlinux"
//! initrd = "/usr/local/share/hull/initramfs.cpio"
//! vcpus = 1            # 1..=64
//! memory_mib = 256     # at least 64
//! kernel_params = ""   # appended to hull's guest kernel command line
//! boot_timeout_seconds = 30
//! ```
//!
//! and, top-level (before `[guest]`):
//!
//! ```toml
//! # Each pod's hypervisor (and QEMU's vsock daemon) runs as a uid/gid of its own from this
//! # range once it has opened what it needs; "" keeps them root. Default: 0x70000000 + 64 Ki,
//! # outside the ranges systemd and subuid allocations use.
//! jail_ids = "1879048192-1879113727"
//! ```
//!
//! This module parses and validates; it does not probe the host (that is [`crate::check`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

use crate::backend::jail::JailRange;
use crate::backend::qemu::Accel;
use crate::check::BackendRequest;
use crate::image::GuestImage;
use crate::vm::{VmConfig, MIN_MEMORY_MIB};

/// The file read when nobody names another.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/hull/config.toml";

/// The environment variable that names the file.
pub const CONFIG_ENV: &str = "HULL_CONFIG";

/// The most vCPUs a guest may have.
pub const MAX_VCPUS: u32 = 64;

/// Errors of loading the configuration.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("hull config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has an unknown key or a value of the wrong type.
    #[error("hull config {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (it names the key, line and column).
        message: String,
    },
    /// A value is of the right type but not allowed.
    #[error("hull config {path}: {key} = {value}: {reason}")]
    Invalid {
        /// The file (or `(defaults)`).
        path: PathBuf,
        /// The key.
        key: &'static str,
        /// The value as written.
        value: String,
        /// What is allowed.
        reason: String,
    },
    /// containerd's runtime options could not be decoded.
    #[error("runtime options ({type_url}): {message}")]
    Options {
        /// The options' type URL.
        type_url: String,
        /// What is wrong.
        message: String,
    },
}

/// Which hypervisor backend the configuration asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// The best this host supports.
    Auto,
    /// QEMU.
    Qemu,
    /// hull's own VMM.
    HullVmm,
}

/// The accelerator the configuration asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accelerator {
    /// KVM where it runs guest kernels natively, else TCG.
    Auto,
    /// KVM.
    Kvm,
    /// QEMU's TCG.
    Tcg,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    backend: Option<Backend>,
    accelerator: Option<Accelerator>,
    log_level: Option<String>,
    jail_ids: Option<String>,
    #[serde(default)]
    guest: RawGuest,
}

/// The ids pods' hypervisor processes run as unless the file says otherwise.
pub const DEFAULT_JAIL_IDS: &str = "1879048192-1879113727";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGuest {
    kernel: Option<PathBuf>,
    initrd: Option<PathBuf>,
    vcpus: Option<i64>,
    memory_mib: Option<i64>,
    kernel_params: Option<String>,
    boot_timeout_seconds: Option<i64>,
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Where it came from (`None`: the default file was absent, all defaults).
    pub source: Option<PathBuf>,
    /// The backend asked for.
    pub backend: Backend,
    /// The accelerator asked for.
    pub accelerator: Accelerator,
    /// Log level of the shim and the agent.
    pub log_level: log::LevelFilter,
    /// The guest image.
    pub image: GuestImage,
    /// vCPUs per VM.
    pub vcpus: u32,
    /// Memory per VM in MiB.
    pub memory_mib: u32,
    /// Extra guest kernel parameters.
    pub kernel_params: String,
    /// Launch → agent ready deadline.
    pub boot_timeout: Duration,
    /// The ids pods' hypervisor processes run as (`None`: root, the shim's own).
    pub jail_ids: Option<JailRange>,
}

impl Config {
    /// Loads the file `explicit` names, else the one `HULL_CONFIG` names, else the default
    /// file if it exists, else the defaults; then applies `HULL_KERNEL`/`HULL_INITRD`.
    pub fn load(explicit: Option<&Path>) -> Result<Config, ConfigError> {
        let env_path = std::env::var_os(CONFIG_ENV)
            .filter(|p| !p.is_empty())
            .map(PathBuf::from);
        let mut cfg = match explicit.map(Path::to_path_buf).or(env_path) {
            Some(path) => Self::from_file(&path)?,
            None => {
                let path = Path::new(DEFAULT_CONFIG_PATH);
                if path.exists() {
                    Self::from_file(path)?
                } else {
                    Self::parse("", None)?
                }
            }
        };
        if let Some(k) = std::env::var_os("HULL_KERNEL").filter(|v| !v.is_empty()) {
            cfg.image.kernel = k.into();
        }
        if let Some(i) = std::env::var_os("HULL_INITRD").filter(|v| !v.is_empty()) {
            cfg.image.initrd = i.into();
        }
        Ok(cfg)
    }

    /// Reads and validates one file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, Some(path))
    }

    /// Parses and validates `text`, which came from `source`.
    pub fn parse(text: &str, source: Option<&Path>) -> Result<Config, ConfigError> {
        let path = source
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("(defaults)"));
        let raw: RawFile = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.clone(),
            message: match e.span() {
                Some(span) => {
                    let before = &text[..span.start.min(text.len())];
                    let line = before.matches('\n').count() + 1;
                    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                    let source_line = text.lines().nth(line - 1).unwrap_or("").trim();
                    format!(
                        "line {line}, column {column} (`{source_line}`): {}",
                        e.message()
                    )
                }
                None => e.message().to_string(),
            },
        })?;
        let invalid = |key: &'static str, value: String, reason: String| ConfigError::Invalid {
            path: path.clone(),
            key,
            value,
            reason,
        };
        let log_level = match raw.log_level {
            None => log::LevelFilter::Info,
            Some(l) => l.parse().map_err(|_| {
                invalid(
                    "log_level",
                    format!("{l:?}"),
                    "expected one of off, error, warn, info, debug, trace".into(),
                )
            })?,
        };
        let g = raw.guest;
        let vcpus = match g.vcpus {
            None => 1,
            Some(v) => u32::try_from(v)
                .ok()
                .filter(|v| (1..=MAX_VCPUS).contains(v))
                .ok_or_else(|| {
                    invalid(
                        "guest.vcpus",
                        v.to_string(),
                        format!("must be in 1..={MAX_VCPUS}"),
                    )
                })?,
        };
        let memory_mib = match g.memory_mib {
            None => 256,
            Some(m) => u32::try_from(m)
                .ok()
                .filter(|m| *m >= MIN_MEMORY_MIB)
                .ok_or_else(|| {
                    invalid(
                        "guest.memory_mib",
                        m.to_string(),
                        format!("must be at least {MIN_MEMORY_MIB}"),
                    )
                })?,
        };
        let boot_timeout = match g.boot_timeout_seconds {
            None => Duration::from_secs(30),
            Some(s) if (1..=3600).contains(&s) => Duration::from_secs(s.unsigned_abs()),
            Some(s) => {
                return Err(invalid(
                    "guest.boot_timeout_seconds",
                    s.to_string(),
                    "must be in 1..=3600".into(),
                ))
            }
        };
        let kernel_params = g.kernel_params.unwrap_or_default();
        if kernel_params.contains(['\n', '\0']) {
            return Err(invalid(
                "guest.kernel_params",
                format!("{kernel_params:?}"),
                "must be one line".into(),
            ));
        }
        let jail_ids = match raw.jail_ids.as_deref().unwrap_or(DEFAULT_JAIL_IDS) {
            "" => None,
            r => Some(
                JailRange::parse(r)
                    .map_err(|e| invalid("jail_ids", format!("{r:?}"), e.to_string()))?,
            ),
        };
        let default_image = GuestImage::installed();
        let image = GuestImage {
            kernel: g.kernel.unwrap_or(default_image.kernel),
            initrd: g.initrd.unwrap_or(default_image.initrd),
        };
        for (key, p) in [
            ("guest.kernel", &image.kernel),
            ("guest.initrd", &image.initrd),
        ] {
            if !p.is_absolute() {
                return Err(invalid(
                    key,
                    format!("{:?}", p.display().to_string()),
                    "must be an absolute path".into(),
                ));
            }
        }
        Ok(Config {
            source: source.map(Path::to_path_buf),
            backend: raw.backend.unwrap_or(Backend::Auto),
            accelerator: raw.accelerator.unwrap_or(Accelerator::Auto),
            log_level,
            image,
            vcpus,
            memory_mib,
            kernel_params,
            boot_timeout,
            jail_ids,
        })
    }

    /// What `hull check` and the shim ask the backend chooser for.
    pub fn backend_request(&self) -> BackendRequest {
        let accel = match self.accelerator {
            Accelerator::Auto => None,
            Accelerator::Kvm => Some(Accel::Kvm),
            Accelerator::Tcg => Some(Accel::Tcg),
        };
        match self.backend {
            Backend::Auto if accel.is_none() => BackendRequest::Auto,
            Backend::Auto | Backend::Qemu => BackendRequest::Qemu(accel),
            Backend::HullVmm => BackendRequest::HullVmm,
        }
    }

    /// The VM configuration for pods.
    pub fn vm_config(&self) -> VmConfig {
        let mut c = VmConfig::new(self.image.kernel.clone(), self.image.initrd.clone());
        c.vcpus = self.vcpus;
        c.memory_mib = self.memory_mib;
        c.boot_timeout = self.boot_timeout;
        let level = self.log_level.to_string().to_lowercase();
        c.extra_cmdline = format!("hull_log={level} {}", self.kernel_params)
            .trim()
            .to_string();
        c
    }
}

/// containerd's type URL of `runtimeoptions.v1.Options` (containerd/pkg/runtimeoptions/v1).
pub const RUNTIME_OPTIONS_TYPE: &str = "runtimeoptions.v1.Options";

/// The `ConfigPath` of containerd's runtime options, if they are `runtimeoptions.v1.Options`
/// and name one. Other option types (runc's) carry no path for us and yield `None`.
///
/// Decoded by hand: the message is three string fields (`type_url` = 1, `config_path` = 2,
/// `config_body` = 3) and no crate we use ships its generated type.
pub fn config_path_of(type_url: &str, value: &[u8]) -> Result<Option<PathBuf>, ConfigError> {
    if !type_url
        .trim_start_matches('/')
        .ends_with(RUNTIME_OPTIONS_TYPE)
    {
        return Ok(None);
    }
    let bad = |message: String| ConfigError::Options {
        type_url: type_url.to_string(),
        message,
    };
    let mut input = containerd_shim::protos::protobuf::CodedInputStream::from_bytes(value);
    let mut path = None;
    while let Some(tag) = input
        .read_raw_tag_or_eof()
        .map_err(|e| bad(e.to_string()))?
    {
        let (field, wire) = (tag >> 3, tag & 7);
        match (field, wire) {
            (2, 2) => {
                let p = input.read_string().map_err(|e| bad(e.to_string()))?;
                path = (!p.is_empty()).then(|| PathBuf::from(p));
            }
            (_, w) => {
                let wire_type = containerd_shim::protos::protobuf::rt::WireType::new(w)
                    .ok_or_else(|| bad(format!("field {field} has wire type {w}")))?;
                input
                    .skip_field(wire_type)
                    .map_err(|e| bad(e.to_string()))?;
            }
        }
    }
    if let Some(p) = &path {
        if !p.is_absolute() {
            return Err(bad(format!("ConfigPath {:?} is not absolute", p.display())));
        }
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_means_the_defaults() {
        let c = Config::parse("", None).unwrap();
        assert_eq!(c.backend, Backend::Auto);
        assert_eq!(c.backend_request(), BackendRequest::Auto);
        assert_eq!((c.vcpus, c.memory_mib), (1, 256));
        assert_eq!(c.image, GuestImage::installed());
        assert_eq!(c.vm_config().extra_cmdline, "hull_log=info");
    }

    #[test]
    fn the_shipped_example_is_valid_and_means_the_defaults() {
        let text = include_str!("../../config/config.toml");
        let c = Config::parse(text, None).unwrap();
        assert_eq!(c, Config::parse("", None).unwrap());
        // Uncommenting every key keeps it valid.
        let uncommented: String = text
            .lines()
            .map(|l| {
                l.strip_prefix('#')
                    .filter(|r| r.contains(" = "))
                    .unwrap_or(l)
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let u = Config::parse(&uncommented, None).unwrap();
        assert_eq!(u.vm_config().cmdline(), c.vm_config().cmdline());
        assert_eq!(
            (u.vcpus, u.memory_mib, u.boot_timeout),
            (1, 256, c.boot_timeout)
        );
    }

    #[test]
    fn every_key_is_applied() {
        let c = Config::parse(
            r#"
backend = "qemu"
accelerator = "tcg"
log_level = "debug"
jail_ids = "70000-70009"
[guest]
kernel = "/k"
initrd = "/i"
vcpus = 2
memory_mib = 512
kernel_params = "quiet"
boot_timeout_seconds = 60
"#,
            Some(Path::new("/etc/hull/config.toml")),
        )
        .unwrap();
        assert_eq!(c.backend_request(), BackendRequest::Qemu(Some(Accel::Tcg)));
        assert_eq!(c.log_level, log::LevelFilter::Debug);
        let vm = c.vm_config();
        assert_eq!((vm.vcpus, vm.memory_mib), (2, 512));
        assert_eq!(
            (vm.kernel.as_path(), vm.initrd.as_path()),
            (Path::new("/k"), Path::new("/i"))
        );
        assert_eq!(vm.extra_cmdline, "hull_log=debug quiet");
        assert_eq!(vm.boot_timeout, Duration::from_secs(60));
        assert_eq!(
            c.jail_ids,
            Some(JailRange {
                first: 70000,
                count: 10
            })
        );
        let h = Config::parse("backend = \"hull-vmm\"", None).unwrap();
        assert_eq!(h.backend_request(), BackendRequest::HullVmm);
        // Confined by default; "" turns it off.
        assert_eq!(
            h.jail_ids,
            Some(JailRange::parse(DEFAULT_JAIL_IDS).unwrap())
        );
        let off = Config::parse("jail_ids = \"\"", None).unwrap();
        assert_eq!(off.jail_ids, None);
    }

    fn err(text: &str) -> String {
        Config::parse(text, Some(Path::new("/x.toml")))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn errors_name_the_file_the_key_and_the_value() {
        let e = err("[guest]\nmemory = 512\n");
        assert!(
            e.starts_with(
                "hull config /x.toml: line 2, column 1 (`memory = 512`): unknown field `memory`"
            ),
            "{e}"
        );
        let e = err("backend = \"firecracker\"\n");
        assert!(e.contains("/x.toml") && e.contains("firecracker"), "{e}");
        let e = err("[guest]\nvcpus = 0\n");
        assert!(e.contains("guest.vcpus = 0"), "{e}");
        let e = err("[guest]\nvcpus = 65\n");
        assert!(e.contains("guest.vcpus = 65"), "{e}");
        let e = err("[guest]\nmemory_mib = -1\n");
        assert!(e.contains("guest.memory_mib = -1"), "{e}");
        let e = err("log_level = \"loud\"\n");
        assert!(e.contains("log_level = \"loud\""), "{e}");
        let e = err("[guest]\nkernel = \"vmlinux\"\n");
        assert!(e.contains("guest.kernel") && e.contains("absolute"), "{e}");
        let e = err("[guest]\nkernel_params = \"a\\nb\"\n");
        assert!(e.contains("guest.kernel_params"), "{e}");
        let e = err("[guest]\nvcpus = \"two\"\n");
        assert!(e.contains("vcpus"), "{e}");
        let e = err("this is not toml");
        assert!(e.contains("/x.toml"), "{e}");
        let e = err("jail_ids = \"0-100\"\n");
        assert!(e.contains("jail_ids = \"0-100\""), "{e}");
    }

    #[test]
    fn a_named_file_must_exist() {
        let e = Config::from_file(Path::new("/nonexistent/hull.toml")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/hull.toml"), "{e}");
    }

    fn options(fields: &[(u32, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (field, s) in fields {
            out.push(((field << 3) | 2) as u8);
            out.push(s.len() as u8);
            out.extend_from_slice(s.as_bytes());
        }
        out
    }

    #[test]
    fn runtime_options_yield_the_config_path() {
        let v = options(&[(1, "io.containerd.hull.v2"), (2, "/etc/hull/pod.toml")]);
        let p = config_path_of("runtimeoptions.v1.Options", &v).unwrap();
        assert_eq!(p, Some(PathBuf::from("/etc/hull/pod.toml")));
        let v = options(&[(3, "body"), (2, "/a.toml")]);
        let p = config_path_of("type.googleapis.com/runtimeoptions.v1.Options", &v).unwrap();
        assert_eq!(p, Some(PathBuf::from("/a.toml")));
        assert_eq!(config_path_of(RUNTIME_OPTIONS_TYPE, &[]).unwrap(), None);
        // runc's options are not ours.
        assert_eq!(
            config_path_of("containerd.runc.v1.Options", b"\x12\x02/x").unwrap(),
            None
        );
    }

    #[test]
    fn malformed_runtime_options_are_errors() {
        // Truncated string.
        assert!(config_path_of(RUNTIME_OPTIONS_TYPE, b"\x12\x09/a").is_err());
        // Wire type 7 does not exist.
        assert!(config_path_of(RUNTIME_OPTIONS_TYPE, b"\x0f").is_err());
        let v = options(&[(2, "relative.toml")]);
        assert!(config_path_of(RUNTIME_OPTIONS_TYPE, &v)
            .unwrap_err()
            .to_string()
            .contains("relative.toml"));
    }
}
