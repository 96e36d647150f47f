//! The JVMTI agent that installs the Java hook. [`crate::hooks`] puts
//! `-agentpath:<this library>=<hook jar>` first in `JAVA_TOOL_OPTIONS`, so a starting JVM loads this
//! library as a native agent and calls [`Agent_OnLoad`].
//!
//! A native agent, unlike `-javaagent`, does not add the `java.instrument` module, so the JVM
//! keeps mapping its module graph from the CDS archive and starts about as fast as without
//! the hook (see benchmark 14 in `docs/benchmarks.md`).
//!
//! - `Agent_OnLoad` requests the `can_redefine_classes` and `can_generate_breakpoint_events`
//!   capabilities, appends the jar to the boot class path and enables the `VMInit` event.
//! - At `VMInit`, after the system class loader is ready and before the program's `main` runs,
//!   the agent calls the jar's `Hook.install()`. It returns null when the hook stays inactive,
//!   else the resolving map, which the agent stores in
//!   `ProcessEnvironment.theUnmodifiableEnvironment`, the field `System.getenv` reads.
//! - When `java.lang.ProcessBuilder` is prepared (the `ClassPrepare` event, enabled only until
//!   then), before any of its code runs, the agent sets a JVMTI breakpoint at the start of its
//!   private `start(Redirect[])`, which `ProcessBuilder.start()`, `startPipeline` and
//!   `Runtime.exec` all call before `ProcessImpl.start`.
//! - At that breakpoint, the first time any thread starts a child, the agent calls
//!   `Hook.patchProcessImpl()`, makes java.base read the hook's module and open `java.lang` to
//!   it, redefines `java.lang.ProcessImpl` with the patched class file and clears the
//!   breakpoint. Other threads that reach the breakpoint meanwhile wait until this is done.
//!   The step waits for the first child because it costs a JVM about 10 ms of CPU (see
//!   benchmark 14): it makes java.base read the hook's module, which spins the JVM's first
//!   lambda classes. `ProcessImpl` itself is no trigger: JDK 25 prepares it at the first
//!   `System.getenv()`.
//!
//! Every failure prints one stderr line and leaves the JVM running without the hook, so the
//! program reads references. The JNI and JVMTI functions are called through their function
//! tables by the slot numbers that `jni.h` and `jvmti.h` fix (JNI 9, JVMTI 9).

use std::ffi::{c_char, c_void, CStr};
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};

/// `JNIEnv *`: a pointer to the pointer to the JNI function table.
type JniEnv = *mut *const *const c_void;
/// `jvmtiEnv *`: a pointer to the pointer to the JVMTI function table.
type JvmtiEnv = *mut *const *const c_void;
/// `JavaVM *`: a pointer to the pointer to the invocation function table.
type JavaVm = *mut *const *const c_void;
type JObject = *mut c_void;
type JInt = i32;

const JNI_OK: JInt = 0;
const JVMTI_VERSION_9: JInt = 0x3009_0000;
const JVMTI_DISABLE: JInt = 0;
const JVMTI_ENABLE: JInt = 1;
const JVMTI_EVENT_VM_INIT: JInt = 50;
const JVMTI_EVENT_CLASS_PREPARE: JInt = 56;
const JVMTI_EVENT_BREAKPOINT: JInt = 62;
/// Slots of the callbacks in `jvmtiEventCallbacks`: the event number minus 50.
const CLASS_PREPARE_CALLBACK: usize = 6;
const BREAKPOINT_CALLBACK: usize = 12;
const PROCESS_BUILDER_SIGNATURE: &[u8] = b"Ljava/lang/ProcessBuilder;";
/// The method of `ProcessBuilder` that every child start goes through before it calls
/// `ProcessImpl.start`.
const START_NAME: &[u8] = b"start";
const START_DESCRIPTOR: &[u8] = b"([Ljava/lang/ProcessBuilder$Redirect;)Ljava/lang/Process;";
/// Bits of `can_redefine_classes` and `can_generate_breakpoint_events` in the first word of
/// `jvmtiCapabilities`.
const CAN_REDEFINE_CLASSES: u32 = 1 << 9;
const CAN_GENERATE_BREAKPOINT_EVENTS: u32 = 1 << 19;

/// Slots of the invocation interface (`JNIInvokeInterface_`).
const VM_GET_ENV: usize = 6;

