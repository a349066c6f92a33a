//! Where in a function its probe sits, read from the function's first instructions.
//!
//! A uprobe replaces one instruction with a breakpoint. On a hit the kernel must then carry out
//! that instruction: a few kinds it emulates (x86: `push` of a register, `jmp`/`call`/`jcc` to
//! a relative target, `nop`), every other it single-steps out of line, which takes a second
//! trap. Under KVM an emulated hit costs ~0.6 µs and a single-stepped one ~9.8 µs (measured,
//! ../shared/toolchain.md). glibc's `free` starts with `test %rdi,%rdi`, and everything in
//! libstdc++ with `endbr64`: both single-stepped, on every call.
//!
//! So each probe point is chosen from the function's straight-line prefix: the instructions
//! from its entry up to the first one the kernel emulates. The probe may sit there when
//! - no branch anywhere in the function lands inside the prefix skipped, so the point is
//!   reached exactly once per call;
//! - every argument the probe reads still lives in some register: the prefix is followed
//!   register by register (mimalloc's malloc moves its size from %rdi to %rsi), and the probe
//!   reads each argument where it lives ([`ArgumentHomes`], passed as the probe's cookie);
//! - for a function with a return probe, %rsp is unchanged: a uretprobe takes the return
//!   address from the top of the stack, wherever it fires.
//!
//! jemalloc's malloc (`cmp $0x1000,%rdi; ja`) is so probed on its `ja`, tcmalloc's on the
//! `jne` after `mov; test`. For a probe that ignores a NULL first argument, `test %rdi,%rdi;
//! je` is stepped over as well when an emulated instruction follows (glibc's free: its probe
//! then sits on the `push` after the NULL check, and free(NULL) does not trap at all).
//!
//! A C++ operator that only passes its work on, by calling or jumping to a probed function
//! of the same kind (libstdc++'s `operator new` calls malloc, `operator delete` jumps to
//! free), needs no probe of its own: every block it hands out or takes back is seen there.

use std::{collections::HashMap, fmt};

use iced_x86::{
    Code, Decoder, DecoderOptions, FlowControl, Instruction, InstructionInfoFactory, Mnemonic,
    OpAccess, OpKind, Register,
};
use leaktrace_common::arguments::{self, Home};

/// A function's machine code, where it is loaded in its module's address space.
#[derive(Clone, Copy)]
pub struct FunctionCode<'a> {
    pub address: u64,
    pub bytes: &'a [u8],
}

/// The integer argument registers of the x86-64 System V ABI, in order.
pub const ARGUMENT_REGISTERS: [Register; 6] = [
    Register::RDI,
    Register::RSI,
    Register::RDX,
    Register::RCX,
    Register::R8,
    Register::R9,
];

/// Where each integer argument lives at a probe point: the register that holds its value,
/// [`Register::None`] where it was overwritten (and the probe does not read it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArgumentHomes(pub [Register; 6]);

impl Default for ArgumentHomes {
    /// At a function's entry, each argument is in its own register.
    fn default() -> Self {
        ArgumentHomes(ARGUMENT_REGISTERS)
    }
}

impl ArgumentHomes {
    /// The probe's cookie: where it reads each argument ([`leaktrace_common::arguments`]).
    pub fn cookie(&self) -> u64 {
        self.0
            .iter()
            .zip(ARGUMENT_REGISTERS)
            .enumerate()
            .fold(0, |cookie, (index, (home, own))| {
                let home = if *home == own {
                    Home::Own
                } else {
                    match home {
                        Register::RDI => Home::Rdi,
                        Register::RSI => Home::Rsi,
                        Register::RDX => Home::Rdx,
                        Register::RCX => Home::Rcx,
                        Register::R8 => Home::R8,
                        Register::R9 => Home::R9,
                        Register::RAX => Home::Rax,
                        Register::RBX => Home::Rbx,
                        Register::RBP => Home::Rbp,
                        Register::R10 => Home::R10,
                        Register::R11 => Home::R11,
                        Register::R12 => Home::R12,
                        Register::R13 => Home::R13,
                        Register::R14 => Home::R14,
                        Register::R15 => Home::R15,
                        // Not read by the probe.
                        _ => Home::Own,
                    }
                };
                arguments::with_home(cookie, index, home)
            })
    }

