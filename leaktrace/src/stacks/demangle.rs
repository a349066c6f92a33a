//! Symbol names as people read them.
//!
//! C++ names go through the system's own demangler, libstdc++'s `__cxa_demangle` (the code
//! c++filt shares), loaded at run time where it is installed: cpp_demangle 0.5.1, which
//! addr2line uses, drops parameters of some template constructors
//! (`…C1IS3_EEmcRKS3_`, `basic_string(unsigned long, char, …)`, loses its `unsigned long`).
//! Rust names go through rustc-demangle; anything else through addr2line's choice.

use std::{
    borrow::Cow,
    ffi::{CStr, CString, c_char, c_int, c_void},
    sync::OnceLock,
};

use addr2line::gimli::{DW_LANG_Rust, DwLang};

/// `__cxa_demangle(mangled, buffer, length, status)`: a malloc'd name, or NULL.
type CxaDemangle =
    unsafe extern "C" fn(*const c_char, *mut c_char, *mut usize, *mut c_int) -> *mut c_char;

/// `name` demangled, knowing the language of the unit it comes from where DWARF says.
pub fn demangle(name: &str, language: Option<DwLang>) -> String {
    let rust = language == Some(DW_LANG_Rust) || rustc_demangle::try_demangle(name).is_ok();
    if !rust
        && name.starts_with("_Z")
        && let Some(demangled) = system_demangle(name)
    {
        return demangled;
    }
    addr2line::demangle_auto(Cow::Borrowed(name), language).into_owned()
}

/// libstdc++'s demangler, if the system has it.
fn system_demangle(name: &str) -> Option<String> {
    static CXA_DEMANGLE: OnceLock<Option<CxaDemangle>> = OnceLock::new();
    let demangler = (*CXA_DEMANGLE.get_or_init(load_cxa_demangle))?;
    let mangled = CString::new(name).ok()?;
    let mut status: c_int = 0;
    // SAFETY: a NUL-terminated name, no buffer (the function allocates its result with
    // malloc), and a status to write to.
    let result = unsafe {
        demangler(
            mangled.as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            &mut status,
        )
    };
    if result.is_null() {
        return None;
    }
    // SAFETY: a NUL-terminated string the function allocated with malloc, ours to free.
    let demangled = unsafe { CStr::from_ptr(result) }
        .to_string_lossy()
        .into_owned();
    // SAFETY: as above; nothing else holds it.
    unsafe { libc::free(result.cast::<c_void>()) };
    (status == 0).then_some(demangled)
}

fn load_cxa_demangle() -> Option<CxaDemangle> {
    // SAFETY: dlopen of a system library by name, kept open for the process's life; dlsym of
    // a function whose C signature is CxaDemangle's.
    unsafe {
        let library = libc::dlopen(
            c"libstdc++.so.6".as_ptr(),
            libc::RTLD_LAZY | libc::RTLD_LOCAL,
        );
        if library.is_null() {
            log::debug!("no libstdc++.so.6: C++ names demangled by cpp_demangle");
            return None;
        }
        let symbol = libc::dlsym(library, c"__cxa_demangle".as_ptr());
        (!symbol.is_null()).then(|| std::mem::transmute::<*mut c_void, CxaDemangle>(symbol))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_template_constructor_keeps_every_parameter() {
        let name = "_ZNSt7__cxx1112basic_stringIcSt11char_traitsIcESaIcEEC1IS3_EEmcRKS3_";
        let demangled = demangle(name, None);
        assert!(
            demangled.ends_with("(unsigned long, char, std::allocator<char> const&)"),
            "{demangled}"
        );
    }

    #[test]
    fn rust_names_lose_their_hash() {
        let name = "_ZN5alloc5alloc5alloc17h0123456789abcdefE";
        assert_eq!(demangle(name, None), "alloc::alloc::alloc");
        assert_eq!(demangle(name, Some(DW_LANG_Rust)), "alloc::alloc::alloc");
    }

    #[test]
    fn c_names_stay() {
        assert_eq!(demangle("malloc", None), "malloc");
    }
}
