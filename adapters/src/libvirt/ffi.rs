//! The libvirt calls the safe `virt` 0.5 API lacks, wrapped once and audited here.
//!
//! `virt` 0.5 exposes `virConnectGetAllDomainStats` only as raw record pointers (and never
//! frees the records), has no block I/O tune or blkio parameter calls, and can only silence
//! libvirt's error handler, not route it to `tracing`. Each function
//! below owns every pointer it touches for the duration of the call, copies results into
//! Rust values, and frees what libvirt allocated before returning. The crate denies unsafe
//! code; this module is the only place that allows it.
#![allow(unsafe_code)]

use std::{
    ffi::{c_void, CStr, CString},
    os::raw::{c_char, c_int},
    ptr,
};

use virt::{
    connect::Connect,
    domain::Domain,
    error::{Error as VirtError, ErrorDomainEnum, ErrorNumberEnum},
};
use virt_sys as sys;

/// A typed parameter value copied out of libvirt.
#[derive(Debug, Clone, PartialEq)]
pub enum Param {
    Int(i32),
    UInt(u32),
    LLong(i64),
    ULLong(u64),
    Double(f64),
    Bool(bool),
    String(String),
}

impl Param {
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Param::Int(v) => u64::try_from(v).ok(),
            Param::UInt(v) => Some(u64::from(v)),
            Param::LLong(v) => u64::try_from(v).ok(),
            Param::ULLong(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Param::String(s) => Some(s),
            _ => None,
        }
    }
}

pub type Params = Vec<(String, Param)>;

/// One domain's record from the bulk stats call.
#[derive(Debug, Clone)]
pub struct DomainStats {
    pub uuid: String,
    /// The running instance's id; a restarted domain gets a new one.
    pub id: Option<u32>,
    pub params: Params,
}

fn last_error() -> VirtError {
    VirtError::last_error()
}

fn c_string(s: &str) -> Result<CString, VirtError> {
    // Disk names and parameter names come from libvirt or our own constants; an interior NUL
    // cannot occur, but is reported rather than panicking.
    CString::new(s).map_err(|_| last_error())
}

/// Copies `n` typed parameters. Safety: `params` points to `n` initialised parameters.
unsafe fn copy_params(params: *const sys::virTypedParameter, n: c_int) -> Params {
    let mut out = Vec::with_capacity(n.max(0) as usize);
    for i in 0..n.max(0) as usize {
        let p = &*params.add(i);
        let name = CStr::from_ptr(p.field.as_ptr())
            .to_string_lossy()
            .into_owned();
        let value = match p.type_ as u32 {
            sys::VIR_TYPED_PARAM_INT => Param::Int(p.value.i),
            sys::VIR_TYPED_PARAM_UINT => Param::UInt(p.value.ui),
            sys::VIR_TYPED_PARAM_LLONG => Param::LLong(p.value.l),
            sys::VIR_TYPED_PARAM_ULLONG => Param::ULLong(p.value.ul),
            sys::VIR_TYPED_PARAM_DOUBLE => Param::Double(p.value.d),
            sys::VIR_TYPED_PARAM_BOOLEAN => Param::Bool(p.value.b != 0),
            sys::VIR_TYPED_PARAM_STRING if !p.value.s.is_null() => {
                Param::String(CStr::from_ptr(p.value.s).to_string_lossy().into_owned())
            }
            _ => continue,
        };
        out.push((name, value));
    }
    out
}

/// `virConnectGetAllDomainStats`: one call for every domain's stats.
pub fn all_domain_stats(
    conn: &Connect,
    stats: u32,
    flags: u32,
) -> Result<Vec<DomainStats>, VirtError> {
    let mut records: *mut sys::virDomainStatsRecordPtr = ptr::null_mut();
    // Safety: conn is a live connection; libvirt allocates `records` (NULL-terminated) and we
    // free it with virDomainStatsRecordListFree after copying.
    let n = unsafe { sys::virConnectGetAllDomainStats(conn.as_ptr(), stats, &mut records, flags) };
    if n < 0 {
        return Err(last_error());
    }
    let mut out = Vec::with_capacity(n as usize);
    for i in 0..n as usize {
        // Safety: i < n, and each record and its domain stay valid until the list is freed.
        unsafe {
            let record = *records.add(i);
            let dom = (*record).dom;
            let mut uuid_buf = [0 as c_char; sys::VIR_UUID_STRING_BUFLEN as usize];
            let uuid = if sys::virDomainGetUUIDString(dom, uuid_buf.as_mut_ptr()) == 0 {
                CStr::from_ptr(uuid_buf.as_ptr())
                    .to_string_lossy()
                    .into_owned()
            } else {
                String::new()
            };
            let id = sys::virDomainGetID(dom);
            out.push(DomainStats {
                uuid,
                id: (id != u32::MAX).then_some(id),
                params: copy_params((*record).params, (*record).nparams),
            });
        }
    }
    if !records.is_null() {
        // Safety: the list came from virConnectGetAllDomainStats and is freed once.
        unsafe { sys::virDomainStatsRecordListFree(records) };
    }
    Ok(out)
}