/// Slots of the JNI function table (`JNINativeInterface_`).
const JNI_FIND_CLASS: usize = 6;
const JNI_EXCEPTION_OCCURRED: usize = 15;
const JNI_EXCEPTION_CLEAR: usize = 17;
const JNI_DELETE_LOCAL_REF: usize = 23;
const JNI_GET_OBJECT_CLASS: usize = 31;
const JNI_GET_METHOD_ID: usize = 33;
const JNI_CALL_OBJECT_METHOD_A: usize = 36;
const JNI_GET_STRING_UTF_CHARS: usize = 169;
const JNI_RELEASE_STRING_UTF_CHARS: usize = 170;
const JNI_NEW_GLOBAL_REF: usize = 21;
const JNI_GET_STATIC_METHOD_ID: usize = 113;
const JNI_CALL_STATIC_OBJECT_METHOD_A: usize = 116;
const JNI_GET_STATIC_FIELD_ID: usize = 144;
const JNI_SET_STATIC_OBJECT_FIELD: usize = 154;
const JNI_GET_ARRAY_LENGTH: usize = 171;
const JNI_GET_OBJECT_ARRAY_ELEMENT: usize = 173;
const JNI_GET_BYTE_ARRAY_REGION: usize = 200;
const JNI_EXCEPTION_CHECK: usize = 228;

/// Slots of the JVMTI function table (`jvmtiInterface_1_`): the function number minus one.
const JVMTI_SET_EVENT_NOTIFICATION_MODE: usize = 1;
const JVMTI_SET_BREAKPOINT: usize = 37;
const JVMTI_CLEAR_BREAKPOINT: usize = 38;
const JVMTI_DEALLOCATE: usize = 46;
const JVMTI_GET_CLASS_SIGNATURE: usize = 47;
const JVMTI_GET_CLASS_METHODS: usize = 51;
const JVMTI_GET_METHOD_NAME: usize = 63;
const JVMTI_GET_LOADED_CLASSES: usize = 77;
const JVMTI_REDEFINE_CLASSES: usize = 86;
const JVMTI_ADD_MODULE_READS: usize = 93;
const JVMTI_ADD_MODULE_OPENS: usize = 95;
const JVMTI_SET_EVENT_CALLBACKS: usize = 121;
const JVMTI_ADD_CAPABILITIES: usize = 141;
const JVMTI_ADD_TO_BOOTSTRAP_CLASS_LOADER_SEARCH: usize = 148;

/// Number of slots passed to `SetEventCallbacks`; JDK 17 and 25 define fewer, and the JVM
/// copies only as many as it knows.
const CALLBACK_SLOTS: usize = 64;

/// Positions in the array that `Hook.install()` returns.
const INSTALL_PROCESS_ENVIRONMENT: JInt = 0;
const INSTALL_ENVIRONMENT_MAP: JInt = 1;
const INSTALL_JAVA_BASE: JInt = 2;
const INSTALL_HOOK_MODULE: JInt = 3;

/// An entry of `jvmtiEventCallbacks`: a callback of the event's own type, or null.
type EventCallback = *const c_void;

/// Global references that `Hook.install()` returned, kept for the `ProcessImpl` patch.
/// The hook jar's path from `-agentpath`, for the messages of the `VMInit` event.
static JAR_PATH: OnceLock<String> = OnceLock::new();
static HOOK_CLASS: AtomicPtr<c_void> = AtomicPtr::new(ptr::null_mut());
static JAVA_BASE: AtomicPtr<c_void> = AtomicPtr::new(ptr::null_mut());
static HOOK_MODULE: AtomicPtr<c_void> = AtomicPtr::new(ptr::null_mut());
/// Set by the first thread that arms the breakpoint, so it is set once.
static START_ARMED: AtomicBool = AtomicBool::new(false);
/// The `jmethodID` of `ProcessBuilder.start(Redirect[])` once the breakpoint is armed.
static START_METHOD: AtomicPtr<c_void> = AtomicPtr::new(ptr::null_mut());
/// Whether the `ProcessImpl` patch has run, successfully or not. Threads that reach the
/// breakpoint while another one patches wait on this lock.
static PROCESS_IMPL_PATCHED: Mutex<bool> = Mutex::new(false);

#[repr(C)]
struct ClassDefinition {
    klass: JObject,
    class_byte_count: JInt,
    class_bytes: *const u8,
}

/// Returns slot `index` of the function table behind `env`, as the function type `F`.
///
/// # Safety
/// `env` must be a live JNI, JVMTI or invocation environment whose table has `index`, and `F`
/// must be the `extern "system"` type of that slot.
unsafe fn slot<F: Copy>(env: *mut *const *const c_void, index: usize) -> F {
    // SAFETY: the caller guarantees the table and the slot's type; a function pointer has the
    // size of a data pointer on every platform the JVM runs on.
    unsafe { std::mem::transmute_copy(&*(*env).add(index)) }
}