    /// "size in %rsi": the arguments read elsewhere than at the entry, for `--verbose`.
    fn describe_moves(&self) -> String {
        self.0
            .iter()
            .zip(ARGUMENT_REGISTERS)
            .enumerate()
            .filter(|(_, (home, own))| **home != Register::None && **home != *own)
            .map(|(index, (home, _))| format!("argument {} read from %{home:?}", index + 1))
            .collect::<Vec<_>>()
            .join(", ")
            .to_lowercase()
    }
}

/// Where a function's entry probe sits: `offset` bytes in, where its arguments live there,
/// whether the kernel emulates the instruction there, and why, for `--verbose`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryPoint {
    pub offset: u64,
    pub arguments: ArgumentHomes,
    /// The kernel emulates the probed instruction; else it single-steps it, which makes a hit
    /// about 15 times dearer under KVM.
    pub emulated: bool,
    pub reason: String,
}

impl EntryPoint {
    /// The first instruction, for `why`; `emulated` says whether the kernel emulates it.
    pub fn at_entry(reason: String, emulated: bool) -> EntryPoint {
        EntryPoint {
            offset: 0,
            arguments: ArgumentHomes::default(),
            emulated,
            reason,
        }
    }
}

impl fmt::Display for EntryPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "+{}: {}", self.offset, self.reason)
    }
}

/// What a probe point must respect of its function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeNeeds {
    /// The function has a return probe: %rsp must be as at the entry.
    pub returns: bool,
    /// The entry probe ignores a NULL first argument (free, operator delete).
    pub ignores_null_first_argument: bool,
    /// How many arguments the entry probe reads.
    pub arguments: usize,
}

/// Instructions followed from the entry: any allocator's prefix we know is shorter.
const MAX_PREFIX: usize = 16;

/// The probe point of a function with the needs given.
pub fn entry_point(code: FunctionCode, needs: ProbeNeeds) -> EntryPoint {
    let body = decode(code);
    let Some(first) = body.first() else {
        return EntryPoint::at_entry("no code to decode".into(), false);
    };
    if is_emulated(first) {
        return EntryPoint::at_entry(
            format!("entry instruction is emulated (`{:?}`)", first.mnemonic()),
            true,
        );
    }
    let stay = |why: &str| {
        EntryPoint::at_entry(
            format!(
                "{why}; entry instruction `{:?}` is single-stepped",
                first.mnemonic()
            ),
            false,
        )
    };
    let prefix = match Prefix::follow(&body, needs) {
        Ok(prefix) => prefix,
        Err(why) => return stay(why),
    };
    let candidate = &body[prefix.length];
    let inside = code.address + 1..=candidate.ip();
    if body
        .iter()
        .any(|i| is_direct_branch(i) && inside.contains(&i.near_branch_target()))
    {
        return stay("a branch lands inside the prefix");
    }
    let skipped: Vec<String> = body[..prefix.length]
        .iter()
        .map(|i| format!("{:?}", i.mnemonic()))
        .collect();
    let moves = prefix.arguments.describe_moves();
    EntryPoint {
        offset: candidate.ip() - code.address,
        arguments: prefix.arguments,
        emulated: true,
        reason: format!(
            "moved past `{}` onto the emulated `{:?}`{}",
            skipped.join("; "),
            candidate.mnemonic(),
            if moves.is_empty() {
                String::new()
            } else {
                format!("; {moves}")
            }
        ),
    }
}

