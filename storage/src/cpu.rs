//! CPU feature detection, done once per process: the SIMD kernels (k-means assignment, PQ
//! fast-scan) check these before calling code compiled for the features.

/// Whether the CPU has AVX2 (detected once).
pub(crate) static HAS_AVX2: std::sync::LazyLock<bool> = std::sync::LazyLock::new(|| {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
});

/// Whether the CPU has AVX2 and FMA (detected once).
pub(crate) static HAS_AVX2_FMA: std::sync::LazyLock<bool> = std::sync::LazyLock::new(|| {
    #[cfg(target_arch = "x86_64")]
    {
        *HAS_AVX2 && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
});