/// The JVM calls this when it loads the library through `-agentpath`. It returns `JNI_OK`
/// even when the hook cannot be prepared, because any other value makes the JVM exit.
///
/// # Safety
/// Called by the JVM with its `JavaVM` and the text after `=` in the option, or null.
#[no_mangle]
pub unsafe extern "system" fn Agent_OnLoad(
    vm: JavaVm,
    options: *const c_char,
    _reserved: *mut c_void,
) -> JInt {
    crate::ffi::guard(JNI_OK, || {
        let settings = crate::settings::get();
        if !settings.enabled || settings.no_java {
            return JNI_OK;
        }
        if options.is_null() {
            crate::diag::line(
                "the Java hook was loaded without its jar (-agentpath:LIBRARY=JAR), so \
                 System.getenv returns references",
            );
            return JNI_OK;
        }
        // SAFETY: the JVM passes the option text as a NUL-terminated string.
        let jar = unsafe { CStr::from_ptr(options) };
        // SAFETY: `vm` is the JVM's own, valid during Agent_OnLoad.
        if let Err(problem) = unsafe { on_load(vm, jar) } {
            crate::diag::line(&format!(
                "the Java hook could not be loaded, so System.getenv returns references: \
                 {problem}"
            ));
        }
        JNI_OK
    })
}

/// # Safety
/// `vm` must be the JVM's `JavaVM` during `Agent_OnLoad`.
unsafe fn on_load(vm: JavaVm, jar: &CStr) -> Result<(), String> {
    type GetEnv = unsafe extern "system" fn(JavaVm, *mut JvmtiEnv, JInt) -> JInt;
    type AddCapabilities = unsafe extern "system" fn(JvmtiEnv, *const [u32; 4]) -> JInt;
    type AddToSearch = unsafe extern "system" fn(JvmtiEnv, *const c_char) -> JInt;
    type SetCallbacks =
        unsafe extern "system" fn(JvmtiEnv, *const [EventCallback; CALLBACK_SLOTS], JInt) -> JInt;

    let _ = JAR_PATH.set(crate::diag::printable(jar.to_bytes()));
    let mut jvmti: JvmtiEnv = ptr::null_mut();
    // SAFETY: for this block, `vm` and then `jvmti` are live environments, and each slot has the
    // type given above, as jni.h and jvmti.h declare it.
    unsafe {
        let status = slot::<GetEnv>(vm, VM_GET_ENV)(vm, &mut jvmti, JVMTI_VERSION_9);
        if status != JNI_OK || jvmti.is_null() {
            return Err(format!(
                "this JVM offers no JVMTI 9 environment (GetEnv returned {status})"
            ));
        }
        let capabilities = [
            CAN_REDEFINE_CLASSES | CAN_GENERATE_BREAKPOINT_EVENTS,
            0,
            0,
            0,
        ];
        check(
            "AddCapabilities(can_redefine_classes, can_generate_breakpoint_events)",
            slot::<AddCapabilities>(jvmti, JVMTI_ADD_CAPABILITIES)(jvmti, &capabilities),
        )?;
        check(
            "AddToBootstrapClassLoaderSearch",
            slot::<AddToSearch>(jvmti, JVMTI_ADD_TO_BOOTSTRAP_CLASS_LOADER_SEARCH)(
                jvmti,
                jar.as_ptr(),
            ),
        )
        .map_err(|problem| format!("{problem} for {}", crate::diag::printable(jar.to_bytes())))?;
        let mut callbacks: [EventCallback; CALLBACK_SLOTS] = [ptr::null(); CALLBACK_SLOTS];
        callbacks[0] = vm_init as EventCallback;
        callbacks[CLASS_PREPARE_CALLBACK] = class_prepare as EventCallback;
        callbacks[BREAKPOINT_CALLBACK] = breakpoint as EventCallback;
        let size = std::mem::size_of_val(&callbacks) as JInt;
        check(
            "SetEventCallbacks",
            slot::<SetCallbacks>(jvmti, JVMTI_SET_EVENT_CALLBACKS)(jvmti, &callbacks, size),
        )?;
        set_event(jvmti, JVMTI_EVENT_VM_INIT, true)?;
    }
    Ok(())
}

/// Enables or disables one event for all threads.
///
/// # Safety
/// `jvmti` must be a live JVMTI environment.
unsafe fn set_event(jvmti: JvmtiEnv, event: JInt, enable: bool) -> Result<(), String> {
    type SetMode = unsafe extern "system" fn(JvmtiEnv, JInt, JInt, JObject) -> JInt;
    let mode = if enable { JVMTI_ENABLE } else { JVMTI_DISABLE };
    // SAFETY: the slot has this type in jvmti.h, and a null thread means all threads.
    let error = unsafe {
        slot::<SetMode>(jvmti, JVMTI_SET_EVENT_NOTIFICATION_MODE)(
            jvmti,
            mode,
            event,
            ptr::null_mut(),
        )
    };
    check(
        &format!("SetEventNotificationMode({mode}, event {event})"),
        error,
    )
}