/// The straight-line prefix of a function, followed up to the probe's candidate point.
struct Prefix {
    /// Instructions skipped: the candidate is the next one.
    length: usize,
    arguments: ArgumentHomes,
}

impl Prefix {
    /// Follows `body` from its entry to the first emulated instruction; Err says why no point
    /// past the entry will do.
    fn follow(body: &[Instruction], needs: ProbeNeeds) -> Result<Prefix, &'static str> {
        if needs.ignores_null_first_argument
            && let Some(length) = past_null_check(body)
        {
            return Ok(Prefix {
                length,
                arguments: ArgumentHomes::default(),
            });
        }
        // Which argument each register holds now.
        let mut holds: HashMap<Register, usize> = ARGUMENT_REGISTERS
            .iter()
            .enumerate()
            .map(|(index, register)| (*register, index))
            .collect();
        let mut stack_delta: i64 = 0;
        let mut info = InstructionInfoFactory::new();
        let mut length = 0;
        loop {
            let Some(instruction) = body.get(length).filter(|_| length < MAX_PREFIX) else {
                return Err("no emulated instruction in the straight-line prefix");
            };
            if length > 0 && is_emulated(instruction) {
                break;
            }
            if instruction.flow_control() != FlowControl::Next {
                return Err("control flow before an emulated instruction");
            }
            stack_delta += stack_change(instruction).ok_or("the prefix moves %rsp")?;
            let copied = register_copy(instruction).map(|source| holds.get(&source).copied());
            for used in info.info(instruction).used_registers() {
                let register = used.register().full_register();
                if matches!(
                    used.access(),
                    OpAccess::Write
                        | OpAccess::CondWrite
                        | OpAccess::ReadWrite
                        | OpAccess::ReadCondWrite
                ) && register != Register::RSP
                {
                    holds.remove(&register);
                }
            }
            if let Some(Some(argument)) = copied {
                holds.insert(instruction.op0_register(), argument);
            }
            length += 1;
        }
        if stack_delta > 0 || (needs.returns && stack_delta != 0) {
            return Err("%rsp is not as at the entry there");
        }
        let mut arguments = ArgumentHomes([Register::None; 6]);
        for (index, home) in arguments.0.iter_mut().enumerate().take(needs.arguments) {
            let own = ARGUMENT_REGISTERS[index];
            *home = if holds.get(&own) == Some(&index) {
                own
            } else {
                let mut elsewhere: Vec<Register> = holds
                    .iter()
                    .filter(|(_, held)| **held == index)
                    .map(|(register, _)| *register)
                    .collect();
                elsewhere.sort_by_key(|r| *r as u32);
                *elsewhere.first().ok_or("an argument is overwritten")?
            };
        }
        Ok(Prefix { length, arguments })
    }
}

/// `[endbr64;] test %rdi,%rdi; je …` then an emulated instruction: the number of
/// instructions before it. The rest of the function runs only for a non-NULL first
/// argument, and those instructions change no register.
fn past_null_check(body: &[Instruction]) -> Option<usize> {
    let start = usize::from(body.first()?.mnemonic() == Mnemonic::Endbr64);
    let [test, jump, next, ..] = body.get(start..)? else {
        return None;
    };
    let tests_rdi = test.mnemonic() == Mnemonic::Test
        && test.op0_register() == Register::RDI
        && test.op1_register() == Register::RDI;
    (tests_rdi && jump.mnemonic() == Mnemonic::Je && is_direct_branch(jump) && is_emulated(next))
        .then_some(start + 2)
}

/// How an instruction moves %rsp: Some(0) when it leaves it alone, None when it changes it
/// in a way not followed.
fn stack_change(instruction: &Instruction) -> Option<i64> {
    let writes_rsp = instruction.op_count() > 0
        && instruction.op0_kind() == OpKind::Register
        && instruction.op0_register() == Register::RSP;
    if !writes_rsp {
        return Some(0);
    }
    let immediate = match instruction.op1_kind() {
        OpKind::Immediate8to64 | OpKind::Immediate32to64 => instruction.immediate64() as i64,
        _ => return None,
    };
    match instruction.mnemonic() {
        Mnemonic::Sub => Some(-immediate),
        Mnemonic::Add => Some(immediate),
        _ => None,
    }
}

