//! Where in a function its probe sits, read from the function's first instructions.
//!
//! A uprobe replaces one instruction with a breakpoint. On a hit the kernel must then carry out
//! that instruction: a few kinds it emulates (x86: `push` of a register, `jmp`/`call`/`jcc` to
//! a relative target, `nop`), every other it single-steps out of line, which takes a second
//! trap. Under KVM an emulated hit costs ~0.6 µs and a single-stepped one ~9.8 µs (measured,
//! ../shared/toolchain.md). glibc's `free` starts with `test %rdi,%rdi`, and everything in
//! libstdc++ with `endbr64`: both single-stepped, on every call.
//!
//! So each probe point is chosen, conservatively:
//! - A function with a return probe stays at its entry: a uretprobe takes the return address
//!   from the top of the stack, which only holds it there.
//! - Otherwise the probe may move past a leading `endbr64` (a marker for indirect branches,
//!   with no effect) and, for a probe that ignores a NULL first argument, past `test %rdi,%rdi;
//!   je …` (free(NULL) does nothing, and the probe skipped it anyway). It moves only onto an
//!   emulated instruction, and only if no branch in the function lands on or before it: then
//!   the new point is reached exactly once per call that matters, with the arguments intact
//!   (`test` and `je` change no register).
//! - A C++ operator that only passes its work on, by calling or jumping to a probed function
//!   of the same kind (libstdc++'s `operator new` calls malloc, `operator delete` jumps to
//!   free), needs no probe of its own: every block it hands out or takes back is seen there.

use std::{collections::HashMap, fmt};

use iced_x86::{
    Code, Decoder, DecoderOptions, FlowControl, Instruction, Mnemonic, OpKind, Register,
};

/// A function's machine code, where it is loaded in its module's address space.
#[derive(Clone, Copy)]
pub struct FunctionCode<'a> {
    pub address: u64,
    pub bytes: &'a [u8],
}

/// Where a function's entry probe sits: `offset` bytes in, and why, for `--verbose`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryPoint {
    pub offset: u64,
    pub reason: String,
}

impl fmt::Display for EntryPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "+{}: {}", self.offset, self.reason)
    }
}

/// What a probe point may assume of its program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeNeeds {
    /// The function has a return probe: the entry probe must stay at the entry.
    pub returns: bool,
    /// The entry probe ignores a NULL first argument (free, operator delete).
    pub ignores_null_first_argument: bool,
}

/// Instructions decoded from the start; enough for any prologue we know.
const PROLOGUE: usize = 4;

/// The probe point of a function with the needs given.
pub fn entry_point(code: FunctionCode, needs: ProbeNeeds) -> EntryPoint {
    let body = decode(code);
    let instructions = &body[..body.len().min(PROLOGUE)];
    let Some(first) = instructions.first() else {
        return EntryPoint {
            offset: 0,
            reason: "no code to decode".into(),
        };
    };
    if is_emulated(first) {
        return entry("entry instruction is emulated", first);
    }
    let stay = |why: &str| EntryPoint {
        offset: 0,
        reason: format!(
            "{why}; entry instruction `{:?}` is single-stepped",
            first.mnemonic()
        ),
    };
    if needs.returns {
        return stay("a return probe needs the entry");
    }
    let mut at = 0;
    if first.mnemonic() == Mnemonic::Endbr64 {
        at += 1;
    }
    if needs.ignores_null_first_argument && tests_rdi_then_skips_if_zero(&instructions[at..]) {
        at += 2;
    }
    let Some(candidate) = instructions.get(at).filter(|_| at > 0) else {
        return stay("prologue of no known shape");
    };
    if !is_emulated(candidate) {
        return stay("no emulated instruction after the prologue");
    }
    let offset = candidate.ip() - code.address;
    let inside = code.address + 1..=candidate.ip();
    if body
        .iter()
        .any(|i| is_direct_branch(i) && inside.contains(&i.near_branch_target()))
    {
        return stay("a branch lands inside the prologue");
    }
    EntryPoint {
        offset,
        reason: format!(
            "moved past `{}` onto the emulated `{:?}`",
            instructions[..at]
                .iter()
                .map(|i| format!("{:?}", i.mnemonic()))
                .collect::<Vec<_>>()
                .join("; "),
            candidate.mnemonic()
        ),
    }
}

fn entry(reason: &str, first: &Instruction) -> EntryPoint {
    EntryPoint {
        offset: 0,
        reason: format!("{reason} (`{:?}`)", first.mnemonic()),
    }
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

/// `test %rdi,%rdi` then `je`/`jz`: the rest of the function runs only for a non-NULL first
/// argument.
fn tests_rdi_then_skips_if_zero(instructions: &[Instruction]) -> bool {
    let [test, jump, ..] = instructions else {
        return false;
    };
    test.mnemonic() == Mnemonic::Test
        && test.op0_register() == Register::RDI
        && test.op1_register() == Register::RDI
        && jump.mnemonic() == Mnemonic::Je
        && is_direct_branch(jump)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FREE_LIKE: ProbeNeeds = ProbeNeeds {
        returns: false,
        ignores_null_first_argument: true,
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
        assert!(point.reason.contains("emulated"), "{point}");
    }

    #[test]
    fn only_a_test_of_the_first_argument_is_skipped() {
        // test %rsi,%rsi; je; push %rbp
        let mut bytes = FREE.to_vec();
        bytes[2] = 0xf6;
        assert_eq!(place(&bytes, FREE_LIKE).offset, 0);
        // ... and only by a probe that ignores NULL.
        let needs = ProbeNeeds {
            ignores_null_first_argument: false,
            ..FREE_LIKE
        };
        assert_eq!(place(&FREE, needs).offset, 0);
    }

    #[test]
    fn a_return_probe_keeps_the_entry() {
        let needs = ProbeNeeds {
            returns: true,
            ..FREE_LIKE
        };
        assert_eq!(place(&FREE, needs).offset, 0);
        // endbr64; push %rbx
        assert_eq!(
            place(&[0xf3, 0x0f, 0x1e, 0xfa, 0x53, 0xc3], needs).offset,
            0
        );
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