/// The `VMInit` event: installs the hook that the jar prepares.
unsafe extern "system" fn vm_init(jvmti: JvmtiEnv, jni: JniEnv, _thread: JObject) {
    crate::ffi::guard((), || {
        // SAFETY: the JVM passes live environments of the current thread to the event.
        if let Err(problem) = unsafe { install(jvmti, jni) } {
            let jar = JAR_PATH.get().map_or("(unknown)", String::as_str);
            crate::diag::line(&format!(
                "the Java hook from {jar} could not be installed, so System.getenv returns \
                 references: {problem}"
            ));
        }
    });
}

/// The JNI functions the agent calls, typed as jni.h declares them.
struct Jni(JniEnv);

impl Jni {
    /// Returns an error naming `what` and the exception when a Java exception is pending, and
    /// clears it.
    ///
    /// # Safety
    /// The environment must be live for the current thread.
    unsafe fn thrown(&self, what: &str) -> Result<(), String> {
        type ExceptionOccurred = unsafe extern "system" fn(JniEnv) -> JObject;
        type ExceptionClear = unsafe extern "system" fn(JniEnv);
        // SAFETY: the caller guarantees the environment; the slots have these types.
        unsafe {
            let exception = slot::<ExceptionOccurred>(self.0, JNI_EXCEPTION_OCCURRED)(self.0);
            if exception.is_null() {
                return Ok(());
            }
            slot::<ExceptionClear>(self.0, JNI_EXCEPTION_CLEAR)(self.0);
            let description = self.describe(exception);
            self.delete_local(exception);
            Err(format!("{what} threw {description}"))
        }
    }

    /// Returns `throwable.toString()`, which is the exception's class name followed by its
    /// message, or a placeholder when that call fails.
    ///
    /// # Safety
    /// The environment must be live for the current thread, with no exception pending, and
    /// `throwable` a live reference to a `Throwable`.
    unsafe fn describe(&self, throwable: JObject) -> String {
        type ExceptionCheck = unsafe extern "system" fn(JniEnv) -> u8;
        type ExceptionClear = unsafe extern "system" fn(JniEnv);
        type GetObjectClass = unsafe extern "system" fn(JniEnv, JObject) -> JObject;
        type GetMethodId =
            unsafe extern "system" fn(JniEnv, JObject, *const c_char, *const c_char) -> JObject;
        type CallObject =
            unsafe extern "system" fn(JniEnv, JObject, JObject, *const c_void) -> JObject;
        type GetUtfChars = unsafe extern "system" fn(JniEnv, JObject, *mut u8) -> *const c_char;
        type ReleaseUtfChars = unsafe extern "system" fn(JniEnv, JObject, *const c_char);
        const UNKNOWN: &str = "an exception whose description could not be read";
        // SAFETY: the caller guarantees the environment and the reference; the slots have
        // these types, and a method without arguments reads no argument array.
        unsafe {
            let failed = || {
                if slot::<ExceptionCheck>(self.0, JNI_EXCEPTION_CHECK)(self.0) != 0 {
                    slot::<ExceptionClear>(self.0, JNI_EXCEPTION_CLEAR)(self.0);
                    return true;
                }
                false
            };
            let class = slot::<GetObjectClass>(self.0, JNI_GET_OBJECT_CLASS)(self.0, throwable);
            if class.is_null() {
                return UNKNOWN.to_string();
            }
            let method = slot::<GetMethodId>(self.0, JNI_GET_METHOD_ID)(
                self.0,
                class,
                c"toString".as_ptr(),
                c"()Ljava/lang/String;".as_ptr(),
            );
            self.delete_local(class);
            if failed() || method.is_null() {
                return UNKNOWN.to_string();
            }
            let text = slot::<CallObject>(self.0, JNI_CALL_OBJECT_METHOD_A)(
                self.0,
                throwable,
                method,
                ptr::null(),
            );
            if failed() || text.is_null() {
                return UNKNOWN.to_string();
            }
            let chars = slot::<GetUtfChars>(self.0, JNI_GET_STRING_UTF_CHARS)(
                self.0,
                text,
                ptr::null_mut(),
            );
            let description = if chars.is_null() {
                failed();
                UNKNOWN.to_string()
            } else {
                let description = crate::diag::printable(CStr::from_ptr(chars).to_bytes());
                slot::<ReleaseUtfChars>(self.0, JNI_RELEASE_STRING_UTF_CHARS)(self.0, text, chars);
                description
            };
            self.delete_local(text);
            description
        }
    }

    /// Deletes a local reference that is no longer needed.
    ///
    /// # Safety
    /// The environment must be live for the current thread and `object` a local reference.
    unsafe fn delete_local(&self, object: JObject) {
        type DeleteLocalRef = unsafe extern "system" fn(JniEnv, JObject);
        // SAFETY: the caller guarantees the environment and the reference.
        unsafe { slot::<DeleteLocalRef>(self.0, JNI_DELETE_LOCAL_REF)(self.0, object) }
    }

