//! NVRTC compilation of `kernels/*.cu` to a CUBIN for one architecture, cached on disk.
//!
//! The cache key is an FNV-1a hash of the source, the architecture and the compile options, so an
//! edited kernel or a different GPU compiles anew and an unchanged one loads in microseconds.
//! Files live in `$XDG_CACHE_HOME/switchyard/kernels` (or `~/.cache/switchyard/kernels`), named
//! `<kernel>-<arch>-<hash>.cubin` (`cuobjdump -sass` reads them).

use std::ffi::{CStr, CString};
use std::path::PathBuf;

use cudarc::nvrtc::sys;

use crate::error::{Error, Result};

/// The CUDA toolkit's include folder: `$CUDA_HOME/include`, `$CUDA_PATH/include`, or
/// `/usr/local/cuda/include` (NVRTC does not find `cuda_bf16.h` on its own).
pub fn cuda_include_dir() -> PathBuf {
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(v) = std::env::var_os(var) {
            return PathBuf::from(v).join("include");
        }
    }
    PathBuf::from("/usr/local/cuda/include")
}

/// Where compiled kernels are cached.
pub fn cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("switchyard").join("kernels")
}

/// Whether the NVRTC library can be loaded.
pub fn nvrtc_present() -> bool {
    // SAFETY: only probes for the shared library; no NVRTC symbol is called.
    unsafe { sys::is_culib_present() }
}

fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in *p {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The compile options for `arch` (e.g. `sm_90a`).
fn options(arch: &str) -> Vec<String> {
    vec![
        format!("--gpu-architecture={arch}"),
        format!("--include-path={}", cuda_include_dir().display()),
        "--std=c++17".into(),
        "-default-device".into(),
        "--use_fast_math".into(),
        "-lineinfo".into(),
    ]
}

/// Returns the CUBIN of `source` for `arch`, from the disk cache or freshly compiled (and then
/// stored). `name` only names the cache file and NVRTC's diagnostics.
pub fn cubin(name: &str, source: &str, arch: &str) -> Result<Vec<u8>> {
    let opts = options(arch);
    let key = fnv1a(&[
        source.as_bytes(),
        arch.as_bytes(),
        opts.join(" ").as_bytes(),
    ]);
    let path = cache_dir().join(format!("{name}-{arch}-{key:016x}.cubin"));
    if let Ok(bytes) = std::fs::read(&path) {
        return Ok(bytes);
    }
    let bytes = compile(name, source, &opts)?;
    // The cache is an optimisation: a read-only home still runs, it only compiles every time.
    if std::fs::create_dir_all(cache_dir()).is_ok() {
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        if std::fs::write(&tmp, &bytes).is_ok() {
            let _ = std::fs::rename(&tmp, &path);
        }
    }
    Ok(bytes)
}

fn check(r: sys::nvrtcResult, what: &str) -> Result<()> {
    if r == sys::nvrtcResult::NVRTC_SUCCESS {
        Ok(())
    } else {
        Err(Error::Device(format!("NVRTC {what}: {r:?}")))
    }
}

/// Compiles `source` with NVRTC and returns the CUBIN (the architecture must be a real one, `sm_*`).
pub fn compile(name: &str, source: &str, opts: &[String]) -> Result<Vec<u8>> {
    if !nvrtc_present() {
        return Err(Error::Device(
            "the NVRTC library (libnvrtc.so) was not found: install the CUDA toolkit or add it to LD_LIBRARY_PATH".into(),
        ));
    }
    let src = CString::new(source)
        .map_err(|_| Error::Device(format!("kernel {name} contains a NUL byte")))?;
    let cname = CString::new(format!("{name}.cu")).expect("kernel names have no NUL");
    let copts: Vec<CString> = opts
        .iter()
        .map(|o| CString::new(o.as_str()).expect("options have no NUL"))
        .collect();
    let ptrs: Vec<*const std::ffi::c_char> = copts.iter().map(|c| c.as_ptr()).collect();
    let mut prog: sys::nvrtcProgram = std::ptr::null_mut();
    // SAFETY: src and cname outlive the call; no headers are passed (null arrays with count 0).
    check(
        unsafe {
            sys::nvrtcCreateProgram(
                &mut prog,
                src.as_ptr(),
                cname.as_ptr(),
                0,
                std::ptr::null(),
                std::ptr::null(),
            )
        },
        "create program",
    )?;
    // SAFETY: prog is a live program; ptrs points at copts.len() NUL-terminated strings alive here.
    let compiled = unsafe { sys::nvrtcCompileProgram(prog, ptrs.len() as i32, ptrs.as_ptr()) };
    let result = if compiled != sys::nvrtcResult::NVRTC_SUCCESS {
        Err(Error::Device(format!(
            "NVRTC could not compile kernels/{name}.cu ({compiled:?}):\n{}",
            log(prog)
        )))
    } else {
        let mut size = 0usize;
        // SAFETY: prog compiled successfully; size receives the CUBIN's length.
        check(
            unsafe { sys::nvrtcGetCUBINSize(prog, &mut size) },
            "CUBIN size",
        )
        .and_then(|_| {
            let mut buf = vec![0u8; size];
            // SAFETY: buf holds exactly the `size` bytes NVRTC reported.
            check(
                unsafe { sys::nvrtcGetCUBIN(prog, buf.as_mut_ptr() as *mut std::ffi::c_char) },
                "get CUBIN",
            )?;
            if size == 0 {
                return Err(Error::Device(format!(
                    "NVRTC produced no CUBIN for {name} (is the arch a real sm_*?)"
                )));
            }
            Ok(buf)
        })
    };
    // SAFETY: prog was created above and is destroyed once.
    unsafe { sys::nvrtcDestroyProgram(&mut prog) };
    result
}

fn log(prog: sys::nvrtcProgram) -> String {
    let mut size = 0usize;
    // SAFETY: prog is a live program.
    if unsafe { sys::nvrtcGetProgramLogSize(prog, &mut size) } != sys::nvrtcResult::NVRTC_SUCCESS
        || size == 0
    {
        return String::new();
    }
    let mut buf = vec![0u8; size];
    // SAFETY: buf holds the `size` bytes NVRTC reported, NUL included.
    unsafe { sys::nvrtcGetProgramLog(prog, buf.as_mut_ptr() as *mut std::ffi::c_char) };
    CStr::from_bytes_until_nul(&buf)
        .map(|c| c.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cuda::Kernel;

    #[test]
    fn cache_key_changes_with_source_and_arch() {
        assert_ne!(fnv1a(&[b"a", b"sm_90a"]), fnv1a(&[b"b", b"sm_90a"]));
        assert_ne!(fnv1a(&[b"a", b"sm_90a"]), fnv1a(&[b"a", b"sm_80"]));
        assert_ne!(fnv1a(&[b"ab", b"c"]), fnv1a(&[b"a", b"bc"]));
    }

    /// Every kernel compiles for sm_90a wherever NVRTC and the CUDA headers exist (no GPU needed).
    #[test]
    fn every_kernel_compiles_for_hopper() {
        if !nvrtc_present() || !cuda_include_dir().join("cuda_bf16.h").exists() {
            eprintln!("skipped: NVRTC or the CUDA headers are not installed");
            return;
        }
        for k in Kernel::ALL {
            let bin =
                compile(k.name(), k.source(), &options("sm_90a")).unwrap_or_else(|e| panic!("{e}"));
            assert!(
                bin.len() > 100,
                "{} compiled to {} bytes",
                k.name(),
                bin.len()
            );
        }
    }
}