/// The source register of a 64-bit register-to-register `mov`, which copies an argument.
fn register_copy(instruction: &Instruction) -> Option<Register> {
    (instruction.code() == Code::Mov_rm64_r64 || instruction.code() == Code::Mov_r64_rm64)
        .then_some(())
        .filter(|()| {
            instruction.op0_kind() == OpKind::Register && instruction.op1_kind() == OpKind::Register
        })
        .map(|()| instruction.op1_register())
}

/// The functions `code` calls or jumps to directly, named by `name_of` (which resolves
/// addresses of functions and of PLT stubs); the function's own tail of stubs is not followed.
pub fn callees(code: FunctionCode, name_of: &HashMap<u64, String>) -> Vec<String> {
    decode(code)
        .iter()
        .filter(|i| {
            matches!(
                i.flow_control(),
                FlowControl::Call | FlowControl::UnconditionalBranch
            ) && is_direct_branch(i)
        })
        .filter_map(|i| name_of.get(&i.near_branch_target()).cloned())
        .collect()
}

/// The GOT slot a PLT stub at `code` jumps through (`[endbr64;] [bnd] jmp *slot(%rip)`).
pub fn plt_slot(code: FunctionCode) -> Option<u64> {
    let instructions = decode(code);
    let jump = instructions
        .iter()
        .find(|i| i.mnemonic() != Mnemonic::Endbr64)?;
    (jump.mnemonic() == Mnemonic::Jmp
        && jump.op0_kind() == OpKind::Memory
        && jump.is_ip_rel_memory_operand())
    .then(|| jump.ip_rel_memory_address())
}

/// The function's instructions, by a linear sweep: compilers put no data in x86-64 text.
fn decode(code: FunctionCode) -> Vec<Instruction> {
    let mut decoder = Decoder::with_ip(64, code.bytes, code.address, DecoderOptions::NONE);
    decoder.iter().take_while(|i| !i.is_invalid()).collect()
}

/// A jump, conditional jump or call to a target written in the instruction.
fn is_direct_branch(instruction: &Instruction) -> bool {
    instruction.op0_kind() == OpKind::NearBranch64
}