    /// Calls the static method `name` with `descriptor` and no arguments on `class`.
    ///
    /// # Safety
    /// The environment must be live for the current thread and `class` a reference to a class.
    unsafe fn call_static(
        &self,
        class: JObject,
        name: &CStr,
        descriptor: &CStr,
    ) -> Result<JObject, String> {
        type GetMethodId =
            unsafe extern "system" fn(JniEnv, JObject, *const c_char, *const c_char) -> JObject;
        type CallStaticObject =
            unsafe extern "system" fn(JniEnv, JObject, JObject, *const c_void) -> JObject;
        let what = name.to_string_lossy();
        // SAFETY: the caller guarantees the environment and the class; the slots have these
        // types, and a method without arguments reads no argument array.
        unsafe {
            let method = slot::<GetMethodId>(self.0, JNI_GET_STATIC_METHOD_ID)(
                self.0,
                class,
                name.as_ptr(),
                descriptor.as_ptr(),
            );
            self.thrown(&format!("looking up Hook.{what}"))?;
            let result = slot::<CallStaticObject>(self.0, JNI_CALL_STATIC_OBJECT_METHOD_A)(
                self.0,
                class,
                method,
                ptr::null(),
            );
            self.thrown(&format!("Hook.{what}"))?;
            Ok(result)
        }
    }

    /// Returns element `index` of the object array `array`, which must not be null.
    ///
    /// # Safety
    /// The environment must be live for the current thread and `array` an `Object[]`.
    unsafe fn element(&self, array: JObject, index: JInt) -> Result<JObject, String> {
        type ArrayElement = unsafe extern "system" fn(JniEnv, JObject, JInt) -> JObject;
        // SAFETY: the caller guarantees the environment and the array; the slot has this type.
        let object = unsafe {
            slot::<ArrayElement>(self.0, JNI_GET_OBJECT_ARRAY_ELEMENT)(self.0, array, index)
        };
        // SAFETY: as above.
        unsafe { self.thrown("reading the result of Hook.install()")? };
        if object.is_null() {
            return Err(format!("Hook.install() returned null at index {index}"));
        }
        Ok(object)
    }

    /// Returns a global reference to `object`, valid until the JVM exits.
    ///
    /// # Safety
    /// The environment must be live for the current thread and `object` a live reference.
    unsafe fn global(&self, object: JObject) -> JObject {
        type NewGlobalRef = unsafe extern "system" fn(JniEnv, JObject) -> JObject;
        // SAFETY: the caller guarantees the environment and the reference.
        unsafe { slot::<NewGlobalRef>(self.0, JNI_NEW_GLOBAL_REF)(self.0, object) }
    }
}

/// # Safety
/// `jvmti` and `jni` must be the environments passed to the `VMInit` event.
unsafe fn install(jvmti: JvmtiEnv, jni: JniEnv) -> Result<(), String> {
    type FindClass = unsafe extern "system" fn(JniEnv, *const c_char) -> JObject;
    type GetFieldId =
        unsafe extern "system" fn(JniEnv, JObject, *const c_char, *const c_char) -> JObject;
    type SetStaticObject = unsafe extern "system" fn(JniEnv, JObject, JObject, JObject);

    let env = Jni(jni);
    // SAFETY: for this block, `jni` and `jvmti` are live for this thread during the event, each
    // slot has the type given above, as jni.h and jvmti.h declare it, and every object passed
    // on is a reference the JVM returned in this event.
    unsafe {
        let hook =
            slot::<FindClass>(jni, JNI_FIND_CLASS)(jni, c"dev/envproxy/javaagent/Hook".as_ptr());
        env.thrown("loading dev.envproxy.javaagent.Hook from the hook jar")?;
        // Hook.install() prints its own stderr line for any failure and returns null then.
        let installed = env.call_static(hook, c"install", c"()[Ljava/lang/Object;")?;
        if installed.is_null() {
            return Ok(());
        }

        // JNI sets a static final field as any other. ProcessEnvironment is initialised (the
        // hook has read System.getenv), and no compiled code has folded the field yet,
        // because the program's main has not run.
        let process_environment = env.element(installed, INSTALL_PROCESS_ENVIRONMENT)?;
        let map = env.element(installed, INSTALL_ENVIRONMENT_MAP)?;
        let field = slot::<GetFieldId>(jni, JNI_GET_STATIC_FIELD_ID)(
            jni,
            process_environment,
            c"theUnmodifiableEnvironment".as_ptr(),
            c"Ljava/util/Map;".as_ptr(),
        );
        env.thrown("looking up ProcessEnvironment.theUnmodifiableEnvironment")?;

        // The ProcessImpl patch is armed before System.getenv resolves, so that no child can
        // start with a resolved value in a JVM whose ProcessImpl was not patched.
        HOOK_CLASS.store(env.global(hook), Ordering::Release);
        JAVA_BASE.store(
            env.global(env.element(installed, INSTALL_JAVA_BASE)?),
            Ordering::Release,
        );
        HOOK_MODULE.store(
            env.global(env.element(installed, INSTALL_HOOK_MODULE)?),
            Ordering::Release,
        );
        set_event(jvmti, JVMTI_EVENT_CLASS_PREPARE, true)?;
        // ProcessBuilder may have been prepared before this event, by another agent.
        if let Some(builder) = find_loaded_class(jvmti, PROCESS_BUILDER_SIGNATURE)? {
            arm_start_breakpoint(jvmti, jni, builder);
        }

        slot::<SetStaticObject>(jni, JNI_SET_STATIC_OBJECT_FIELD)(
            jni,
            process_environment,
            field,
            map,
        );
        env.thrown("setting ProcessEnvironment.theUnmodifiableEnvironment")?;
    }
    Ok(())
}

