//! uprobe_multi links (Linux 6.6+): one link puts a program on many offsets of one binary.
//!
//! A perf-event uprobe is removed one at a time, each waiting out a grace period under the
//! kernel's global `event_mutex`: about 85 ms apiece under KVM, seconds for a full plan. A
//! uprobe_multi link unregisters all of its offsets, then waits once, and links closed on
//! several threads wait together.
//!
//! aya 0.14 has no such links, and the kernel accepts only programs loaded for them
//! (`expected_attach_type` BPF_TRACE_UPROBE_MULTI). So each uprobe program is loaded a second
//! time here, through bpf(2), from the object's own instructions relocated (by aya-obj, as
//! aya does) against the maps aya created: both loads share every map. The object's BTF goes
//! with them, as aya sends it: the verifier needs its function info for the callback the
//! stack walk hands `bpf_loop`.

use std::{
    collections::HashMap,
    ffi::{CString, c_char},
    io,
    os::{
        fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::Path,
};

use anyhow::{Context, Result, bail};
use aya::{Ebpf, maps::Map};
use aya_obj::{
    Object, ProgramSection,
    generated::{
        BPF_F_UPROBE_MULTI_RETURN, bpf_attach_type, bpf_attr, bpf_cmd, bpf_func_info, bpf_insn,
        bpf_line_info, bpf_prog_info, bpf_prog_type,
    },
};
use leaktrace_common::programs;

use crate::error::Failure;

/// The object's uprobe programs, relocated, each loaded for uprobe_multi links when a link
/// first needs it: the verifier takes ~25 ms over a return probe, and a plan uses about half
/// of them.
pub struct MultiPrograms {
    programs: HashMap<String, MultiProgram>,
    /// The object's BTF, loaded; None where the kernel takes no BTF.
    btf: Option<OwnedFd>,
}

struct MultiProgram {
    instructions: Vec<bpf_insn>,
    /// Where each function linked into the program starts, and its type, in `btf`.
    func_info: Vec<bpf_func_info>,
    line_info: Vec<bpf_line_info>,
    license: CString,
    role: Role,
    fd: Option<OwnedFd>,
}

/// What a program is to the uprobes it is linked to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Entry,
    /// A return probe: its link is made with `BPF_F_UPROBE_MULTI_RETURN`.
    Return,
    /// A uprobe session (Linux 6.13+): one program for the entry and the return, loaded and
    /// linked with their own attach type; the entry run returns nonzero to skip the return.
    Session,
}

impl Role {
    fn attach_type(self) -> u32 {
        match self {
            Role::Entry | Role::Return => bpf_attach_type::BPF_TRACE_UPROBE_MULTI as u32,
            Role::Session => BPF_TRACE_UPROBE_SESSION,
        }
    }
}

/// The attach type of uprobe sessions, newer than aya-obj's bindings.
const BPF_TRACE_UPROBE_SESSION: u32 = 57;

/// One offset of a binary, and the cookie the program reads there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MultiPoint {
    pub offset: u64,
    pub cookie: u64,
}

impl MultiPrograms {
    /// Relocates every uprobe program of `object` against the maps `ebpf` (loaded from the
    /// same bytes) has created and still holds.
    pub fn load(object: &[u8], ebpf: &Ebpf) -> Result<MultiPrograms> {
        let mut obj = Object::parse(object).context("parse the eBPF object")?;
        let btf = match aya::features().btf() {
            Some(features) => obj
                .fixup_and_sanitize_btf(features)
                .context("prepare the object's BTF")?
                .map(|btf| load_btf(&btf.to_bytes()))
                .transpose()
                .context("load the object's BTF")?,
            None => None,
        };
        let fds: HashMap<&str, i32> = ebpf
            .maps()
            .filter_map(|(name, map)| Some((name, map_fd(map)?)))
            .collect();
        let text_sections = obj.functions.keys().map(|(section, _)| *section).collect();
        let maps: Vec<(String, aya_obj::Map)> = obj.maps.drain().collect();
        let missing: Vec<&str> = maps
            .iter()
            .map(|(name, _)| name.as_str())
            .filter(|name| !fds.contains_key(name))
            .collect();
        if !missing.is_empty() {
            bail!("maps {missing:?} are no longer held by the loaded object");
        }
        obj.relocate_maps(
            maps.iter()
                .map(|(name, map)| (name.as_str(), fds[name.as_str()], map)),
            &text_sections,
        )
        .context("relocate the programs' maps")?;
        obj.relocate_calls(&text_sections)
            .context("relocate the programs' calls")?;
        let mut programs = HashMap::new();
        for (name, program) in &obj.programs {
            let role = match program.section {
                ProgramSection::UProbe { .. } if programs::SESSIONS.contains(&name.as_str()) => {
                    Role::Session
                }
                ProgramSection::UProbe { .. } => Role::Entry,
                ProgramSection::URetProbe { .. } => Role::Return,
                _ => continue,
            };
            let function = &obj.functions[&program.function_key()];
            let program = MultiProgram {
                instructions: function.instructions.clone(),
                func_info: function.func_info.func_info.clone(),
                line_info: function.line_info.line_info.clone(),
                license: program.license.clone(),
                role,
                fd: None,
            };
            programs.insert(name.clone(), program);
        }
        Ok(MultiPrograms { programs, btf })
    }

