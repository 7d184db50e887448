//! Turns [`VmResources`] into a configured [`Vm`]: KVM VM, guest memory, kernel, vCPUs (and
//! on arm64 the GIC, which needs them), virtio devices (on x86_64 with their
//! `virtio_mmio.device=` command-line entries; arm64's FDT describes them), initramfs, boot
//! tables and legacy devices, in that order. Every
//! irqfd is registered after the vCPUs exist, as arm64 KVM requires.
//!
//! Every step's failure is a [`BuildError`] variant naming the step. Nothing runs guest code
//! here; [`Vm::run`] does.

use std::fs::File;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use kvm_ioctls::{IoEventAddress, Kvm, VmFd};
use linux_loader::cmdline::Cmdline;
use linux_loader::loader::load_cmdline;
use thiserror::Error;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use crate::api::ApiServer;
use crate::arch::{self, BootInfo, LegacyDevices};
use crate::config::TapSource;
use crate::config::{ConsoleOutput, VmResources};
use crate::devices::i8042::I8042;
use crate::devices::serial::{ConsoleWriter, SerialDevice};
use crate::devices::virtio::block::{device::BlockError, Block};
use crate::devices::virtio::fs::{FsError, VhostUserFs};
use crate::devices::virtio::mmio::{MmioTransport, MMIO_SIZE, REG_QUEUE_NOTIFY};
use crate::devices::virtio::net::{tap::TapError, Net, Tap};
use crate::devices::virtio::vsock::{muxer::Muxer, Vsock, GUEST_CID};
use crate::devices::virtio::{Interrupt, VirtioDevice};
use crate::devices::{Bus, BusDevice};
use crate::memory::{self, ImageFile, MemoryError};
use crate::metrics::Metrics;
use crate::vstate::{ExitSignal, Vcpu, Vm};