/// Calls a libvirt getter that follows the "ask for the count, then fill" protocol.
fn get_params(
    count: impl Fn(&mut c_int) -> c_int,
    fill: impl Fn(*mut sys::virTypedParameter, &mut c_int) -> c_int,
) -> Result<Params, VirtError> {
    let mut n: c_int = 0;
    if count(&mut n) < 0 {
        return Err(last_error());
    }
    if n <= 0 {
        return Ok(Vec::new());
    }
    // Safety: a zeroed virTypedParameter is a valid "empty" parameter (no string owned).
    let mut params: Vec<sys::virTypedParameter> =
        (0..n).map(|_| unsafe { std::mem::zeroed() }).collect();
    if fill(params.as_mut_ptr(), &mut n) < 0 {
        return Err(last_error());
    }
    // Safety: libvirt initialised the first n parameters; Clear frees their strings.
    let out = unsafe { copy_params(params.as_ptr(), n) };
    unsafe { sys::virTypedParamsClear(params.as_mut_ptr(), n) };
    Ok(out)
}

/// Builds a libvirt-allocated parameter list, calls `set` with it, and frees it.
fn with_params(
    values: &[(&str, Param)],
    set: impl FnOnce(*mut sys::virTypedParameter, c_int) -> c_int,
) -> Result<(), VirtError> {
    let mut params: sys::virTypedParameterPtr = ptr::null_mut();
    let mut n: c_int = 0;
    let mut max: c_int = 0;
    let mut added = 0;
    for (name, value) in values {
        let name = c_string(name)?;
        // Safety: params/n/max describe a list owned by libvirt, grown by these calls.
        let rc = unsafe {
            match *value {
                Param::ULLong(v) => {
                    sys::virTypedParamsAddULLong(&mut params, &mut n, &mut max, name.as_ptr(), v)
                }
                Param::UInt(v) => {
                    sys::virTypedParamsAddUInt(&mut params, &mut n, &mut max, name.as_ptr(), v)
                }
                _ => -1,
            }
        };
        if rc < 0 {
            unsafe { sys::virTypedParamsFree(params, n) };
            return Err(last_error());
        }
        added += 1;
    }
    let rc = if added == 0 { 0 } else { set(params, n) };
    let err = (rc < 0).then(last_error);
    // Safety: freed once, after the call that used it.
    unsafe { sys::virTypedParamsFree(params, n) };
    err.map_or(Ok(()), Err)
}

pub fn block_io_tune(dom: &Domain, disk: &str, flags: u32) -> Result<Params, VirtError> {
    let disk = c_string(disk)?;
    // Safety: dom is live; disk outlives both calls; buffers are sized by libvirt's count.
    get_params(
        |n| unsafe {
            sys::virDomainGetBlockIoTune(dom.as_ptr(), disk.as_ptr(), ptr::null_mut(), n, flags)
        },
        |p, n| unsafe { sys::virDomainGetBlockIoTune(dom.as_ptr(), disk.as_ptr(), p, n, flags) },
    )
}

pub fn set_block_io_tune(
    dom: &Domain,
    disk: &str,
    values: &[(&str, u64)],
    flags: u32,
) -> Result<(), VirtError> {
    let disk = c_string(disk)?;
    let values: Vec<(&str, Param)> = values
        .iter()
        .map(|(k, v)| (*k, Param::ULLong(*v)))
        .collect();
    with_params(&values, |p, n| unsafe {
        sys::virDomainSetBlockIoTune(dom.as_ptr(), disk.as_ptr(), p, n, flags)
    })
}

pub fn blkio_parameters(dom: &Domain, flags: u32) -> Result<Params, VirtError> {
    get_params(
        |n| unsafe { sys::virDomainGetBlkioParameters(dom.as_ptr(), ptr::null_mut(), n, flags) },
        |p, n| unsafe { sys::virDomainGetBlkioParameters(dom.as_ptr(), p, n, flags) },
    )
}