/// Returns the loaded class whose JVM signature is `signature`, such as
/// `Ljava/lang/ProcessBuilder;`, when the JVM has loaded it already.
///
/// # Safety
/// `jvmti` must be the environment passed to the current event.
unsafe fn find_loaded_class(jvmti: JvmtiEnv, signature: &[u8]) -> Result<Option<JObject>, String> {
    type GetLoadedClasses =
        unsafe extern "system" fn(JvmtiEnv, *mut JInt, *mut *mut JObject) -> JInt;
    let mut count: JInt = 0;
    let mut classes: *mut JObject = ptr::null_mut();
    // SAFETY: the slot has this type in jvmti.h; the JVM fills `count` and `classes`, an array
    // it allocated, which is released below.
    unsafe {
        check(
            "GetLoadedClasses",
            slot::<GetLoadedClasses>(jvmti, JVMTI_GET_LOADED_CLASSES)(
                jvmti,
                &mut count,
                &mut classes,
            ),
        )?;
        let mut found = None;
        for index in 0..usize::try_from(count).unwrap_or(0) {
            let class = *classes.add(index);
            if has_signature(jvmti, class, signature) {
                found = Some(class);
                break;
            }
        }
        deallocate(jvmti, classes.cast());
        Ok(found)
    }
}

/// Releases memory that a JVMTI function allocated; null is allowed.
///
/// # Safety
/// `jvmti` must be live and `memory` null or a block that `jvmti` allocated.
unsafe fn deallocate(jvmti: JvmtiEnv, memory: *mut u8) {
    type Deallocate = unsafe extern "system" fn(JvmtiEnv, *mut u8) -> JInt;
    if !memory.is_null() {
        // SAFETY: as this function's contract states; the slot has this type in jvmti.h.
        unsafe { slot::<Deallocate>(jvmti, JVMTI_DEALLOCATE)(jvmti, memory) };
    }
}

/// Returns whether `class` has the JVM signature `signature`.
///
/// # Safety
/// `jvmti` must be live and `class` a reference to a class.
unsafe fn has_signature(jvmti: JvmtiEnv, class: JObject, signature: &[u8]) -> bool {
    type GetClassSignature =
        unsafe extern "system" fn(JvmtiEnv, JObject, *mut *mut c_char, *mut *mut c_char) -> JInt;
    let mut own: *mut c_char = ptr::null_mut();
    // SAFETY: the slot has this type in jvmti.h; the JVM allocates the signature, which is
    // released here, and a null generic pointer asks for no generic signature.
    unsafe {
        let error = slot::<GetClassSignature>(jvmti, JVMTI_GET_CLASS_SIGNATURE)(
            jvmti,
            class,
            &mut own,
            ptr::null_mut(),
        );
        if error != 0 || own.is_null() {
            return false;
        }
        let matches = CStr::from_ptr(own).to_bytes() == signature;
        deallocate(jvmti, own.cast());
        matches
    }
}

/// The `ClassPrepare` event, enabled until `ProcessBuilder` is prepared.
unsafe extern "system" fn class_prepare(
    jvmti: JvmtiEnv,
    jni: JniEnv,
    _thread: JObject,
    class: JObject,
) {
    crate::ffi::guard((), || {
        if START_ARMED.load(Ordering::Acquire) {
            return;
        }
        // SAFETY: the JVM passes live environments of the current thread and the prepared
        // class to the event.
        unsafe {
            if has_signature(jvmti, class, PROCESS_BUILDER_SIGNATURE) {
                arm_start_breakpoint(jvmti, jni, class);
            }
        }
    });
}