/// What x86 uprobes carry out without single-stepping (arch/x86/kernel/uprobes.c:
/// branch_setup_xol_ops and push_setup_xol_ops).
fn is_emulated(instruction: &Instruction) -> bool {
    let relative_jump = match instruction.flow_control() {
        FlowControl::UnconditionalBranch | FlowControl::Call => true,
        // loop and jrcxz are not among them.
        FlowControl::ConditionalBranch => !matches!(
            instruction.mnemonic(),
            Mnemonic::Loop | Mnemonic::Loope | Mnemonic::Loopne | Mnemonic::Jrcxz | Mnemonic::Jecxz
        ),
        _ => false,
    };
    (relative_jump && is_direct_branch(instruction))
        || matches!(instruction.code(), Code::Nopw | Code::Nopd | Code::Nopq)
        || (instruction.code() == Code::Push_r64 && instruction.op0_register().is_gpr64())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FREE_LIKE: ProbeNeeds = ProbeNeeds {
        returns: false,
        ignores_null_first_argument: true,
        arguments: 1,
    };

    fn place(bytes: &[u8], needs: ProbeNeeds) -> EntryPoint {
        entry_point(
            FunctionCode {
                address: 0x1000,
                bytes,
            },
            needs,
        )
    }

    /// glibc 2.36's free: test %rdi,%rdi; je +0xbf; push %rbp; lea -0x10(%rdi),%rsi; ret.
    const FREE: [u8; 15] = [
        0x48, 0x85, 0xff, 0x0f, 0x84, 0xbf, 0x00, 0x00, 0x00, 0x55, 0x48, 0x8d, 0x77, 0xf0, 0xc3,
    ];

    #[test]
    fn free_moves_past_its_null_test_onto_push() {
        let point = place(&FREE, FREE_LIKE);
        assert_eq!(point.offset, 9, "{point}");
        assert!(point.emulated, "{point}");
    }

    /// The libc this machine runs: Debian's glibc free moves 9 bytes in, as measured.
    #[test]
    fn the_system_free_moves_past_its_null_test() {
        use object::{Object, ObjectSection, ObjectSymbol};
        let Ok(data) = std::fs::read("/lib/x86_64-linux-gnu/libc.so.6") else {
            eprintln!("no glibc here: nothing to check");
            return;
        };
        let file = object::File::parse(&*data).unwrap();
        let free = file
            .dynamic_symbols()
            .find(|s| s.name() == Ok("free"))
            .unwrap();
        let text = file.section_by_name(".text").unwrap();
        let bytes = text
            .data_range(free.address(), free.size())
            .unwrap()
            .unwrap();
        let point = entry_point(
            FunctionCode {
                address: free.address(),
                bytes,
            },
            FREE_LIKE,
        );
        assert_eq!(point.offset, 9, "{point}");
    }

    #[test]
    fn a_branch_into_the_prologue_keeps_the_entry() {
        // ... then jmp back to the push (0x1009) from 0x100f.
        let mut bytes = FREE[..14].to_vec();
        bytes.extend([0xe9, 0xf5, 0xff, 0xff, 0xff]);
        assert_eq!(place(&bytes, FREE_LIKE).offset, 0);
    }

    #[test]
    fn an_emulated_entry_stays() {
        // push %r12; push %rbp
        let point = place(&[0x41, 0x54, 0x55, 0xc3], FREE_LIKE);
        assert_eq!(point.offset, 0);
        assert!(point.emulated, "{point}");
        assert!(point.reason.contains("emulated"), "{point}");
    }

    #[test]
    fn only_a_test_of_the_first_argument_is_stepped_over() {
        // test %rsi,%rsi; je; push %rbp: the probe sits on the `je`, which runs for every call.
        let mut bytes = FREE.to_vec();
        bytes[2] = 0xf6;
        assert_eq!(place(&bytes, FREE_LIKE).offset, 3);
        // ... and only by a probe that ignores NULL.
        let needs = ProbeNeeds {
            ignores_null_first_argument: false,
            ..FREE_LIKE
        };
        assert_eq!(place(&FREE, needs).offset, 3);
    }

    const MALLOC_LIKE: ProbeNeeds = ProbeNeeds {
        returns: true,
        ignores_null_first_argument: false,
        arguments: 1,
    };

    #[test]
    fn a_return_probe_moves_only_where_rsp_is_as_at_the_entry() {
        // endbr64; push %rbx: the push has not run yet at the probe.
        let point = place(&[0xf3, 0x0f, 0x1e, 0xfa, 0x53, 0xc3], MALLOC_LIKE);
        assert_eq!(point.offset, 4, "{point}");
        // sub $8,%rsp; jmp: fine for an entry probe alone, not for a return probe.
        let bytes = [0x48, 0x83, 0xec, 0x08, 0xeb, 0x00, 0xc3];
        assert_eq!(place(&bytes, MALLOC_LIKE).offset, 0);
        assert_eq!(place(&bytes, FREE_LIKE).offset, 4);
        // add $8,%rsp; jmp: the stack above the entry's is not the function's to probe.
        let bytes = [0x48, 0x83, 0xc4, 0x08, 0xeb, 0x00, 0xc3];
        assert_eq!(place(&bytes, FREE_LIKE).offset, 0);
    }

    /// mimalloc's malloc: mov 0xb449(%rip),%rax; mov %rdi,%rsi; mov %fs:(%rax),%rdi;
    /// cmp $0x400,%rsi; ja.
    const MOVES_ITS_SIZE: [u8; 24] = [
        0x48, 0x8b, 0x05, 0x49, 0xb4, 0x00, 0x00, 0x48, 0x89, 0xfe, 0x64, 0x48, 0x8b, 0x38, 0x48,
        0x81, 0xfe, 0x00, 0x04, 0x00, 0x00, 0x77, 0x20, 0xc3,
    ];

    #[test]
    fn an_argument_moved_to_another_register_is_read_there() {
        let point = place(&MOVES_ITS_SIZE, MALLOC_LIKE);
        assert_eq!(point.offset, 21, "{point}");
        assert_eq!(point.arguments.0[0], Register::RSI, "{point}");
        assert!(
            point.reason.contains("argument 1 read from %rsi"),
            "{point}"
        );
    }

    #[test]
    fn the_cookie_says_where_each_argument_is_read() {
        assert_eq!(ArgumentHomes::default().cookie(), 0, "at the entry");
        let point = place(&MOVES_ITS_SIZE, MALLOC_LIKE);
        let cookie = point.arguments.cookie();
        assert_eq!(arguments::home(cookie, 0), Home::Rsi);
        assert_eq!(arguments::home(cookie, 1), Home::Own);
    }

    #[test]
    fn an_overwritten_argument_keeps_the_entry() {
        // xor %edi,%edi; ja
        let point = place(&[0x31, 0xff, 0x77, 0x00, 0xc3], MALLOC_LIKE);
        assert_eq!(point.offset, 0, "{point}");
        assert!(!point.emulated, "xor is single-stepped: {point}");
        assert!(point.reason.contains("overwritten"), "{point}");
        // The same prefix, for a probe that reads no argument (a return probe alone).
        let needs = ProbeNeeds {
            arguments: 0,
            ..MALLOC_LIKE
        };
        assert_eq!(place(&[0x31, 0xff, 0x77, 0x00, 0xc3], needs).offset, 2);
    }

    #[test]
    fn endbr64_is_stepped_over_onto_an_emulated_instruction_only() {
        // endbr64; push %rbx
        assert_eq!(
            place(&[0xf3, 0x0f, 0x1e, 0xfa, 0x53, 0xc3], FREE_LIKE).offset,
            4
        );
        // endbr64; mov %rdi,%rax
        let bytes = [0xf3, 0x0f, 0x1e, 0xfa, 0x48, 0x89, 0xf8, 0xc3];
        assert_eq!(place(&bytes, FREE_LIKE).offset, 0);
    }

    #[test]
    fn callees_are_named_through_their_addresses() {
        // call 0x2000; jmp 0x3000
        let bytes = [0xe8, 0xfb, 0x0f, 0x00, 0x00, 0xe9, 0xf6, 0x1f, 0x00, 0x00];
        let names = HashMap::from([(0x2000, "malloc".to_owned()), (0x3000, "free".to_owned())]);
        let code = FunctionCode {
            address: 0x1000,
            bytes: &bytes,
        };
        assert_eq!(callees(code, &names), ["malloc", "free"]);
    }

    #[test]
    fn a_plt_stub_names_its_got_slot() {
        // endbr64; bnd jmp *0x2ff2(%rip) at 0x1000: the slot is 0x1000 + 4 + 7 + 0x2ff2.
        let bytes = [
            0xf3, 0x0f, 0x1e, 0xfa, 0xf2, 0xff, 0x25, 0xf2, 0x2f, 0x00, 0x00,
        ];
        let code = FunctionCode {
            address: 0x1000,
            bytes: &bytes,
        };
        assert_eq!(plt_slot(code), Some(0x1000 + 11 + 0x2ff2));
    }
}