pub fn set_blkio_weight(dom: &Domain, weight: u32, flags: u32) -> Result<(), VirtError> {
    with_params(&[("weight", Param::UInt(weight))], |p, n| unsafe {
        sys::virDomainSetBlkioParameters(dom.as_ptr(), p, n, flags)
    })
}

pub fn scheduler_parameters(dom: &Domain, flags: u32) -> Result<Params, VirtError> {
    get_params(
        |n| unsafe {
            // The scheduler type call is how libvirt reports the parameter count.
            let kind = sys::virDomainGetSchedulerType(dom.as_ptr(), n);
            if kind.is_null() {
                return -1;
            }
            libc_free(kind);
            0
        },
        |p, n| unsafe { sys::virDomainGetSchedulerParametersFlags(dom.as_ptr(), p, n, flags) },
    )
}

pub fn set_cpu_shares(dom: &Domain, shares: u64, flags: u32) -> Result<(), VirtError> {
    with_params(&[("cpu_shares", Param::ULLong(shares))], |p, n| unsafe {
        sys::virDomainSetSchedulerParametersFlags(dom.as_ptr(), p, n, flags)
    })
}

extern "C" {
    #[link_name = "free"]
    fn c_free(ptr: *mut std::ffi::c_void);
}

/// Frees a string libvirt allocated with malloc. Safety: `p` came from libvirt.
unsafe fn libc_free(p: *mut c_char) {
    c_free(p.cast());
}

/// Registers libvirt's default event loop and runs it on a dedicated thread, once per
/// process. Keepalive and connection-close detection need a running event loop.
pub fn start_event_loop() -> Result<(), VirtError> {
    use std::sync::OnceLock;
    static STARTED: OnceLock<Result<(), String>> = OnceLock::new();
    let started = STARTED.get_or_init(|| {
        // Safety: called once, before any connection is opened by this adapter.
        if unsafe { sys::virEventRegisterDefaultImpl() } < 0 {
            return Err(last_error().to_string());
        }
        std::thread::Builder::new()
            .name("libvirt-events".into())
            .spawn(|| loop {
                // Safety: the default implementation was registered above.
                if unsafe { sys::virEventRunDefaultImpl() } < 0 {
                    tracing::warn!(error = %last_error(), "libvirt event loop iteration failed");
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
            })
            .map(drop)
            .map_err(|e| e.to_string())
    });
    match started {
        Ok(()) => Ok(()),
        Err(message) => {
            tracing::warn!(%message, "libvirt event loop unavailable; keepalive disabled");
            Err(last_error())
        }
    }
}

/// Replaces libvirt's default error handler, which prints every error to stderr, including
/// the ones the adapter expects and handles (a domain with no Plumbline record answers every
/// metadata read with "metadata not found"). The failing call still returns its error, which
/// the adapter turns into a result; the handler only echoes it to `tracing`. Process-wide;
/// installed once, before the first connection opens.
pub fn route_errors_to_tracing() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    // Safety: `log_error` is a plain function that only reads the error it is given.
    INSTALLED.call_once(|| unsafe { sys::virSetErrorFunc(ptr::null_mut(), Some(log_error)) });
}

unsafe extern "C" fn log_error(_user_data: *mut c_void, error: sys::virErrorPtr) {
    // Safety: libvirt passes its error object, valid for the duration of the call.
    let Some(error) = (unsafe { error.as_ref() }) else {
        return;
    };
    let message = if error.message.is_null() {
        "(no message)".into()
    } else {
        // Safety: a non-null message is a NUL-terminated string owned by the error.
        unsafe { CStr::from_ptr(error.message) }.to_string_lossy()
    };
    let code = ErrorNumberEnum::from_raw(error.code as sys::virErrorNumber);
    let domain = ErrorDomainEnum::from_raw(error.domain as sys::virErrorDomain);
    // A panic must not unwind into libvirt's C frames.
    let _ = std::panic::catch_unwind(|| {
        // Reading the originals of a domain that has none: the usual case, not news.
        if error.code as u32 == sys::VIR_ERR_NO_DOMAIN_METADATA {
            tracing::trace!(%code, %domain, "libvirt: {message}");
        } else {
            tracing::debug!(%code, %domain, "libvirt: {message}");
        }
    });
}
