//! The few bpf(2) commands aya 0.14 does not offer: batched lookup-and-delete (to drain a flow
//! table at millions of entries per second) and an RCU grace-period wait (so that, after the agent
//! switches the active flow table, no program still writes into the one being drained).

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_LOOKUP_AND_DELETE_BATCH: libc::c_long = 25;

const BPF_MAP_TYPE_ARRAY: u32 = 2;
/// The kernel-internal ENOTSUPP that bpf(2) returns for commands a map type lacks.
const ENOTSUPP: i32 = 524;
const BPF_MAP_TYPE_ARRAY_OF_MAPS: u32 = 12;

/// `union bpf_attr` is 144+ bytes on current kernels; every command reads a prefix of it and the
/// kernel checks that the bytes past the fields it knows are zero.
#[repr(C, align(8))]
struct Attr([u8; 128]);

impl Attr {
    fn new() -> Self {
        Attr([0; 128])
    }
    fn put_u32(&mut self, off: usize, v: u32) -> &mut Self {
        self.0[off..off + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn put_u64(&mut self, off: usize, v: u64) -> &mut Self {
        self.0[off..off + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn get_u32(&self, off: usize) -> u32 {
        u32::from_ne_bytes(self.0[off..off + 4].try_into().expect("4 bytes"))
    }
}

fn bpf(cmd: libc::c_long, attr: &mut Attr) -> io::Result<libc::c_long> {
    // SAFETY: attr is a valid, zero-padded bpf_attr buffer of the size we pass.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.0.as_mut_ptr(),
            std::mem::size_of::<Attr>() as u32,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Waits for an RCU grace period: updating an array-of-maps makes the kernel call
/// `synchronize_rcu()` before returning ("maybe_wait_bpf_programs"), after which no XDP or tc
/// program that started before the call is still running.
pub struct GracePeriod {
    outer: OwnedFd,
    inner: OwnedFd,
}

impl GracePeriod {
    pub fn new() -> io::Result<Self> {
        let mut a = Attr::new();
        a.put_u32(0, BPF_MAP_TYPE_ARRAY)
            .put_u32(4, 4)
            .put_u32(8, 4)
            .put_u32(12, 1);
        // SAFETY: a successful BPF_MAP_CREATE returns a new fd we own.
        let inner = unsafe { OwnedFd::from_raw_fd(bpf(BPF_MAP_CREATE, &mut a)? as RawFd) };
        let mut a = Attr::new();
        a.put_u32(0, BPF_MAP_TYPE_ARRAY_OF_MAPS)
            .put_u32(4, 4)
            .put_u32(8, 4)
            .put_u32(12, 1)
            .put_u32(20, inner.as_raw_fd() as u32);
        // SAFETY: as above.
        let outer = unsafe { OwnedFd::from_raw_fd(bpf(BPF_MAP_CREATE, &mut a)? as RawFd) };
        Ok(Self { outer, inner })
    }

    pub fn wait(&self) -> io::Result<()> {
        let key: u32 = 0;
        let value: u32 = self.inner.as_raw_fd() as u32;
        let mut a = Attr::new();
        a.put_u32(0, self.outer.as_raw_fd() as u32)
            .put_u64(8, &key as *const u32 as u64)
            .put_u64(16, &value as *const u32 as u64)
            .put_u64(24, 0);
        bpf(BPF_MAP_UPDATE_ELEM, &mut a).map(|_| ())
    }
}

/// The programs' `SensorConfig` (a one-element `BPF_F_MMAPABLE` array) mapped into this
/// process: the words the agent changes while programs run are written with single atomic
/// stores, which a program reading the word sees whole or not at all. (An update through
/// bpf(2) copies the whole value with memcpy, which gives no such promise, and costs a syscall.)
pub struct MappedConfig {
    ptr: std::ptr::NonNull<sensor_common::SensorConfig>,
    len: usize,
    _fd: OwnedFd,
}

// SAFETY: the mapping is owned by this value and only written through atomics after `new`.
unsafe impl Send for MappedConfig {}

impl MappedConfig {
    /// Maps the array behind `fd` and writes `cfg` into it (before any program is attached).
    pub fn new(fd: BorrowedFd<'_>, cfg: sensor_common::SensorConfig) -> io::Result<Self> {
        let fd = fd.try_clone_to_owned()?;
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let len = std::mem::size_of::<sensor_common::SensorConfig>().div_ceil(page) * page;
        // SAFETY: a shared mapping of a map fd; the kernel checks size and flags.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = std::ptr::NonNull::new(p.cast::<sensor_common::SensorConfig>())
            .expect("mmap returned a non-null address");
        // SAFETY: page-aligned, writable, at least one SensorConfig long; nothing runs yet.
        unsafe { ptr.as_ptr().write_volatile(cfg) };
        Ok(Self { ptr, len, _fd: fd })
    }

    pub fn store_epoch(&self, epoch: u32) {
        // SAFETY: `epoch` is an aligned u32 inside the live mapping; BPF programs only read it.
        unsafe {
            std::sync::atomic::AtomicU32::from_ptr(&raw mut (*self.ptr.as_ptr()).epoch)
                .store(epoch, std::sync::atomic::Ordering::Release)
        }
    }

    pub fn store_now(&self, now_ns: u64) {
        // SAFETY: as above, an aligned u64 (asserted in sensor-common's tests).
        unsafe {
            std::sync::atomic::AtomicU64::from_ptr(&raw mut (*self.ptr.as_ptr()).now_ns)
                .store(now_ns, std::sync::atomic::Ordering::Release)
        }
    }

    /// What the programs currently read.
    pub fn load(&self) -> sensor_common::SensorConfig {
        // SAFETY: inside the live mapping; a racing store of one word only changes that word.
        unsafe { self.ptr.as_ptr().read_volatile() }
    }
}

impl Drop for MappedConfig {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// Outcome of one drain of a (quiescent) hash map.
#[derive(Debug, Clone, Copy)]
pub struct Drained {
    pub count: usize,
    /// True if the batch command was used, false if the kernel lacked it and we went key by key.
    pub batched: bool,
}

/// Removes every entry of a hash map, in batches of `batch` entries, handing each to `each` as
/// (key bytes, value bytes; per-CPU maps: one 8-byte-aligned slot per possible CPU). Entries are
/// handled batch by batch, so memory stays at one batch whatever the table's size.
///
/// The map must not be written concurrently (the agent drains the inactive flow table only).
pub fn drain_map(
    fd: BorrowedFd<'_>,
    key_size: usize,
    value_stride: usize,
    batch: usize,
    mut each: impl FnMut(&[u8], &[u8]),
) -> io::Result<Drained> {
    let mut out = Drained {
        count: 0,
        batched: true,
    };
    let mut keys = vec![0u8; key_size * batch];
    let mut values = vec![0u8; value_stride * batch];
    // Batch tokens: the hash map uses a u32 bucket index, but size it like a key to be safe.
    let mut in_batch = vec![0u8; key_size.max(8)];
    let mut out_batch = vec![0u8; key_size.max(8)];
    let mut first = true;
    let mut batch = batch;
    loop {
        let mut a = Attr::new();
        a.put_u64(0, if first { 0 } else { in_batch.as_ptr() as u64 })
            .put_u64(8, out_batch.as_mut_ptr() as u64)
            .put_u64(16, keys.as_mut_ptr() as u64)
            .put_u64(24, values.as_mut_ptr() as u64)
            .put_u32(32, batch as u32)
            .put_u32(36, fd.as_raw_fd() as u32);
        let r = bpf(BPF_MAP_LOOKUP_AND_DELETE_BATCH, &mut a);
        let n = a.get_u32(32) as usize;
        for (k, v) in keys
            .chunks_exact(key_size)
            .zip(values.chunks_exact(value_stride))
            .take(n)
        {
            each(k, v);
        }
        out.count += n;
        match r {
            Ok(_) => {
                in_batch.copy_from_slice(&out_batch);
                first = false;
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(out),
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && n == 0 => {
                // One bucket holds more entries than the batch: grow and retry.
                batch *= 2;
                keys.resize(key_size * batch, 0);
                values.resize(value_stride * batch, 0);
            }
            Err(e)
                if first
                    && n == 0
                    && matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(ENOTSUPP)) =>
            {
                // Kernel without batch ops (< 5.6): go key by key; still race-free on a quiescent map.
                return drain_map_one_by_one(fd, key_size, value_stride, each);
            }
            Err(e) => return Err(e),
        }
    }
}

/// Reads every value of an array map (per-CPU arrays: `value_stride` covers all CPUs), in
/// batches, falling back to one lookup per index on kernels without batch ops.
pub fn read_array(fd: BorrowedFd<'_>, entries: u32, value_stride: usize) -> io::Result<Vec<u8>> {
    let n = entries as usize;
    let mut values = vec![0u8; value_stride * n];
    let mut keys = vec![0u32; n];
    let (mut in_batch, mut out_batch) = (0u32, 0u32);
    let mut done = 0usize;
    let mut first = true;
    while done < n {
        let mut a = Attr::new();
        a.put_u64(
            0,
            if first {
                0
            } else {
                &in_batch as *const u32 as u64
            },
        )
        .put_u64(8, &mut out_batch as *mut u32 as u64)
        .put_u64(16, keys[done..].as_mut_ptr() as u64)
        .put_u64(24, values[done * value_stride..].as_mut_ptr() as u64)
        .put_u32(32, (n - done) as u32)
        .put_u32(36, fd.as_raw_fd() as u32);
        let r = bpf(BPF_MAP_LOOKUP_BATCH, &mut a);
        done += a.get_u32(32) as usize;
        match r {
            Ok(_) => {
                in_batch = out_batch;
                first = false;
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => break,
            Err(e)
                if first
                    && done == 0
                    && matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(ENOTSUPP)) =>
            {
                for i in 0..n {
                    let key = i as u32;
                    let mut a = Attr::new();
                    a.put_u32(0, fd.as_raw_fd() as u32)
                        .put_u64(8, &key as *const u32 as u64)
                        .put_u64(16, values[i * value_stride..].as_mut_ptr() as u64);
                    bpf(BPF_MAP_LOOKUP_ELEM, &mut a)?;
                }
                return Ok(values);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(values)
}

/// The entry-by-entry drain (kernels without batch ops; also the benchmark's reference).
pub fn drain_map_one_by_one(
    fd: BorrowedFd<'_>,
    key_size: usize,
    value_stride: usize,
    mut each: impl FnMut(&[u8], &[u8]),
) -> io::Result<Drained> {
    let mut out = Drained {
        count: 0,
        batched: false,
    };
    let mut key = vec![0u8; key_size];
    let mut value = vec![0u8; value_stride];
    loop {
        // Always ask for the first key: we delete as we go.
        let mut a = Attr::new();
        a.put_u32(0, fd.as_raw_fd() as u32)
            .put_u64(8, 0)
            .put_u64(16, key.as_mut_ptr() as u64);
        match bpf(BPF_MAP_GET_NEXT_KEY, &mut a) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(out),
            Err(e) => return Err(e),
        }
        let mut a = Attr::new();
        a.put_u32(0, fd.as_raw_fd() as u32)
            .put_u64(8, key.as_ptr() as u64)
            .put_u64(16, value.as_mut_ptr() as u64);
        let found = match bpf(BPF_MAP_LOOKUP_ELEM, &mut a) {
            Ok(_) => true,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => false,
            Err(e) => return Err(e),
        };
        let mut a = Attr::new();
        a.put_u32(0, fd.as_raw_fd() as u32)
            .put_u64(8, key.as_ptr() as u64);
        match bpf(BPF_MAP_DELETE_ELEM, &mut a) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(e),
        }
        if found {
            each(&key, &value);
            out.count += 1;
        }
    }
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;

/// The reference for benchmarks: an XDP program that only returns XDP_PASS
/// (`r0 = 2; exit`), loaded straight from its two instructions.
pub fn load_empty_xdp() -> io::Result<OwnedFd> {
    let insns: [u8; 16] = [0xb7, 0, 0, 0, 2, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0];
    let license = b"GPL\0";
    let mut a = Attr::new();
    a.put_u32(0, BPF_PROG_TYPE_XDP)
        .put_u32(4, 2)
        .put_u64(8, insns.as_ptr() as u64)
        .put_u64(16, license.as_ptr() as u64);
    a.0[48..58].copy_from_slice(b"empty_xdp\0");
    // SAFETY: a successful BPF_PROG_LOAD returns a new fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(bpf(BPF_PROG_LOAD, &mut a)? as RawFd) })
}

/// BPF_PROG_TEST_RUN: runs `prog` on `data` `repeat` times; returns (return value, mean ns/run).
pub fn test_run(prog: BorrowedFd<'_>, data: &[u8], repeat: u32) -> io::Result<(u32, u32)> {
    let mut out = vec![0u8; data.len() + 256];
    let mut a = Attr::new();
    a.put_u32(0, prog.as_raw_fd() as u32)
        .put_u32(8, data.len() as u32)
        .put_u32(12, out.len() as u32)
        .put_u64(16, data.as_ptr() as u64)
        .put_u64(24, out.as_mut_ptr() as u64)
        .put_u32(32, repeat);
    bpf(BPF_PROG_TEST_RUN, &mut a)?;
    Ok((a.get_u32(4), a.get_u32(36)))
}

/// Attaches an XDP program to an interface with a BPF link (detached when the fd closes).
pub fn xdp_link(prog: BorrowedFd<'_>, ifindex: u32, flags: u32) -> io::Result<OwnedFd> {
    let mut a = Attr::new();
    a.put_u32(0, prog.as_raw_fd() as u32)
        .put_u32(4, ifindex)
        .put_u32(8, BPF_XDP)
        .put_u32(12, flags);
    // SAFETY: a successful BPF_LINK_CREATE returns a new fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(bpf(BPF_LINK_CREATE, &mut a)? as RawFd) })
}

/// (run_time_ns, run_cnt) of a program, as kept by the kernel while `kernel.bpf_stats_enabled=1`.
pub fn prog_run_stats(prog: BorrowedFd<'_>) -> io::Result<(u64, u64)> {
    let mut info = [0u8; 256];
    let mut a = Attr::new();
    a.put_u32(0, prog.as_raw_fd() as u32)
        .put_u32(4, info.len() as u32)
        .put_u64(8, info.as_mut_ptr() as u64);
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut a)?;
    let rd = |o: usize| u64::from_ne_bytes(info[o..o + 8].try_into().expect("8 bytes"));
    Ok((rd(192), rd(200)))
}