    /// Attaches `program` at every point of `binary`, for the process `pid` only. On a kernel
    /// without uprobe_multi, the first link fails with [`is_unsupported`].
    pub fn link(
        &mut self,
        name: &str,
        binary: &Path,
        points: &[MultiPoint],
        pid: u32,
    ) -> Result<OwnedFd> {
        let program = self
            .programs
            .get_mut(name)
            .with_context(|| format!("the eBPF object has no uprobe program {name}"))?;
        if program.fd.is_none() {
            let fd = load_program(name, program, self.btf.as_ref())
                .with_context(|| format!("load {name} for uprobe_multi links"))?;
            program.fd = Some(fd);
        }
        let (Some(fd), role) = (&program.fd, program.role) else {
            unreachable!("loaded above");
        };
        let path = CString::new(binary.as_os_str().as_bytes())?;
        let offsets: Vec<u64> = points.iter().map(|p| p.offset).collect();
        let cookies: Vec<u64> = points.iter().map(|p| p.cookie).collect();
        // SAFETY: bpf_attr is plain data; all zeroes is its empty value.
        let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
        // SAFETY: link_create is the union member BPF_LINK_CREATE reads; the pointers it is
        // given outlive the call.
        unsafe {
            let create = &mut attr.link_create;
            create.__bindgen_anon_1.prog_fd = fd.as_raw_fd() as u32;
            create.attach_type = role.attach_type();
            let multi = &mut create.__bindgen_anon_3.uprobe_multi;
            multi.path = path.as_ptr() as u64;
            multi.offsets = offsets.as_ptr() as u64;
            multi.cookies = cookies.as_ptr() as u64;
            multi.cnt = offsets.len() as u32;
            multi.flags = if role == Role::Return {
                BPF_F_UPROBE_MULTI_RETURN
            } else {
                0
            };
            multi.pid = pid;
        }
        bpf(bpf_cmd::BPF_LINK_CREATE, &mut attr).map_err(anyhow::Error::new)
    }
}

impl MultiPrograms {
    /// Each loaded program's name, runs and run time in ns, as the kernel counts them while
    /// BPF statistics are on ([`super::ProbeSet::program_runs`]).
    pub fn runs(&self) -> Vec<(String, u64, u64)> {
        self.programs
            .iter()
            .filter_map(|(name, program)| {
                let (runs, ns) = run_stats(program.fd.as_ref()?).ok()?;
                Some((name.clone(), runs, ns))
            })
            .collect()
    }
}