/// Sets the breakpoint at the start of `ProcessBuilder.start(Redirect[])`, once. When that
/// fails, patches `ProcessImpl` at once instead, before any child can start.
///
/// # Safety
/// `jvmti` and `jni` must be the environments passed to the current event, and `builder` a
/// reference to `java.lang.ProcessBuilder`, prepared and not yet initialised.
unsafe fn arm_start_breakpoint(jvmti: JvmtiEnv, jni: JniEnv, builder: JObject) {
    if START_ARMED.swap(true, Ordering::AcqRel) {
        return;
    }
    // SAFETY: as this function's contract states.
    unsafe {
        // A failure only leaves the event on, and `class_prepare` then returns at once.
        let _ = set_event(jvmti, JVMTI_EVENT_CLASS_PREPARE, false);
        if set_start_breakpoint(jvmti, builder).is_err() {
            patch_process_impl(jvmti, jni);
        }
    }
}

/// # Safety
/// As [`arm_start_breakpoint`].
unsafe fn set_start_breakpoint(jvmti: JvmtiEnv, builder: JObject) -> Result<(), String> {
    type SetBreakpoint = unsafe extern "system" fn(JvmtiEnv, JObject, i64) -> JInt;
    // SAFETY: as this function's contract states; the slot has this type in jvmti.h.
    unsafe {
        let method = find_method(jvmti, builder, START_NAME, START_DESCRIPTOR)?
            .ok_or("java.lang.ProcessBuilder has no method start(Redirect[])")?;
        START_METHOD.store(method, Ordering::Release);
        set_event(jvmti, JVMTI_EVENT_BREAKPOINT, true)?;
        check(
            "SetBreakpoint(ProcessBuilder.start)",
            slot::<SetBreakpoint>(jvmti, JVMTI_SET_BREAKPOINT)(jvmti, method, 0),
        )
    }
}

/// Returns the `jmethodID` of the method `name` with `descriptor` declared by `class`. Unlike
/// JNI's `GetMethodID`, this does not initialise the class.
///
/// # Safety
/// `jvmti` must be live and `class` a reference to a prepared class.
unsafe fn find_method(
    jvmti: JvmtiEnv,
    class: JObject,
    name: &[u8],
    descriptor: &[u8],
) -> Result<Option<JObject>, String> {
    type GetClassMethods =
        unsafe extern "system" fn(JvmtiEnv, JObject, *mut JInt, *mut *mut JObject) -> JInt;
    type GetMethodName = unsafe extern "system" fn(
        JvmtiEnv,
        JObject,
        *mut *mut c_char,
        *mut *mut c_char,
        *mut *mut c_char,
    ) -> JInt;
    let mut count: JInt = 0;
    let mut methods: *mut JObject = ptr::null_mut();
    // SAFETY: the slots have these types in jvmti.h; the JVM allocates the array and the
    // strings, which are released here, and a null generic pointer asks for no generic
    // signature.
    unsafe {
        check(
            "GetClassMethods(ProcessBuilder)",
            slot::<GetClassMethods>(jvmti, JVMTI_GET_CLASS_METHODS)(
                jvmti,
                class,
                &mut count,
                &mut methods,
            ),
        )?;
        let mut found = None;
        for index in 0..usize::try_from(count).unwrap_or(0) {
            let method = *methods.add(index);
            let mut method_name: *mut c_char = ptr::null_mut();
            let mut method_descriptor: *mut c_char = ptr::null_mut();
            let error = slot::<GetMethodName>(jvmti, JVMTI_GET_METHOD_NAME)(
                jvmti,
                method,
                &mut method_name,
                &mut method_descriptor,
                ptr::null_mut(),
            );
            let matches = error == 0
                && !method_name.is_null()
                && !method_descriptor.is_null()
                && CStr::from_ptr(method_name).to_bytes() == name
                && CStr::from_ptr(method_descriptor).to_bytes() == descriptor;
            deallocate(jvmti, method_name.cast());
            deallocate(jvmti, method_descriptor.cast());
            if matches {
                found = Some(method);
                break;
            }
        }
        deallocate(jvmti, methods.cast());
        Ok(found)
    }
}

/// The `Breakpoint` event: the first child start of this JVM patches `ProcessImpl`.
unsafe extern "system" fn breakpoint(
    jvmti: JvmtiEnv,
    jni: JniEnv,
    _thread: JObject,
    method: JObject,
    _location: i64,
) {
    crate::ffi::guard((), || {
        if method != START_METHOD.load(Ordering::Acquire) {
            return;
        }
        // SAFETY: the JVM passes live environments of the current thread to the event.
        unsafe { patch_process_impl(jvmti, jni) };
    });
}