/// Errors of building a VM.
#[derive(Debug, Error)]
pub enum BuildError {
    /// /dev/kvm could not be opened.
    #[error("opening /dev/kvm: {0}")]
    OpenKvm(kvm_ioctls::Error),
    /// KVM_CREATE_VM failed.
    #[error("creating the KVM VM: {0}")]
    CreateVm(kvm_ioctls::Error),
    /// Architecture-specific setup failed.
    #[error(transparent)]
    Arch(#[from] arch::Error),
    /// Guest memory could not be created or registered.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// An input file could not be opened or read.
    #[error("reading the {what} {path}: {source}")]
    ReadInput {
        /// Which input.
        what: &'static str,
        /// Its path.
        path: std::path::PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The initramfs is larger than this host's address space.
    #[error("an initramfs of {size} bytes cannot be mapped on this host")]
    InitrdTooLarge {
        /// Its size.
        size: u64,
    },
    /// The initramfs could not be copied into guest memory.
    #[error("loading the initramfs into guest memory: {0}")]
    LoadInitrd(vm_memory::GuestMemoryError),
    /// The kernel command line could not be placed.
    #[error("the kernel command line: {0}")]
    Cmdline(String),
    /// The console file could not be created.
    #[error("creating the console file {path}: {source}")]
    Console {
        /// The file.
        path: std::path::PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// An eventfd could not be created.
    #[error("creating an eventfd: {0}")]
    EventFd(std::io::Error),
    /// The vsock host socket could not be bound.
    #[error("binding the vsock socket {path}: {source}")]
    VsockSocket {
        /// The socket path.
        path: std::path::PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The control socket could not be bound.
    #[error("binding the control socket {path}: {source}")]
    ApiSocket {
        /// The socket path.
        path: std::path::PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The vhost-user backend of a virtio-fs share could not be reached or refused us.
    #[error("virtio-fs share {tag}: {source}")]
    Fs {
        /// The share's tag.
        tag: String,
        /// The underlying error.
        source: FsError,
    },
    /// A virtio device could not be wired to KVM (irqfd, ioeventfd) or the bus.
    #[error("setting up the virtio {what} device: {message}")]
    VirtioDevice {
        /// Which device.
        what: &'static str,
        /// What failed.
        message: String,
    },
    /// A virtio-blk image could not be opened.
    #[error(transparent)]
    Block(#[from] BlockError),
    /// The virtio-net tap could not be opened or adopted.
    #[error(transparent)]
    Tap(#[from] TapError),
    /// KVM_CREATE_VCPU failed.
    #[error("creating vCPU {index}: {source}")]
    CreateVcpu {
        /// The vCPU.
        index: u8,
        /// The underlying error.
        source: kvm_ioctls::Error,
    },
}

fn console_writer(out: &ConsoleOutput) -> Result<ConsoleWriter, BuildError> {
    Ok(match out {
        ConsoleOutput::Stdout => Box::new(std::io::stdout()),
        ConsoleOutput::File(path) => {
            let f = File::create(path).map_err(|source| BuildError::Console {
                path: path.clone(),
                source,
            })?;
            // Unbuffered: a crash or kill must not lose the guest's last words.
            Box::new(f) as Box<dyn Write + Send>
        }
    })
}

fn open(what: &'static str, path: &std::path::Path) -> Result<File, BuildError> {
    File::open(path).map_err(|source| BuildError::ReadInput {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// A wired virtio device: its MMIO base, its interrupt line, its transport.
type WiredVirtio = (u64, u32, Arc<Mutex<dyn BusDevice>>);

/// Wires virtio device number `index` to KVM: its interrupt as an irqfd, its queue
/// notifications as ioeventfds on QueueNotify (one per queue, matched on the queue index),
/// and declares it on the kernel command line where the architecture does so
/// (`arch::VIRTIO_ON_CMDLINE`; otherwise the boot tables do). Returns its MMIO base, its
/// interrupt line and its transport.
fn add_virtio_device(
    vm_fd: &VmFd,
    mem: &GuestMemoryMmap,
    cmdline: &mut Cmdline,
    index: u32,
    what: &'static str,
    dev: Box<dyn VirtioDevice>,
) -> Result<WiredVirtio, BuildError> {
    let err = |message: String| BuildError::VirtioDevice { what, message };
    if index >= arch::VIRTIO_MAX_DEVICES {
        return Err(err("no free interrupt line".into()));
    }
    let base = arch::VIRTIO_MMIO_BASE + u64::from(index) * MMIO_SIZE;
    let irq = arch::VIRTIO_IRQ_BASE + index;
    let irqfd =
        EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(BuildError::EventFd)?;
    vm_fd
        .register_irqfd(&irqfd, irq)
        .map_err(|e| err(format!("irqfd for IRQ {irq}: {e}")))?;
    for (queue, evt) in dev.queue_events().iter().enumerate() {
        vm_fd
            .register_ioevent(
                evt,
                &IoEventAddress::Mmio(base + REG_QUEUE_NOTIFY),
                queue as u32,
            )
            .map_err(|e| err(format!("ioeventfd for queue {queue}: {e}")))?;
    }
    if arch::VIRTIO_ON_CMDLINE {
        cmdline
            .add_virtio_mmio_device(MMIO_SIZE, GuestAddress(base), irq, None)
            .map_err(|e| BuildError::Cmdline(e.to_string()))?;
    }
    let interrupt = Arc::new(Interrupt::new(irqfd));
    let transport = MmioTransport::new(dev, mem.clone(), interrupt);
    Ok((base, irq, Arc::new(Mutex::new(transport))))
}

/// Builds a VM from `res`. `started` is when hull-vmm started (for timing logs).
pub fn build(res: &VmResources, started: Instant) -> Result<Vm, BuildError> {
    // An inherited tap fd is adopted before this process opens anything else, so its
    // number cannot have been reused by one of our own files.
    let tap = match res.net.as_ref().map(|n| &n.tap) {
        None => None,
        Some(TapSource::Name(name)) => Some(Tap::open(name)?),
        // SAFETY: by TapSource::Fd's contract the fd is this process's alone to hand over
        // (in hull-vmm: inherited, checked open and above stdio by config, and adopted here
        // before hull-vmm opens any file, so its number cannot be one of ours).
        Some(TapSource::Fd(fd)) => Some(unsafe { Tap::from_raw_fd(*fd) }?),
    };
    let kvm = Kvm::new().map_err(BuildError::OpenKvm)?;
    let vm_fd = kvm.create_vm().map_err(BuildError::CreateVm)?;
    arch::setup_vm(&vm_fd)?;

    let ram = memory::create(&arch::ram_regions(res.memory_bytes)?)?;
    memory::register(&vm_fd, &ram.memory)?;
    let mem = &ram.memory;

    let kernel = arch::load_kernel(mem, &mut ImageFile::new(open("kernel", &res.kernel)?, &ram))?;

    // vCPUs before any irqfd: arm64 KVM sizes the GIC from the vCPUs, creates it only once
    // they all exist ([`arch::finish_vcpus`]) and refuses irqfds until then. x86_64 has its
    // irqchip since `setup_vm` and does not mind the order.
    let template = arch::vcpu_template(&kvm, &vm_fd)?;
    let mut vcpu_fds = Vec::with_capacity(usize::from(res.vcpus));
    for index in 0..res.vcpus {
        let fd = vm_fd
            .create_vcpu(u64::from(index))
            .map_err(|source| BuildError::CreateVcpu { index, source })?;
        arch::configure_vcpu(&template, &fd, index, res.vcpus, &kernel, mem)?;
        vcpu_fds.push(fd);
    }
    arch::finish_vcpus(&vm_fd, res.vcpus)?;

    let mut cmdline =
        Cmdline::new(arch::CMDLINE_MAX_SIZE).map_err(|e| BuildError::Cmdline(e.to_string()))?;
    cmdline
        .insert_str(&res.cmdline)
        .map_err(|e| BuildError::Cmdline(e.to_string()))?;
    let mut virtio: Vec<WiredVirtio> = Vec::new();
    let mut metrics = Metrics::default();
    if let Some(path) = &res.vsock_uds {
        let muxer = Muxer::new(path, GUEST_CID).map_err(|source| BuildError::VsockSocket {
            path: path.clone(),
            source,
        })?;
        let dev = Vsock::new(GUEST_CID, muxer).map_err(BuildError::EventFd)?;
        metrics.vsock = Some(dev.metrics());
        virtio.push(add_virtio_device(
            &vm_fd,
            mem,
            &mut cmdline,
            virtio.len() as u32,
            "vsock",
            Box::new(dev),
        )?);
    }
    for (i, disk) in res.block.iter().enumerate() {
        let dev = Block::open(&disk.path, disk.read_only, &format!("hull-blk{i}"))?;
        metrics.block.push(dev.metrics());
        virtio.push(add_virtio_device(
            &vm_fd,
            mem,
            &mut cmdline,
            virtio.len() as u32,
            "block",
            Box::new(dev),
        )?);
    }
    if let (Some(tap), Some(net)) = (tap, &res.net) {
        log::debug!("virtio-net on tap {}", tap.name());
        let dev = Net::new(tap.into_file(), net.mac).map_err(BuildError::EventFd)?;
        metrics.net = Some(dev.metrics());
        virtio.push(add_virtio_device(
            &vm_fd,
            mem,
            &mut cmdline,
            virtio.len() as u32,
            "net",
            Box::new(dev),
        )?);
    }
    for share in &res.fs {
        let dev =
            VhostUserFs::connect(&share.tag, &share.socket).map_err(|source| BuildError::Fs {
                tag: share.tag.clone(),
                source,
            })?;
        virtio.push(add_virtio_device(
            &vm_fd,
            mem,
            &mut cmdline,
            virtio.len() as u32,
            "fs",
            Box::new(dev),
        )?);
    }
    let cmdline_addr = GuestAddress(arch::CMDLINE_START);
    load_cmdline(mem, cmdline_addr, &cmdline).map_err(|e| BuildError::Cmdline(e.to_string()))?;
    let cmdline_size = cmdline
        .as_cstring()
        .map_err(|e| BuildError::Cmdline(e.to_string()))?
        .as_bytes_with_nul()
        .len() as u64;

    let initrd = match &res.initrd {
        None => None,
        Some(path) => {
            let mut f = ImageFile::new(open("initrd", path)?, &ram);
            let read_err = |source| BuildError::ReadInput {
                what: "initrd",
                path: path.clone(),
                source,
            };
            let size = f.file().metadata().map_err(read_err)?.len();
            let addr = arch::initrd_address(mem, &kernel, size)?;
            let len = usize::try_from(size).map_err(|_| BuildError::InitrdTooLarge { size })?;
            mem.read_exact_volatile_from(addr, &mut f, len)
                .map_err(BuildError::LoadInitrd)?;
            Some((addr, size))
        }
    };
    arch::configure_system(
        mem,
        &BootInfo {
            kernel,
            cmdline_addr,
            cmdline_size,
            initrd,
            vcpus: res.vcpus,
            virtio: virtio
                .iter()
                .map(|&(base, irq, _)| (GuestAddress(base), irq))
                .collect(),
        },
    )?;

    let exit = Arc::new(ExitSignal::new().map_err(BuildError::EventFd)?);
    let serial_irq =
        EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(BuildError::EventFd)?;
    let serial_dev = SerialDevice::new(
        serial_irq.try_clone().map_err(BuildError::EventFd)?,
        console_writer(&res.console)?,
    );
    metrics.console = Some(serial_dev.metrics());
    let serial = Arc::new(Mutex::new(serial_dev));
    let (mut pio, mut mmio) = (Bus::new(), Bus::new());
    arch::register_devices(
        &vm_fd,
        &mut LegacyDevices {
            pio: &mut pio,
            mmio: &mut mmio,
            serial: serial.clone(),
            serial_irq: &serial_irq,
            i8042: Arc::new(Mutex::new(I8042::new(exit.clone()))),
        },
    )?;
    for (base, _, dev) in virtio {
        mmio.insert(base, MMIO_SIZE, dev)
            .map_err(|e| BuildError::VirtioDevice {
                what: "mmio",
                message: e.to_string(),
            })?;
    }
    let (pio, mmio) = (Arc::new(pio), Arc::new(mmio));

    // Late: a client that can connect finds a VM about to run, and an earlier build error
    // never creates the socket.
    let api = match &res.api_sock {
        None => None,
        Some(path) => Some(
            ApiServer::bind(path).map_err(|source| BuildError::ApiSocket {
                path: path.clone(),
                source,
            })?,
        ),
    };

    let vcpus = (0..res.vcpus)
        .zip(vcpu_fds)
        .map(|(index, fd)| Vcpu::new(index, fd, pio.clone(), mmio.clone(), exit.clone(), started))
        .collect();
    log::debug!(
        "built: kernel entry {:#x}, initrd {:?}, {} vCPUs, {} MiB, in {:?}",
        kernel.entry.0,
        initrd,
        res.vcpus,
        res.memory_bytes >> 20,
        started.elapsed()
    );
    Ok(Vm {
        vcpus,
        exit,
        serial,
        serial_irq,
        ram,
        vm_fd,
        kvm,
        started,
        api,
        metrics,
    })
}
