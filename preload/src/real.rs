//! The next definitions of the symbols this library interposes, found with
//! `dlsym(RTLD_NEXT, ...)` on first use.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::atomic::{AtomicPtr, Ordering};

use libc::pid_t;

pub type GetenvFn = unsafe extern "C" fn(*const c_char) -> *mut c_char;
pub type ExecveFn =
    unsafe extern "C" fn(*const c_char, *const *const c_char, *const *const c_char) -> c_int;
pub type FexecveFn =
    unsafe extern "C" fn(c_int, *const *const c_char, *const *const c_char) -> c_int;
pub type ExecvFn = unsafe extern "C" fn(*const c_char, *const *const c_char) -> c_int;
pub type PosixSpawnFn = unsafe extern "C" fn(
    *mut pid_t,
    *const c_char,
    *const libc::posix_spawn_file_actions_t,
    *const libc::posix_spawnattr_t,
    *const *mut c_char,
    *const *mut c_char,
) -> c_int;

/// A libc symbol resolved once and then read with one relaxed load.
pub struct NextSymbol {
    name: &'static CStr,
    address: AtomicPtr<c_void>,
}

impl NextSymbol {
    const fn new(name: &'static CStr) -> NextSymbol {
        NextSymbol {
            name,
            address: AtomicPtr::new(std::ptr::null_mut()),
        }
    }

    /// The address of the next definition, or null when there is none.
    #[inline]
    fn address(&self) -> *mut c_void {
        let address = self.address.load(Ordering::Relaxed);
        if !address.is_null() {
            return address;
        }
        // SAFETY: `name` is NUL-terminated; RTLD_NEXT asks for the definition after this
        // library's own in the lookup order.
        let found = unsafe { libc::dlsym(libc::RTLD_NEXT, self.name.as_ptr()) };
        self.address.store(found, Ordering::Relaxed);
        found
    }
}

static GETENV: NextSymbol = NextSymbol::new(c"getenv");
static EXECVE: NextSymbol = NextSymbol::new(c"execve");
static EXECVPE: NextSymbol = NextSymbol::new(c"execvpe");
static FEXECVE: NextSymbol = NextSymbol::new(c"fexecve");
static EXECV: NextSymbol = NextSymbol::new(c"execv");
static EXECVP: NextSymbol = NextSymbol::new(c"execvp");
static POSIX_SPAWN: NextSymbol = NextSymbol::new(c"posix_spawn");
static POSIX_SPAWNP: NextSymbol = NextSymbol::new(c"posix_spawnp");

/// Returns libc's `getenv`, or a scan of `environ` if no next definition exists.
#[inline]
pub fn getenv() -> GetenvFn {
    let address = GETENV.address();
    if address.is_null() {
        return scan_environ;
    }
    // SAFETY: the symbol named `getenv` has the C signature of GetenvFn.
    unsafe { std::mem::transmute::<*mut c_void, GetenvFn>(address) }
}

macro_rules! next_fn {
    ($vis:vis fn $name:ident -> $ty:ty = $symbol:ident) => {
        /// Returns the next definition, or `None` when libc has none.
        $vis fn $name() -> Option<$ty> {
            let address = $symbol.address();
            if address.is_null() {
                return None;
            }
            // SAFETY: the symbol has the C signature of the function pointer type, as
            // declared in glibc's and musl's headers.
            Some(unsafe { std::mem::transmute::<*mut c_void, $ty>(address) })
        }
    };
}

next_fn!(pub fn execve -> ExecveFn = EXECVE);
next_fn!(pub fn execvpe -> ExecveFn = EXECVPE);
next_fn!(pub fn fexecve -> FexecveFn = FEXECVE);
next_fn!(pub fn execv -> ExecvFn = EXECV);
next_fn!(pub fn execvp -> ExecvFn = EXECVP);
next_fn!(pub fn posix_spawn -> PosixSpawnFn = POSIX_SPAWN);
next_fn!(pub fn posix_spawnp -> PosixSpawnFn = POSIX_SPAWNP);

extern "C" {
    static environ: *const *const c_char;
}

/// Returns the current `environ` array.
pub fn environ_ptr() -> *const *const c_char {
    // SAFETY: reading the `environ` pointer itself; the C runtime always defines it.
    unsafe { environ }
}

/// Looks `name` up in `environ`, as libc's `getenv` does.
unsafe extern "C" fn scan_environ(name: *const c_char) -> *mut c_char {
    if name.is_null() {
        return std::ptr::null_mut();
    }
    // SAFETY: the caller passes a NUL-terminated name.
    let name = unsafe { CStr::from_ptr(name) }.to_bytes();
    let mut entry = environ_ptr();
    if entry.is_null() {
        return std::ptr::null_mut();
    }
    // SAFETY: `environ` is a NULL-terminated array of NUL-terminated "NAME=VALUE" strings.
    unsafe {
        while !(*entry).is_null() {
            let bytes = CStr::from_ptr(*entry).to_bytes();
            if bytes.len() > name.len() && bytes.starts_with(name) && bytes[name.len()] == b'=' {
                return (*entry).add(name.len() + 1).cast_mut();
            }
            entry = entry.add(1);
        }
    }
    std::ptr::null_mut()
}