/// Redefines `ProcessImpl` with the class file that `Hook.patchProcessImpl()` returns, once,
/// then clears the breakpoint. A thread that comes here while another one patches waits
/// until it is done, so that no child starts through the unpatched class. A failure gets one
/// stderr line.
///
/// # Safety
/// `jvmti` and `jni` must be the environments passed to the current event.
unsafe fn patch_process_impl(jvmti: JvmtiEnv, jni: JniEnv) {
    type ClearBreakpoint = unsafe extern "system" fn(JvmtiEnv, JObject, i64) -> JInt;
    let mut patched = PROCESS_IMPL_PATCHED
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if *patched {
        return;
    }
    *patched = true;
    // SAFETY: as this function's contract states; the slot has this type in jvmti.h.
    let outcome = unsafe {
        let redefined = redefine_process_impl(jvmti, jni);
        // A breakpoint left set, or the event left on, costs later child starts only the
        // return from `breakpoint`, so failures here are not reported.
        let method = START_METHOD.load(Ordering::Acquire);
        if !method.is_null() {
            let _ = set_event(jvmti, JVMTI_EVENT_BREAKPOINT, false);
            slot::<ClearBreakpoint>(jvmti, JVMTI_CLEAR_BREAKPOINT)(jvmti, method, 0);
        }
        redefined
    };
    drop(patched);
    if let Err(problem) = outcome {
        crate::diag::line(&format!(
            "the Java hook could not patch java.lang.ProcessImpl, so a child whose environment \
             a program filled from System.getenv receives values, not references: {problem}"
        ));
    }
}

/// # Safety
/// As [`patch_process_impl`].
unsafe fn redefine_process_impl(jvmti: JvmtiEnv, jni: JniEnv) -> Result<(), String> {
    type FindClass = unsafe extern "system" fn(JniEnv, *const c_char) -> JObject;
    type ArrayLength = unsafe extern "system" fn(JniEnv, JObject) -> JInt;
    type ByteRegion = unsafe extern "system" fn(JniEnv, JObject, JInt, JInt, *mut u8);
    type AddReads = unsafe extern "system" fn(JvmtiEnv, JObject, JObject) -> JInt;
    type AddOpens = unsafe extern "system" fn(JvmtiEnv, JObject, *const c_char, JObject) -> JInt;
    type Redefine = unsafe extern "system" fn(JvmtiEnv, JInt, *const ClassDefinition) -> JInt;

    let env = Jni(jni);
    let hook = HOOK_CLASS.load(Ordering::Acquire);
    let java_base = JAVA_BASE.load(Ordering::Acquire);
    let hook_module = HOOK_MODULE.load(Ordering::Acquire);
    // SAFETY: for this block, the environments are live for this thread during the event, each
    // slot has the type given above, as jni.h and jvmti.h declare it, and the references are
    // the global references that `install` stored before it enabled `ClassPrepare`.
    unsafe {
        // The class is about to be used by the child start that hit the breakpoint, so loading
        // and initialising it here changes nothing for the program.
        let process_impl =
            slot::<FindClass>(jni, JNI_FIND_CLASS)(jni, c"java/lang/ProcessImpl".as_ptr());
        env.thrown("loading java.lang.ProcessImpl")?;
        // Hook.patchProcessImpl() prints its own stderr line for any failure.
        let class_file = env.call_static(hook, c"patchProcessImpl", c"()[B")?;
        if class_file.is_null() {
            return Ok(());
        }
        let length = slot::<ArrayLength>(jni, JNI_GET_ARRAY_LENGTH)(jni, class_file);
        let mut bytes = vec![0u8; usize::try_from(length).unwrap_or(0)];
        slot::<ByteRegion>(jni, JNI_GET_BYTE_ARRAY_REGION)(
            jni,
            class_file,
            0,
            length,
            bytes.as_mut_ptr(),
        );
        env.thrown("copying the patched java.lang.ProcessImpl")?;

        // The patched ProcessImpl links to the hook's EnvironmentRedirects, and the hook looks
        // up ProcessEnvironment's own toEnvironmentBlock with a private lookup.
        check(
            "AddModuleReads(java.base, hook)",
            slot::<AddReads>(jvmti, JVMTI_ADD_MODULE_READS)(jvmti, java_base, hook_module),
        )?;
        check(
            "AddModuleOpens(java.base, java.lang, hook)",
            slot::<AddOpens>(jvmti, JVMTI_ADD_MODULE_OPENS)(
                jvmti,
                java_base,
                c"java.lang".as_ptr(),
                hook_module,
            ),
        )?;
        let definition = ClassDefinition {
            klass: process_impl,
            class_byte_count: length,
            class_bytes: bytes.as_ptr(),
        };
        check(
            "RedefineClasses(java.lang.ProcessImpl)",
            slot::<Redefine>(jvmti, JVMTI_REDEFINE_CLASSES)(jvmti, 1, &definition),
        )?;
    }
    Ok(())
}

fn check(call: &str, error: JInt) -> Result<(), String> {
    if error == 0 {
        Ok(())
    } else {
        Err(format!("{call} failed with JVMTI error {error}"))
    }
}