/// BPF_OBJ_GET_INFO_BY_FD of a program: its (runs, run time in ns).
fn run_stats(fd: &OwnedFd) -> io::Result<(u64, u64)> {
    // SAFETY: plain data; all zeroes is its empty value.
    let mut info: bpf_prog_info = unsafe { std::mem::zeroed() };
    // SAFETY: as in `link`.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // The info member of the union, which BPF_OBJ_GET_INFO_BY_FD reads; `info` outlives the
    // call.
    attr.info.bpf_fd = fd.as_raw_fd() as u32;
    attr.info.info_len = std::mem::size_of::<bpf_prog_info>() as u32;
    attr.info.info = &raw mut info as u64;
    bpf_call(bpf_cmd::BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok((info.run_cnt, info.run_time_ns))
}

/// Whether `error` says the kernel has no uprobe_multi links (before 6.6, or built without
/// them): the program load or the link is refused as a whole.
pub fn is_unsupported(error: &anyhow::Error) -> bool {
    const ENOTSUPP: i32 = 524;
    matches!(
        crate::error::os_error(error.as_ref()),
        Some(libc::EINVAL | libc::EOPNOTSUPP | libc::ENOSYS | ENOTSUPP)
    )
}

/// The descriptor of a map aya created.
fn map_fd(map: &Map) -> Option<i32> {
    let data = match map {
        Map::Array(data)
        | Map::HashMap(data)
        | Map::PerCpuArray(data)
        | Map::RingBuf(data)
        | Map::StackTraceMap(data) => data,
        _ => return None,
    };
    Some(data.fd().as_fd().as_raw_fd())
}

/// BPF_BTF_LOAD of an object's BTF.
fn load_btf(btf: &[u8]) -> io::Result<OwnedFd> {
    // SAFETY: as in `link`.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: the BTF-load member of the union; the buffer outlives the call.
    unsafe {
        let load = &mut attr.__bindgen_anon_7;
        load.btf = btf.as_ptr() as u64;
        load.btf_size = btf.len() as u32;
    }
    bpf(bpf_cmd::BPF_BTF_LOAD, &mut attr)
}

/// BPF_PROG_LOAD of a kprobe-type program for uprobe_multi links.
fn load_program(name: &str, program: &MultiProgram, btf: Option<&OwnedFd>) -> Result<OwnedFd> {
    let MultiProgram {
        instructions,
        func_info,
        line_info,
        license,
        role,
        ..
    } = program;
    let mut log = vec![0u8; 1 << 16];
    let mut prog_name = [0 as c_char; 16];
    for (slot, byte) in prog_name.iter_mut().zip(name.bytes().take(15)) {
        *slot = byte as c_char;
    }
    // SAFETY: as in `link`.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: the program-load member of the union; the buffers outlive the call.
    unsafe {
        let load = &mut attr.__bindgen_anon_3;
        load.prog_type = bpf_prog_type::BPF_PROG_TYPE_KPROBE as u32;
        load.expected_attach_type = role.attach_type();
        load.insn_cnt = instructions.len() as u32;
        load.insns = instructions.as_ptr() as u64;
        load.license = license.as_ptr() as u64;
        load.prog_name = prog_name;
        if let Some(btf) = btf {
            load.prog_btf_fd = btf.as_raw_fd() as u32;
            load.func_info_rec_size = size_of::<bpf_func_info>() as u32;
            load.func_info = func_info.as_ptr() as u64;
            load.func_info_cnt = func_info.len() as u32;
            load.line_info_rec_size = size_of::<bpf_line_info>() as u32;
            load.line_info = line_info.as_ptr() as u64;
            load.line_info_cnt = line_info.len() as u32;
        }
    }
    match bpf(bpf_cmd::BPF_PROG_LOAD, &mut attr) {
        Ok(fd) => Ok(fd),
        Err(error) => {
            // Ask again with the verifier's log, for the error.
            // SAFETY: as above.
            unsafe {
                let load = &mut attr.__bindgen_anon_3;
                load.log_level = 1;
                load.log_size = log.len() as u32;
                load.log_buf = log.as_mut_ptr() as u64;
            }
            let _ = bpf(bpf_cmd::BPF_PROG_LOAD, &mut attr);
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            Err(load_refused(
                name,
                error,
                &String::from_utf8_lossy(&log[..end]),
            ))
        }
    }
}

/// A refused program load. With a verifier's log, the verifier rejected the program: this
/// kernel cannot run it (too old, or a verifier that checks differently), which no
/// permission would change, though the errno (EACCES) says "permission denied". Without one,
/// the error as it came, for its errno to tell.
pub(super) fn load_refused(program: &str, error: io::Error, verifier_log: &str) -> anyhow::Error {
    let tail: Vec<&str> = verifier_log
        .lines()
        .filter(|line| !line.trim().is_empty())
        .rev()
        .take(3)
        .collect();
    if tail.is_empty() {
        return anyhow::Error::new(error);
    }
    let said = tail.into_iter().rev().collect::<Vec<_>>().join(" / ");
    anyhow::Error::new(Failure::KernelUnsupported(format!(
        "its BPF verifier rejects the program {program} ({said})"
    )))
}

/// bpf(2) for the commands that return a new descriptor.
fn bpf(command: bpf_cmd, attr: &mut bpf_attr) -> io::Result<OwnedFd> {
    let fd = bpf_call(command, attr)?;
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// bpf(2): what it returned, or its error.
fn bpf_call(command: bpf_cmd, attr: &mut bpf_attr) -> io::Result<i64> {
    // SAFETY: `attr` is a valid bpf_attr of its full size for the command's union member.
    let result = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            command as libc::c_int,
            attr as *mut bpf_attr,
            std::mem::size_of::<bpf_attr>() as libc::c_uint,
        )
    };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{exit_code, os_error};

    /// The verifier's EACCES is this kernel's lack, told with the verifier's last words: not
    /// a permission to go and look for.
    #[test]
    fn a_verifier_rejection_is_an_unsupported_kernel() {
        let log = "0: (b7) r0 = 0\n1: (95) exit\nR2 !read_ok\nprocessed 2 insns\n\n";
        let error = load_refused(
            "alloc_exit",
            io::Error::from_raw_os_error(libc::EACCES),
            log,
        );
        assert_eq!(exit_code(&error), 6, "{error:#}");
        assert_eq!(
            error.to_string(),
            "this kernel cannot run leaktrace: its BPF verifier rejects the program \
             alloc_exit (1: (95) exit / R2 !read_ok / processed 2 insns)"
        );
    }

    /// With no verifier log the load never reached the verifier: the errno stays, for the
    /// caller to tell a missing capability by.
    #[test]
    fn a_refusal_without_a_verifier_log_keeps_its_errno() {
        let error = load_refused("alloc_exit", io::Error::from_raw_os_error(libc::EPERM), "");
        assert_eq!(os_error(error.as_ref()), Some(libc::EPERM));
    }
}
