//! Where an entry probe reads its function's arguments: the probe's cookie says.
//!
//! A probe placed past a function's entry may find an argument moved to another register
//! (mimalloc's malloc moves its size from %rdi to %rsi before its first jump). Userspace works
//! out where each argument lives there and attaches the probe with a cookie that says so:
//! [`BITS`] bits per argument, the first argument lowest. 0 is the argument's own register, so
//! a probe at an entry reads 0 there. The cookie's other bits are laid out in
//! [`crate::cookie`].

/// Bits of the cookie per argument.
pub const BITS: u32 = 4;

/// The registers an argument can be read from, as the cookie numbers them.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Home {
    /// The argument's own register in the x86-64 System V ABI (%rdi, %rsi, %rdx, …).
    Own = 0,
    Rdi,
    Rsi,
    Rdx,
    Rcx,
    R8,
    R9,
    Rax,
    Rbx,
    Rbp,
    R10,
    R11,
    R12,
    R13,
    R14,
    R15,
}

impl Home {
    /// Every home, by its number.
    const ALL: [Home; 16] = [
        Home::Own,
        Home::Rdi,
        Home::Rsi,
        Home::Rdx,
        Home::Rcx,
        Home::R8,
        Home::R9,
        Home::Rax,
        Home::Rbx,
        Home::Rbp,
        Home::R10,
        Home::R11,
        Home::R12,
        Home::R13,
        Home::R14,
        Home::R15,
    ];
}

/// The home of argument `index` (from 0) in `cookie`.
pub const fn home(cookie: u64, index: usize) -> Home {
    Home::ALL[((cookie >> (BITS as usize * index)) & ((1 << BITS) - 1)) as usize]
}

/// `cookie` with argument `index` read from `home`.
pub const fn with_home(cookie: u64, index: usize, home: Home) -> u64 {
    let shift = BITS as usize * index;
    (cookie & !(((1 << BITS) - 1) << shift)) | ((home as u64) << shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_argument_keeps_its_own_home() {
        let cookie = with_home(with_home(0, 0, Home::Rsi), 2, Home::R15);
        assert_eq!(home(cookie, 0), Home::Rsi);
        assert_eq!(home(cookie, 1), Home::Own);
        assert_eq!(home(cookie, 2), Home::R15, "the last home fits the bits");
        assert_eq!(home(with_home(cookie, 0, Home::Own), 0), Home::Own);
        for (number, home) in Home::ALL.iter().enumerate() {
            assert_eq!(*home as usize, number);
        }
    }
}
